"""``fuse_kernels`` on this CPU: fused vs unfused, side by side, per example, eager and
onnxruntime, prefill at one length (default L=512, batch 1, 2 threads).

For each example, in ONE run: the unfused graph and the ``fuse_kernels`` graph get the same
weights (seed; the checkpoint names are the same); each is lowered on eager and on onnxruntime
(forward graph only), checked against unfused eager (``max abs`` of the logits), then timed in
interleaved rounds (fused and unfused alternate, first one then the other, so machine drift and
other processes' load hit both alike). Reported: medians, the fused/unfused ratio (< 1 means
fused is faster) and the 1-min load average before and after.

    python benchmarks/bench_fusion.py                              # every example
    python benchmarks/bench_fusion.py --specs hybrid,mamba --rounds 4 --out /tmp/f.md

Prints a markdown section (and appends it to --out when given).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from archgen import api
from archgen.backends.base import LowerOptions, get_backend
from benchmarks.common import machine

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("eager", "onnx")


def lower(graph: object, backend: str, seq_len: int, threads: int) -> Callable[[], object]:
    options = LowerOptions(
        min_seq=1, opt_seq=seq_len, max_seq=seq_len, threads=threads, decode_graph=False
    )
    artifact = get_backend(backend).lower(graph, options)  # type: ignore[arg-type]
    return artifact.run  # type: ignore[return-value]


def bench(spec: Path, args: argparse.Namespace) -> list[str]:
    plain = api.compile_spec(spec)
    fused = api.compile_spec(spec, passes="fuse_kernels")
    seq_len = min(args.length, plain.model.max_seq_len)
    tokens = torch.randint(0, plain.model.vocab_size, (1, seq_len), generator=torch.Generator())
    rows = []
    reference = None
    for backend in BACKENDS:
        runs = {name: lower(g, backend, seq_len, args.threads) for name, g in
                (("unfused", plain), ("fused", fused))}  # fmt: skip
        outs = {name: run(tokens).to(torch.float64) for name, run in runs.items()}
        reference = outs["unfused"] if reference is None else reference
        diff = max((o - reference).abs().max().item() for o in outs.values())
        times: dict[str, list[float]] = {name: [] for name in runs}
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                for _ in range(args.warmup):
                    runs[name](tokens)
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    runs[name](tokens)
                    times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t) for name, t in times.items()}
        rows.append(
            f"| {spec.stem} | {backend} | {med['unfused'] * 1e3:.1f} | {med['fused'] * 1e3:.1f} "
            f"| {med['fused'] / med['unfused']:.3f} | {diff:.1e} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default="", help="comma-separated example names (default all)")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wanted = [s for s in args.specs.split(",") if s]
    specs = sorted((ROOT / "examples").glob("*.yaml"))
    specs = [s for s in specs if not wanted or s.stem in wanted]
    load_before = open("/proc/loadavg").read().strip()  # noqa: SIM115
    header = [
        f"Machine: {machine()}.",
        f"`/proc/loadavg` before: `{load_before}`.",
        "",
        "| example | backend | unfused ms | fused ms | fused / unfused | max abs vs unfused eager "
        "|",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows = [row for spec in specs for row in bench(spec, args)]
    load_after = open("/proc/loadavg").read().strip()  # noqa: SIM115
    footer = ["", f"`/proc/loadavg` after: `{load_after}`."]
    print("\n".join(footer))
    if args.out is not None:
        with args.out.open("a") as f:
            f.write("\n".join([*header, *rows, *footer]) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
