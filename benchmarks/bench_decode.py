"""Decode throughput: tokens/s of step-by-step generation for each example LM, at a context of
1024 and 4096 tokens: the state is built by stepping through ``context - new_tokens`` tokens,
then the last ``new_tokens`` steps up to the context are timed.

Each rate is the median of three rounds of the same ``new_tokens`` steps from the same state.
With ``--onnx`` each example whose decode step exports (``decode_step.onnx``) is then decoded in
onnxruntime too, after eager and not interleaved with it: the two runtimes' thread pools
spin-wait between calls and, alive together, slow each other down on 2 cores.

    python -m benchmarks.bench_decode [--contexts 1024 4096] [--new-tokens 64] [--onnx]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from archgen import api
from archgen.backends.torch_model import build_model
from benchmarks.common import machine

ROOT = Path(__file__).resolve().parent.parent


def _median_seconds(run_block: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    """Median wall time of ``run_block`` (one block of decode steps from a fresh state copy), and
    what its last call returned (the state after the block)."""
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = run_block()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


@torch.no_grad()
def decode_rates(
    spec: Path, context: int, new_tokens: int, threads: int, onnx: bool, rounds: int = 3
) -> tuple[float, float | None, int]:
    """(eager tokens/s, onnxruntime tokens/s or None, eager state bytes) at ``context``: the
    median over ``rounds`` of the same ``new_tokens`` steps from the same state."""
    graph = api.compile_spec(spec)
    model = build_model(graph).eval()
    tokens = torch.randint(0, graph.model.vocab_size, (1, context))
    timed = range(context - new_tokens, context)
    state = model.init_state(1)
    for t in range(context - new_tokens):
        _, state = model.step(tokens[:, t], state, torch.tensor(t))

    def eager_block() -> dict:
        s = {name: tuple(x.clone() for x in xs) for name, xs in state.items()}
        for t in timed:
            _, s = model.step(tokens[:, t], s, torch.tensor(t))
        return s

    seconds, final = _median_seconds(eager_block, rounds)
    eager_rate = new_tokens / seconds
    # the state at `context` tokens (after the last timed step)
    state_bytes = sum(x.numel() * x.element_size() for xs in final.values() for x in xs)
    if not onnx:
        return eager_rate, None, state_bytes
    # onnxruntime only now, after eager: its thread pool spin-waits between runs, and alive
    # beside torch's it halved eager decode speed on 2 cores (a deployment runs one of them).
    from archgen.backends.base import LowerOptions, get_backend

    artifact = get_backend("onnx").lower(graph, LowerOptions(threads=threads))
    if artifact.decode_session is None:  # type: ignore[attr-defined]
        return eager_rate, None, state_bytes
    ort_state = artifact.init_state(1)  # type: ignore[attr-defined]
    for t in range(context - new_tokens):
        _, ort_state = artifact.step(tokens[:, t], t, ort_state)  # type: ignore[attr-defined]

    def ort_block() -> list:
        s = [x.copy() for x in ort_state]
        for t in timed:
            _, s = artifact.step(tokens[:, t], t, s)  # type: ignore[attr-defined]
        return s

    return eager_rate, new_tokens / _median_seconds(ort_block, rounds)[0], state_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--onnx", action="store_true", help="also decode in onnxruntime (decode_step.onnx)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"decode: batch 1, float32; the last {args.new_tokens} steps up to the context\n")
    per_context = ["eager tokens/s", "state"] + (
        ["ORT tokens/s", "ORT / eager"] if args.onnx else []
    )
    header = " | ".join(f"{col} @ {c}" for c in args.contexts for col in per_context)
    print(f"| example | {header} |")
    print("|---|" + "---:|" * (len(per_context) * len(args.contexts)))
    for spec in sorted((ROOT / "examples").glob("*.yaml")):
        max_len = api.load_spec(spec).model.max_seq_len
        cells = []
        for context in args.contexts:
            if context > max_len:
                cells += ["n/a (max_seq_len)"] + ["-"] * (len(per_context) - 1)
                continue
            rate, ort_rate, state = decode_rates(
                spec, context, args.new_tokens, args.threads, args.onnx
            )
            cells += [f"{rate:.1f}", f"{state / 2**20:.2f} MiB"]
            if args.onnx:
                no_graph = ["no decode graph", "-"]
                cells += (
                    no_graph if ort_rate is None else [f"{ort_rate:.1f}", f"{ort_rate / rate:.2f}x"]
                )
        print(f"| {spec.stem} | " + " | ".join(cells) + " |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
