"""Backends on this CPU (or GPU): eager vs torch.compile vs onnxruntime, per example LM.

For each example spec and each L in --lengths (capped at the model's max_seq_len), in ONE run:
lower on each backend (export / compile times recorded), then measure interleaved rounds
(``--rounds`` x ``--repeats`` timed calls per backend after warm-up, rounds alternating
between backends so machine drift hits all of them alike), and report medians, p90s and ratios
against eager. ``max abs`` is the largest |logit difference| against eager float32 on the timed
input. A backend that cannot lower a spec gets its error in the table instead of a number.

    python benchmarks/backends.py                       # all examples, L = 512, 2048
    python benchmarks/backends.py --specs transformer --lengths 512 --out /tmp/b.md
    python benchmarks/backends.py --device cuda --batch 8   # Inductor -> Triton; ORT's CUDA EP
    python benchmarks/backends.py --backends eager onnx onnx-portable --specs mamba --lengths 512

``onnx-portable`` is the onnx backend with ``--portable``'s options (standard ONNX ops only:
Mamba's scan as an ONNX ``Scan``, attention unfused), beside ``onnx``'s fused nodes.

Writes a markdown table (with the machine: CPU or GPU model, threads, torch/onnxruntime
versions, date) to --out (default benchmarks/results/backends_<device>.md).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from archgen import api
from archgen.backends.base import (
    Artifact,
    LowerOptions,
    cpu_name,
    device_name,
    get_backend,
    library_versions,
)
from archgen.errors import ArchgenError

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("eager", "compile", "onnx")  # the default columns
CHOICES = (*BACKENDS, "onnx-portable")
LABELS = {"compile": "compile", "onnx": "ORT", "onnx-portable": "ORT portable"}


@dataclass
class Cell:
    backend: str
    lower_s: float = float("nan")
    first_call_s: float = float("nan")
    times: list[float] = field(default_factory=list)
    max_abs: float = float("nan")
    error: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def p90(self) -> float:
        if not self.times:
            return float("nan")
        ordered = sorted(self.times)
        return ordered[round(0.9 * (len(ordered) - 1))]


def lower(
    backend: str, graph: object, seq_len: int, args: argparse.Namespace
) -> tuple[Artifact, float]:
    options = LowerOptions(
        dtype=args.dtype,
        batch=args.batch,
        device=args.device,
        provider=args.device,
        min_seq=1,
        opt_seq=seq_len,
        max_seq=seq_len,
        threads=args.threads,
        decode_graph=False,
        compile_freezing=args.freezing,
    )
    if backend == "onnx-portable":  # what `archgen export --portable` lowers
        options = replace(options, fused_attention=False, fused_scan=False)
    start = time.perf_counter()
    artifact = get_backend(backend.split("-")[0]).lower(graph, options)  # type: ignore[arg-type]
    return artifact, time.perf_counter() - start


def bench_one(spec: Path, seq_len: int, args: argparse.Namespace) -> list[Cell]:
    graph = api.compile_spec(spec)
    shape = (args.batch, seq_len)
    tokens = torch.randint(0, graph.model.vocab_size, shape, generator=torch.Generator())
    cells, artifacts = [], {}
    for name in args.backends:
        cell = Cell(name)
        cells.append(cell)
        try:
            artifact, cell.lower_s = lower(name, graph, seq_len, args)
            start = time.perf_counter()
            artifact.run(tokens)  # compile happens here for torch.compile
            cell.first_call_s = time.perf_counter() - start
            artifacts[name] = artifact
        except ArchgenError as exc:
            cell.error = str(exc).splitlines()[0][:160]
    reference = artifacts["eager"].run(tokens).to("cpu", torch.float64)
    for name, artifact in artifacts.items():
        cell = next(c for c in cells if c.backend == name)
        out = artifact.run(tokens).to("cpu", torch.float64)
        cell.max_abs = (out - reference).abs().max().item()
    for _ in range(args.rounds):  # interleaved: drift affects every backend alike
        for name, artifact in artifacts.items():
            m = artifact.measure(tokens, warmup=args.warmup, repeats=args.repeats)
            next(c for c in cells if c.backend == name).times.extend(m.times_s)
    return cells


def ms(x: float) -> str:
    return "–" if x != x else f"{x * 1e3:.1f}"


def _header(backends: list[str]) -> str:
    """The table header: eager, then per other backend its median/p90, speed-up and
    first-call (compile) or export (onnx) seconds."""
    cols = ["model", "L", "eager med / p90 ms"]
    for name in backends[1:]:
        label = LABELS[name]
        cols += [f"{label} med / p90 ms", f"{label} speed-up"]
        cols.append(
            "compile first call s"
            if name == "compile"
            else label.replace("ORT", "ONNX") + " export s"
        )
    cols.append(f"max abs ({'; '.join(LABELS[n] for n in backends[1:])})")
    return "| " + " | ".join(cols) + " |"


def render(rows: list[tuple[str, int, list[Cell]]], args: argparse.Namespace) -> str:
    others = args.backends[1:]
    versions = library_versions("onnx", "onnxruntime")
    where = device_name(args.device)
    lines = [
        f"# Backends on {args.device.upper()}: eager vs torch.compile vs onnxruntime",
        "",
        f"- machine: {where} (host {cpu_name()}, {os.cpu_count()} logical CPUs); "
        f"benchmark threads: {args.threads} (torch intra-op and onnxruntime intra-op)",
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items())}",
        f"- date: {datetime.date.today().isoformat()}",
        f"- load: {args.load}; ratios were measured in one run with interleaved rounds, "
        "absolute times are noisy.",
        f"- method: B={args.batch}, {args.dtype}, {args.rounds} interleaved rounds x "
        f"{args.repeats} timed calls "
        f"per backend after {args.warmup} warm-up calls; median and p90 of all "
        f"{args.rounds * args.repeats}; torch.compile is Inductor with dynamic=False, "
        f"fullgraph=True; onnxruntime is the {args.device.upper()} EP, graph optimisation level "
        f"'all', sequential executor; max abs = max |logits - eager {args.dtype} logits|"
        + ("; CUDA timings synchronise after every call." if args.device == "cuda" else "."),
        f"- command: `python benchmarks/backends.py {' '.join(args.argv)}`",
        "",
        _header(args.backends),
        "|---|---|---|" + "---|---|---|" * len(others) + "---|",
    ]
    for name, seq_len, cells in rows:
        eager = cells[0]
        cols = [name, str(seq_len), f"{ms(eager.median)} / {ms(eager.p90)}"]
        for cell in cells[1:]:
            if cell.error:
                cols += [f"n/a: {cell.error}", "–", "–"]
                continue
            cols.append(f"{ms(cell.median)} / {ms(cell.p90)}")
            cols.append(f"{eager.median / cell.median:.2f}x")
            first = cell.backend == "compile"
            cols.append(f"{cell.first_call_s:.1f}" if first else f"{cell.lower_s:.1f}")
        cols.append("; ".join(f"{cell.max_abs:.1e}" for cell in cells[1:]))
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", nargs="*", default=None, help="example names (default: all)")
    parser.add_argument("--lengths", nargs="*", type=int, default=[512, 2048])
    parser.add_argument(
        "--backends",
        nargs="*",
        choices=CHOICES,
        default=list(BACKENDS),
        help="columns after eager (eager always runs first: the reference)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--freezing", action="store_true", help="torch.compile with Inductor's freezing"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or ROOT / f"benchmarks/results/backends_{args.device}.md"
    args.argv = sys.argv[1:]
    args.backends = ["eager", *(b for b in args.backends if b != "eager")]
    args.load = f"1-min load average at start {os.getloadavg()[0]:.2f}"
    torch.set_num_threads(args.threads)
    specs = sorted((ROOT / "examples").glob("*.yaml"))
    if args.specs:
        specs = [s for s in specs if s.stem in args.specs]
    rows = []
    for spec in specs:
        max_len = api.load_spec(spec).model.max_seq_len
        for seq_len in sorted({min(n, max_len) for n in args.lengths}):
            cells = bench_one(spec, seq_len, args)
            rows.append((spec.stem, seq_len, cells))
            print(render(rows[-1:], args).splitlines()[-1], flush=True)
    args.load += f", at end {os.getloadavg()[0]:.2f}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
