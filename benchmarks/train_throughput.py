"""Training throughput of the example LMs: tokens/s of a full optimizer step (forward, backward,
clipping, AdamW) in float32 and under bfloat16 autocast, as ``archgen train`` runs it.

    python -m benchmarks.train_throughput [--batch 8] [--seq-len 128] [--repeats 5] [--threads N]

The two precisions are timed round-robin (one fp32 step, one bf16 step, ...) so a change in
the load of a shared machine hits both alike; the table shows medians and the bf16/fp32 ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from archgen import api
from archgen.backends.torch_model import build_model
from archgen.train.config import TrainConfig
from archgen.train.loop import Batch, autocast, make_optimizer, masked_cross_entropy
from benchmarks.common import machine

ROOT = Path(__file__).resolve().parent.parent


def step_fn(spec: Path, batch: int, seq_len: int, bf16: bool):
    graph = api.compile_spec(spec)
    model = build_model(graph, seed=0)
    config = TrainConfig(batch_size=batch, seq_len=seq_len, bf16=bf16)
    optimizer = make_optimizer(model, {}, config)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, graph.model.vocab_size, (batch, seq_len + 1), generator=gen)
    data = Batch(tokens[:, :-1], tokens[:, 1:], torch.ones(batch, seq_len, dtype=torch.bool))
    device = torch.device("cpu")
    params = sum(p.numel() for p in model.parameters())

    def step() -> None:
        with autocast(config, device):
            loss = masked_cross_entropy(model(data.inputs), data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("specs", nargs="*", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = args.specs or sorted((ROOT / "examples").glob("*.yaml"))
    load_before = os.getloadavg()
    print(f"machine: {machine()}")
    print(f"batch {args.batch} x seq_len {args.seq_len}; {args.repeats} timed steps per cell "
          "after 2 warm-up steps; fp32 and bf16 interleaved\n")  # fmt: skip
    print("| model | params | fp32 tok/s | bf16 tok/s | bf16/fp32 |")
    print("|---|---:|---:|---:|---:|")
    tokens = args.batch * args.seq_len
    for spec in specs:
        fp32, params = step_fn(spec, args.batch, args.seq_len, bf16=False)
        bf16, _ = step_fn(spec, args.batch, args.seq_len, bf16=True)
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for i in range(2 + args.repeats):
            for name, fn in (("fp32", fp32), ("bf16", bf16)):
                start = time.perf_counter()
                fn()
                if i >= 2:
                    times[name].append(time.perf_counter() - start)
        a, b = (tokens / statistics.median(times[k]) for k in ("fp32", "bf16"))
        print(f"| {spec.stem} | {params / 1e6:.2f}M | {a:,.0f} | {b:,.0f} | {b / a:.2f}x |",
              flush=True)  # fmt: skip
    load_after = os.getloadavg()
    print(f"\nload average (1/5/15 min) before {load_before}, after {load_after}")


if __name__ == "__main__":
    main()
