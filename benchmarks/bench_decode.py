"""Decode throughput: tokens/s of step-by-step generation for each example LM, at a context of
1024 and 4096 tokens: the state is built by stepping through ``context - new_tokens`` tokens,
then the last ``new_tokens`` steps up to the context are timed.

    python -m benchmarks.bench_decode [--contexts 1024 4096] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from archgen import api
from archgen.backends.torch_model import build_model
from benchmarks.common import machine

ROOT = Path(__file__).resolve().parent.parent


@torch.no_grad()
def decode_rate(spec: Path, context: int, new_tokens: int) -> tuple[float, int]:
    graph = api.compile_spec(spec)
    model = build_model(graph).eval()
    tokens = torch.randint(0, graph.model.vocab_size, (1, context))
    state = model.init_state(1)
    for t in range(context - new_tokens):
        _, state = model.step(tokens[:, t], state, torch.tensor(t))
    start = time.perf_counter()
    for t in range(context - new_tokens, context):
        _, state = model.step(tokens[:, t], state, torch.tensor(t))
    seconds = time.perf_counter() - start
    state_bytes = sum(x.numel() * x.element_size() for s in state.values() for x in s)
    return new_tokens / seconds, state_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"decode: batch 1, float32, eager; the last {args.new_tokens} steps up to the context\n")
    header = (
        "| example | " + " | ".join(f"tokens/s @ {c} | state @ {c}" for c in args.contexts) + " |"
    )
    print(header)
    print("|---|" + "---:|---:|" * len(args.contexts))
    for spec in sorted((ROOT / "examples").glob("*.yaml")):
        max_len = api.load_spec(spec).model.max_seq_len
        cells = []
        for context in args.contexts:
            if context > max_len:
                cells += ["n/a (max_seq_len)", "-"]
                continue
            rate, state = decode_rate(spec, context, args.new_tokens)
            cells += [f"{rate:.1f}", f"{state / 2**20:.2f} MiB"]
        print(f"| {spec.stem} | " + " | ".join(cells) + " |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
