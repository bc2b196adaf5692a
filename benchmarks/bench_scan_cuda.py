"""Mamba-1 on the GPU: the Triton selective scan vs the chunked torch scan, forward and training
(forward + backward), side by side in one process.

One Mamba layer (hidden 768, state 16, expand 2, float32, same weights for both scans), timed
round-robin (one call per scan in turn) so that clock or load changes hit both alike; medians
of ``--repeats`` rounds after warm-up, each call synchronised. The table prints the chunked /
Triton ratio (above 1: Triton faster).

    python -m benchmarks.bench_scan_cuda [--lengths 1024,4096] [--batch 8] [--repeats 9]

Needs a CUDA GPU and triton; without them it says so and exits with code 2.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable

import torch

from archgen.mixers.kernels import triton_available
from archgen.mixers.mamba import Mamba

HIDDEN, STATE, EXPAND = 768, 16, 2
SCANS = ("chunked", "triton")


def synchronised(fn: Callable[[], object]) -> Callable[[], float]:
    def timed() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start

    return timed


def workloads(batch: int, seq: int) -> dict[tuple[str, str], Callable[[], float]]:
    torch.manual_seed(0)
    base = Mamba(HIDDEN, d_state=STATE, expand=EXPAND, scan="chunked").cuda()
    u = torch.randn(batch, seq, HIDDEN, device="cuda")
    grad_y = torch.randn_like(u)
    calls = {}
    for scan in SCANS:
        module = copy.deepcopy(base)
        module.scan = scan

        def forward(m: Mamba = module) -> None:
            with torch.no_grad():
                m(u)

        def train(m: Mamba = module) -> None:
            x = u.detach().requires_grad_(True)
            torch.autograd.backward(m(x), grad_y)

        calls[(scan, "forward")] = synchronised(forward)
        calls[(scan, "forward+backward")] = synchronised(train)
    return calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="1024,4096")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    if not torch.cuda.is_available() or not triton_available("cuda"):
        print("bench_scan_cuda needs a CUDA GPU and triton (pip install triton)", file=sys.stderr)
        return 2
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch}")
    print("| L | pass | chunked ms | triton ms | chunked / triton |")
    print("|---|---|---|---|---|")
    for seq in (int(v) for v in args.lengths.split(",")):
        calls = workloads(args.batch, seq)
        for timed in calls.values():  # warm-up: Triton compiles on first call
            timed()
            timed()
        times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
        for _ in range(args.repeats):
            for key, timed in calls.items():
                times[key].append(timed())
        for phase in ("forward", "forward+backward"):
            chunked = statistics.median(times[("chunked", phase)]) * 1e3
            triton = statistics.median(times[("triton", phase)]) * 1e3
            print(f"| {seq} | {phase} | {chunked:.2f} | {triton:.2f} | {chunked / triton:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
