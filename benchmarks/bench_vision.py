"""Official-size vision models on this CPU: parameters, MACs, and eager vs torch.compile vs
onnxruntime latency at batch 1 and 8 (issue 13, "Measure and commit").

For each spec in --models (default: the five official-size specs in examples/vision/), in ONE
run: parameters and multiply-adds per image from the IR's cost (what ``archgen check`` prints:
its GFLOPs / 2, the papers' MAC convention), then each backend is lowered once (eager float32 in
eval mode; ``torch.compile`` with Inductor's defaults, fullgraph, dynamic=False; onnxruntime's
CPU EP on the project's own export, one graph with a dynamic batch) and, per batch size, timed
in interleaved rounds: within a round every backend gets one untimed call and then --repeats
timed calls, the backends' order rotating from round to round, so machine drift hits all alike.
Reported: median and [min-max] of all timed calls, speed-up against eager (> 1: faster than
eager), the compile time of each batch shape (first call), the ONNX export time, and
``max abs`` = max |logits - eager logits| on the timed input.

A compile or an export that fails, or runs past its cap (--compile-cap-s, --export-cap-s,
enforced with SIGALRM), is reported in its cell with the reason instead of a number; a compile
that failed at one batch is not retried at the next. Cells not started before --budget-s of
the run is spent are reported as not run.

    python -m benchmarks.bench_vision                                  # five models, B = 1, 8
    python -m benchmarks.bench_vision --models iformer-tiny --batches 1 --rounds 1
    python -m benchmarks.bench_vision --out benchmarks/results/vision_latency_cpu.md

Prints a markdown table (rows as they finish); writes it to --out only when given (rewritten
after every model, so a run stopped early keeps what it measured).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import torch

from archgen import api
from archgen.backends.base import Artifact, example_input, library_versions
from benchmarks.backends import LABELS, Cell, lower, ms
from benchmarks.common import machine

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL = ("efficientvim-m1", "raftmlp-s", "transnext-micro", "iformer-s", "vim2-t")
BACKENDS = ("eager", "compile", "onnx")


class CapExceeded(Exception):
    """A compile or an export ran past its cap."""


@contextlib.contextmanager
def time_cap(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`CapExceeded` in the main thread if the block runs past ``seconds``."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise CapExceeded(f"{what} ran past its {seconds:.0f} s cap")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def reason(exc: BaseException) -> str:
    """One line saying why a cell has no number (table-safe)."""
    text = (str(exc).strip().splitlines() or [""])[0].replace("|", "/")
    return f"{type(exc).__name__}: {text}"[:200]


@dataclass
class Row:
    model: str
    params: int
    macs: float
    batch: int
    cells: list[Cell]


def not_run(model: str, params: int, macs: float, batch: int, args: argparse.Namespace) -> Row:
    why = f"not run: the run's {args.budget_s:.0f} s budget (--budget-s) was spent"
    return Row(model, params, macs, batch, [Cell(name, error=why) for name in args.backends])


def cost(spec: Path) -> tuple[int, float]:
    """Parameters and multiply-adds per image, as ``archgen check`` reports them."""
    total = api.check(spec).total
    return total.params, total.flops / 2


def bench_model(spec: Path, args: argparse.Namespace, started: float) -> list[Row]:
    params, macs = cost(spec)
    if time.perf_counter() - started > args.budget_s:
        return [not_run(spec.stem, params, macs, batch, args) for batch in args.batches]
    graph = api.compile_spec(spec)
    seq_len = graph.model.max_seq_len  # an image model's profile: its largest grid's tokens
    artifacts: dict[str, Artifact] = {}
    errors: dict[str, str] = {}
    lower_s: dict[str, float] = {}
    for name in args.backends:
        cap = args.export_cap_s if name == "onnx" else None
        start = time.perf_counter()
        try:
            with time_cap(cap, "export") if cap else contextlib.nullcontext():
                artifacts[name], lower_s[name] = lower(name, graph, seq_len, args)
        except Exception as exc:  # any failure is a table entry, not the end of the run
            errors[name] = reason(exc)
            if cap and time.perf_counter() - start >= cap:  # the exporter may rewrap the cause
                errors[name] = f"export ran past its {cap:.0f} s cap"
        print(f"  {spec.stem}: lowered {name} ({errors.get(name, 'ok')})", flush=True)
    rows = []
    for batch in args.batches:
        cells = [Cell(name, lower_s=lower_s.get(name, float("nan"))) for name in args.backends]
        if time.perf_counter() - started > args.budget_s:
            rows.append(not_run(spec.stem, params, macs, batch, args))
            continue
        rows.append(Row(spec.stem, params, macs, batch, cells))
        x = example_input(graph, batch, seq_len, torch.Generator().manual_seed(batch))
        live: dict[str, Artifact] = {}
        reference: torch.Tensor | None = None  # eager's logits
        for cell in cells:
            if cell.backend in errors:
                cell.error = errors[cell.backend]
                continue
            artifact = artifacts[cell.backend]
            cap = args.compile_cap_s if cell.backend == "compile" else None
            start = time.perf_counter()
            try:
                with time_cap(cap, f"compile at B={batch}") if cap else contextlib.nullcontext():
                    out = artifact.run(x)  # compile happens here for torch.compile
            except Exception as exc:
                cell.error = reason(exc)
                if cap and time.perf_counter() - start >= cap:  # dynamo may rewrap the cause
                    cell.error = f"compile ran past its {cap:.0f} s cap"
                errors[cell.backend] = f"{cell.error} (at B={batch}; not retried)"
                continue
            cell.first_call_s = time.perf_counter() - start
            if cell.backend == "eager":
                reference = out.to(torch.float64)
            if reference is not None:
                cell.max_abs = (out.to(torch.float64) - reference).abs().max().item()
            live[cell.backend] = artifact
        for r in range(args.rounds if live else 0):  # interleaved; the order rotates
            order = list(live)[r % len(live) :] + list(live)[: r % len(live)]
            for name in order:
                # compile's measure makes one untimed call itself: one warm-up call for each
                warmup = 0 if name == "compile" else 1
                m = live[name].measure(x, warmup=warmup, repeats=args.repeats)
                next(c for c in cells if c.backend == name).times.extend(m.times_s)
        print(render_row(rows[-1]), flush=True)
    return rows


def spread(cell: Cell) -> str:
    return f"{ms(cell.median)} [{ms(min(cell.times))}-{ms(max(cell.times))}]"


def render_row(row: Row) -> str:
    eager = row.cells[0]
    cols = [row.model, f"{row.params / 1e6:.2f} M", f"{row.macs / 1e9:.3f} G", str(row.batch)]
    cols.append(spread(eager) if eager.times else f"n/a: {eager.error}")
    for cell in row.cells[1:]:
        if not cell.times:
            cols += [f"n/a: {cell.error}", "–"]
        else:
            cols += [spread(cell), f"{eager.median / cell.median:.2f}x" if eager.times else "–"]
        first = cell.first_call_s if cell.backend == "compile" else cell.lower_s
        cols.append("–" if first != first else f"{first:.0f}")
    cols.append("; ".join(f"{c.max_abs:.1e}" if c.times else "–" for c in row.cells[1:]))
    return "| " + " | ".join(cols) + " |"


def header(backends: list[str]) -> list[str]:
    cols = ["model", "params", "MACs / image", "B", "eager ms: median [min-max]"]
    for name in backends[1:]:
        label = LABELS[name]
        first = "compile s (first call)" if name == "compile" else "ONNX export s"
        cols += [f"{label} ms: median [min-max]", f"{label} speed-up", first]
    cols.append(f"max abs ({'; '.join(LABELS[n] for n in backends[1:])})")
    return ["| " + " | ".join(cols) + " |", "|---|---:|---:|---:|" + "---|" * (len(cols) - 4)]


def render(rows: list[Row], args: argparse.Namespace, loads: list[str]) -> str:
    """The whole markdown section: machine, versions, load, method, command, table."""
    versions = library_versions("onnx", "onnxruntime")
    lines = [
        "# Official-size vision models on the CPU: eager vs torch.compile vs onnxruntime",
        "",
        f"- machine: {args.machine}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items())}",
        f"- `/proc/loadavg`: {'; '.join(loads)}",
        f"- method: float32 images at the spec's size, {args.threads} threads (torch intra-op, "
        f"onnxruntime intra-op); {args.rounds} interleaved rounds x {args.repeats} timed calls "
        "per backend after one untimed call per round; caps: compile "
        f"{args.compile_cap_s:.0f} s per batch shape, ONNX export {args.export_cap_s:.0f} s",
        f"- command: `python -m benchmarks.bench_vision {' '.join(args.argv)}`",
        "",
        *header(args.backends),
        *(render_row(row) for row in rows),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--models", nargs="*", default=list(OFFICIAL), help="examples/vision/ spec names"
    )
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--backends", nargs="*", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile-cap-s", type=float, default=240.0)
    parser.add_argument("--export-cap-s", type=float, default=300.0)
    parser.add_argument(
        "--budget-s", type=float, default=1500.0, help="start no new cell after this"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the table here")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    args.backends = ["eager", *(b for b in args.backends if b != "eager")]
    # what benchmarks.backends.lower reads: float32 on the CPU, no freezing (Inductor defaults)
    args.dtype, args.device, args.batch, args.freezing = "float32", "cpu", 1, False
    torch.set_num_threads(args.threads)
    args.machine = machine()  # its load average is the one at the start
    loads = [f"before `{open('/proc/loadavg').read().strip()}`"]  # noqa: SIM115
    started = time.perf_counter()
    print("\n".join(header(args.backends)), flush=True)
    rows: list[Row] = []
    for name in args.models:
        rows += bench_model(ROOT / "examples" / "vision" / f"{name}.yaml", args, started)
        if args.out is not None:  # after every model: a run stopped early keeps its rows
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(render(rows, args, loads))
    loads.append(f"after `{open('/proc/loadavg').read().strip()}`")  # noqa: SIM115
    loads.append(f"wall {time.perf_counter() - started:.0f} s")
    text = render(rows, args, loads)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
