"""A SCOUT-SWA layer (SWA -> MLP -> checkpoint attention -> MLP) against two full-attention
blocks (attention -> MLP, twice) with the same parameter count, forward at long L.

    python -m benchmarks.bench_scout_layer [--seq-lens 2048 8192] [--window 256] [--segment 10]
"""

from __future__ import annotations

import argparse

import torch

from archgen import api
from archgen.backends.torch_model import build_model
from archgen.spec.loader import parse_spec
from benchmarks.common import machine, median_seconds

TEMPLATE = """
model:
  name: {name}
  vocab_size: 256
  d_model: {d}
  max_seq_len: {max_len}
  layers:
    - token_mixer: {first}
      channel_mixer: {{kind: swiglu}}
    - token_mixer: {second}
      channel_mixer: {{kind: swiglu}}
"""


def model(name: str, first: str, second: str, d: int, max_len: int) -> torch.nn.Module:
    spec = parse_spec(TEMPLATE.format(name=name, first=first, second=second, d=d, max_len=max_len))
    return build_model(api.compile_spec(spec)).eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--segment", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    h, d, max_len = args.heads, args.d_model, max(args.seq_lens)
    attention = f"{{kind: attention, heads: {h}}}"
    swa = f"{{kind: swa, heads: {h}, window: {args.window}}}"
    ckpt = f"{{kind: checkpoint_attention, heads: {h}, segment_size: {args.segment}}}"
    full = model("full", attention, attention, d, max_len)
    scout = model("scout", swa, ckpt, d, max_len)
    n_full = sum(p.numel() for p in full.parameters())
    n_scout = sum(p.numel() for p in scout.parameters())
    print(f"machine: {machine()}")
    print(
        f"d_model {d}, {h} heads, SWA window {args.window}, segment {args.segment}, "
        f"params: full {n_full:,} vs SCOUT-SWA {n_scout:,}\n"
    )
    print("| L | 2x full attention block (s) | SCOUT-SWA layer (s) | speed-up |")
    print("|---:|---:|---:|---:|")
    for n in args.seq_lens:
        tokens = torch.randint(0, 256, (1, n))
        with torch.no_grad():
            t_full = median_seconds(lambda t=tokens: full(t), warmup=1, repeats=3)
            t_scout = median_seconds(lambda t=tokens: scout(t), warmup=1, repeats=3)
        print(f"| {n} | {t_full:.3f} | {t_scout:.3f} | {t_full / t_scout:.2f}x |")


if __name__ == "__main__":
    main()
