"""Sliding-window and SCOUT checkpoint attention vs full causal SDPA on CPU.

Settings (research/perf-anchors.md §5, §6): ``torch.set_num_threads(2)``, float32, batch 1,
8 heads of dim 64 (``d_model = 512`` for the whole mixers), inference mode. Every case of one
table runs round-robin in the same process (one call of each per round), so the ratios compare
calls made under the same machine load; times are medians over the rounds after warm-up.
Peak memory is the growth of the process's peak RSS during one call (``malloc_trim``, reset
``VmHWM`` through ``/proc/self/clear_refs``, call, ``VmHWM - VmRSS(before)``), as in the anchors.

    python benchmarks/bench_attention_family.py                # prints markdown tables
    python benchmarks/bench_attention_family.py --flex --out results.md  # + compiled flex peer
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import math
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from archgen.mixers.attention import Attention
from archgen.mixers.checkpoint_attention import CheckpointAttention, checkpoint_attention
from archgen.mixers.swa import (
    SlidingWindowAttention,
    default_block_size,
    sliding_window_attention,
)

HEADS, HEAD_DIM = 8, 64
D_MODEL = HEADS * HEAD_DIM
SEGMENT = 10


# -- measurement ---------------------------------------------------------------------------------
def round_robin(cases: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict:
    """Median seconds per case; one call of each case per round so load drift hits all alike."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


_LIBC = ctypes.CDLL("libc.so.6")


def peak_mib(fn: Callable[[], object]) -> float:
    """Growth of peak RSS during one call (MiB)."""
    gc.collect()
    _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def qkv(length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(torch.randn(1, HEADS, length, HEAD_DIM) for _ in range(3))


def full_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def slope(lengths: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(time) vs log(L)."""
    xs, ys = [math.log(n) for n in lengths], [math.log(t) for t in seconds]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def ms(t: float) -> str:
    return f"{t * 1e3:.1f}"


# -- (a) sliding-window attention ----------------------------------------------------------------
def bench_swa(lengths: list[int], windows: list[int], rounds: int, flex: bool) -> list[str]:
    out = ["## Sliding-window attention vs full causal SDPA", ""]
    out += [f"Load average at start: {load()}", ""]
    out += [
        "Core = the attention given q, k, v `[1, 8, L, 64]` (`sliding_window_attention`, "
        "`block_size = default_block_size(w)`). Cells: median ms (peak MiB); "
        "speed-up = full / SWA.",
        "",
        "| L | full causal SDPA | "
        + " | ".join(f"SWA w={w} | speed-up w={w}" for w in windows)
        + " |",
        "|---" * (2 + 2 * len(windows)) + "|",
    ]
    for n in lengths:
        q, k, v = qkv(n)
        cases: dict[str, Callable[[], object]] = {"full": partial(full_causal, q, k, v)}
        for w in windows:
            cases[f"swa{w}"] = partial(
                sliding_window_attention, q, k, v, window=w, block_size=default_block_size(w)
            )
        t = round_robin(cases, rounds)
        mem = {name: peak_mib(fn) for name, fn in cases.items()}
        row = f"| {n} | {ms(t['full'])} ({mem['full']:.0f}) | "
        row += " | ".join(
            f"{ms(t[f'swa{w}'])} ({mem[f'swa{w}']:.0f}) | {t['full'] / t[f'swa{w}']:.2f}x"
            for w in windows
        )
        out.append(row + " |")
        print(out[-1], flush=True)

    n = max(lengths)
    q, k, v = qkv(n)
    out += ["", f"Block size sweep at L={n} (core, median ms; speed-up vs full causal SDPA):", ""]
    out += ["| w | block | SWA ms | speed-up |", "|---|---|---|---|"]
    for w in windows:
        cases = {"full": lambda: full_causal(q, k, v)}
        for block in (w // 8, w // 4, w // 2, w):
            cases[f"b{block}"] = lambda w=w, block=block: sliding_window_attention(
                q, k, v, window=w, block_size=block
            )
        t = round_robin(cases, rounds)
        for name in cases:
            if name != "full":
                out.append(f"| {w} | {name[1:]} | {ms(t[name])} | {t['full'] / t[name]:.2f}x |")
                print(out[-1], flush=True)

    if flex:
        out += ["", *bench_flex(q, k, v, windows, rounds)]

    out += ["", f"Whole mixers at L={n} (d_model={D_MODEL}, with q/k/v/o projections):", ""]
    out += ["| mixer | median ms | peak MiB | speed-up vs Attention |", "|---|---|---|---|"]
    x = torch.randn(1, n, D_MODEL)
    torch.manual_seed(0)
    mixers: dict[str, torch.nn.Module] = {
        "Attention (full causal)": Attention(D_MODEL, heads=HEADS)
    }
    for w in windows:
        mixers[f"SlidingWindowAttention w={w}"] = SlidingWindowAttention(
            D_MODEL, heads=HEADS, window=w
        )
    cases = {name: (lambda m=m: m(x)) for name, m in mixers.items()}
    t = round_robin(cases, rounds)
    base = t["Attention (full causal)"]
    for name, fn in cases.items():
        out.append(f"| {name} | {ms(t[name])} | {peak_mib(fn):.0f} | {base / t[name]:.2f}x |")
        print(out[-1], flush=True)
    return out


def bench_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, windows: list[int], rounds: int):
    """The peer from the anchors: compiled flex attention with a band block mask."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n = q.shape[2]
    compiled = torch.compile(flex_attention)
    out = [f"Peer: `torch.compile(flex_attention)` with a band block mask at L={n}:", ""]
    out += ["| w | flex ms | our SWA ms | full ms | flex speed-up | ours / flex |"]
    out += ["|---|---|---|---|---|---|"]
    for w in windows:

        def band(b, h, qi, kj, w=w):
            return (kj <= qi) & (kj > qi - w)

        mask = create_block_mask(band, None, None, n, n, device="cpu")
        t0 = time.perf_counter()
        compiled(q, k, v, block_mask=mask)
        first = time.perf_counter() - t0
        cases = {
            "full": lambda: full_causal(q, k, v),
            "flex": lambda mask=mask: compiled(q, k, v, block_mask=mask),
            "ours": lambda w=w: sliding_window_attention(
                q, k, v, window=w, block_size=default_block_size(w)
            ),
        }
        t = round_robin(cases, rounds)
        out.append(
            f"| {w} | {ms(t['flex'])} (first call {first:.1f} s) | {ms(t['ours'])} | "
            f"{ms(t['full'])} | {t['full'] / t['flex']:.2f}x | {t['flex'] / t['ours']:.2f}x |"
        )
        print(out[-1], flush=True)
    return out


# -- (b) SCOUT checkpoint attention --------------------------------------------------------------
def bench_checkpoint(lengths: list[int], rounds: int) -> list[str]:
    out = [f"## SCOUT checkpoint attention (s={SEGMENT}) vs full causal SDPA", ""]
    out += [f"Load average at start: {load()}", ""]
    out += [
        "Cells: median ms (peak MiB). Core = given q, k, v `[1, 8, L, 64]`; mixer = with "
        f"projections, d_model={D_MODEL}.",
        "",
        "| L | full SDPA core | checkpoint core | core speed-up | Attention mixer | "
        "CheckpointAttention mixer | mixer speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    core_full, core_ckpt = [], []
    torch.manual_seed(0)
    full_mixer = Attention(D_MODEL, heads=HEADS)
    ckpt_mixer = CheckpointAttention(D_MODEL, heads=HEADS, segment_size=SEGMENT)
    for n in lengths:
        q, k, v = qkv(n)
        x = torch.randn(1, n, D_MODEL)
        cases = {
            "full": partial(full_causal, q, k, v),
            "ckpt": partial(checkpoint_attention, q, k, v, segment_size=SEGMENT),
            "full_mixer": partial(full_mixer, x),
            "ckpt_mixer": partial(ckpt_mixer, x),
        }
        t = round_robin(cases, rounds)
        mem = {name: peak_mib(fn) for name, fn in cases.items()}
        core_full.append(t["full"])
        core_ckpt.append(t["ckpt"])
        cell = {name: f"{ms(t[name])} ({mem[name]:.0f})" for name in cases}
        out.append(
            f"| {n} | {cell['full']} | {cell['ckpt']} | {t['full'] / t['ckpt']:.2f}x | "
            f"{cell['full_mixer']} | {cell['ckpt_mixer']} | "
            f"{t['full_mixer'] / t['ckpt_mixer']:.2f}x |"
        )
        print(out[-1], flush=True)
    if len(lengths) > 1:
        out += [
            "",
            f"Log-log slope of core time vs L over L = {lengths}: full causal SDPA "
            f"{slope(lengths, core_full):.2f}, checkpoint attention "
            f"{slope(lengths, core_ckpt):.2f} (2 = quadratic).",
        ]
    return out


def machine() -> list[str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- CPU: {cpu}, {torch.get_num_threads()} threads (`torch.set_num_threads(2)`)",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- load average (1/5/15 min) when the run started: {load()}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--swa-lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--windows", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--ckpt-lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--flex", action="store_true", help="also time compiled flex attention")
    parser.add_argument("--out", help="write the markdown here")
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(0)
    lines = ["# Attention family on CPU (`benchmarks/bench_attention_family.py`)", ""]
    lines += [*machine(), ""]
    print("\n".join(lines), flush=True)
    with torch.inference_mode():
        lines += [*bench_swa(args.swa_lengths, args.windows, args.rounds, args.flex), ""]
        lines += [*bench_checkpoint(args.ckpt_lengths, args.rounds), ""]
    lines += [f"Load average at the end: {load()}", ""]
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
