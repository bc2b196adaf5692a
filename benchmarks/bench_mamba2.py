"""archgen ``Mamba2`` vs Hugging Face transformers' ``Mamba2Mixer`` (its pure-torch CPU path).

Both mixers are built at hidden 768, head_dim 64, state 64 (24 heads), HF defaults otherwise
(``n_groups=8``, ``chunk_size=256``); ``--ngroups 1`` adds the single-group configuration used in
``research/perf-anchors.md`` §3. HF's random weights are copied into archgen's module by name, the
outputs are checked to agree, then both are timed in the same process, interleaved call by call
(the dev machine is shared, so drift hits both sides alike), and the median is reported.

Needs ``pip install transformers`` (benchmark only; nothing is downloaded)::

    python benchmarks/bench_mamba2.py                     # table + results/mamba2_cpu.md
    python benchmarks/bench_mamba2.py --chunks 32,64,128  # chunk-size sweep for archgen
    python benchmarks/bench_mamba2.py --profile 4096      # CPU time per op, HF and archgen
"""

from __future__ import annotations

import argparse
import collections
import datetime
import functools
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from archgen.mixers.mamba2 import Mamba2

HIDDEN, HEAD_DIM, STATE = 768, 64, 64
RESULTS = Path(__file__).resolve().parent / "results" / "mamba2_cpu.md"
NOTES_HEADING = "## Notes"


def build_pair(ngroups: int, chunk_size: int) -> tuple[torch.nn.Module, Mamba2]:
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    heads = 2 * HIDDEN // HEAD_DIM
    config = Mamba2Config(
        hidden_size=HIDDEN, head_dim=HEAD_DIM, state_size=STATE, num_heads=heads, n_groups=ngroups
    )
    hf = Mamba2Mixer(config, layer_idx=0).eval()
    ours = Mamba2(
        HIDDEN, d_state=STATE, head_dim=HEAD_DIM, ngroups=ngroups, chunk_size=chunk_size
    ).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    return hf, ours


def run_with_chunk(module: torch.nn.Module, chunk: int, x: torch.Tensor) -> torch.Tensor:
    module.chunk_size = chunk
    return module(x)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def time_interleaved(
    fns: dict[str, object], x: torch.Tensor, warmup: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU times in ms, one call of each variant per round so drift hits all
    variants alike. CPU time (summed over threads) is not inflated by time the process spends
    descheduled, so on a shared machine its ratio is the steadier of the two."""
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn(x)
    for _ in range(repeats):
        for name, fn in fns.items():
            cpu_start, start = time.process_time(), time.perf_counter()
            fn(x)
            wall[name].append((time.perf_counter() - start) * 1e3)
            cpu[name].append((time.process_time() - cpu_start) * 1e3)
    return wall, cpu


class _OpCpuTime(TorchDispatchMode):
    """Process CPU time per aten op. Unlike wall-clock profilers it does not charge an op for
    the time the process sat descheduled, which dominates on a shared 2-core machine."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.process_time()
        out = func(*args, **(kwargs or {}))
        self.seconds[func.overloadpacket.__name__] += time.process_time() - start
        return out


def profile(length: int, ngroups: int, chunk: int) -> None:
    """Top ops by CPU time for HF (its default chunk) and archgen, one call each after warm-up."""
    hf, ours = build_pair(ngroups, chunk)
    x = torch.randn(1, length, HIDDEN)
    for name, module in (("HF Mamba2Mixer", hf), (f"archgen Mamba2 chunk {chunk}", ours)):
        module(x)
        with _OpCpuTime() as counter:
            module(x)
        total = sum(counter.seconds.values())
        top = ", ".join(f"{op} {s * 1e3:.0f}" for op, s in counter.seconds.most_common(10))
        print(f"{name}: {total * 1e3:.0f} ms CPU; top ops (ms): {top}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="1024,4096")
    parser.add_argument("--ngroups", default="8,1", help="n_groups values (HF default is 8)")
    parser.add_argument("--chunks", default="64", help="archgen chunk sizes to time")
    parser.add_argument(
        "--hf-chunks", default="256,64", help="HF chunk_size values (HF default 256 first)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", type=int, default=0, help="CPU time per op at this L, exit")
    parser.add_argument("--write", type=Path, default=RESULTS, help="markdown output ('' = none)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lengths = [int(v) for v in args.lengths.split(",")]
    groups = [int(v) for v in args.ngroups.split(",")]
    chunks = [int(v) for v in args.chunks.split(",")]
    hf_chunks = [int(v) for v in args.hf_chunks.split(",")]
    if args.profile:
        with torch.inference_mode():
            profile(args.profile, groups[0], chunks[0])
        return

    import transformers

    load_before = os.getloadavg()
    rows: list[str] = []
    header = "| n_groups | L | HF chunk | HF: wall med (min), CPU ms | "
    header += " | ".join(
        f"archgen chunk {c}: wall med (min), CPU ms | HF / archgen{c}: wall, CPU" for c in chunks
    )
    header += " | max abs diff |"
    print(header)
    with torch.inference_mode():
        for ngroups in groups:
            hf, ours = build_pair(ngroups, chunks[0])
            for length in lengths:
                x = torch.randn(1, length, HIDDEN)
                variants: dict[str, object] = {}
                for hf_chunk in hf_chunks:
                    variants[f"hf{hf_chunk}"] = functools.partial(run_with_chunk, hf, hf_chunk)
                ref = variants[f"hf{hf_chunks[0]}"](x)
                diff = 0.0
                for chunk in chunks:
                    model = Mamba2(
                        HIDDEN, d_state=STATE, head_dim=HEAD_DIM, ngroups=ngroups, chunk_size=chunk
                    ).eval()
                    model.load_state_dict(ours.state_dict())
                    diff = max(diff, (model(x) - ref).abs().max().item())
                    if diff > 1e-4 * max(ref.abs().max().item(), 1.0):  # float32 rounding only
                        raise SystemExit(f"outputs disagree: max abs diff {diff:.3g} (L={length})")
                    variants[f"c{chunk}"] = model
                wall, cpu = time_interleaved(variants, x, args.warmup, args.repeats)
                med = {k: statistics.median(v) for k, v in wall.items()}
                cmed = {k: statistics.median(v) for k, v in cpu.items()}
                for hf_chunk in hf_chunks:
                    h = f"hf{hf_chunk}"
                    cells = [f"{med[h]:.1f} ({min(wall[h]):.1f}), {cmed[h]:.0f}"]
                    for chunk in chunks:
                        key = f"c{chunk}"
                        cells.append(f"{med[key]:.1f} ({min(wall[key]):.1f}), {cmed[key]:.0f}")
                        ratio, cpu_ratio = med[h] / med[key], cmed[h] / cmed[key]
                        cells.append(f"**{ratio:.2f}x**, {cpu_ratio:.2f}x")
                    row = f"| {ngroups} | {length} | {hf_chunk} | " + " | ".join(cells)
                    row += f" | {diff:.1e} |"
                    rows.append(row)
                    print(row, flush=True)
    load_after = os.getloadavg()

    if not args.write or str(args.write) == ".":
        return
    lines = [
        "# Mamba-2 mixer on CPU: archgen vs Hugging Face `Mamba2Mixer`",
        "",
        f"- Date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; `torch.set_num_threads"
        f"({args.threads})`",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, Python "
        f"{platform.python_version()}",
        f"- Load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} on "
        f"{os.cpu_count()} cores (above the core count, other jobs shared the machine). Calls "
        "are interleaved (HF, archgen, HF, ...) so drift hits both sides alike; absolute ms move "
        "with the machine's load between runs, compare ratios.",
        f"- Config: hidden {HIDDEN}, head_dim {HEAD_DIM}, state {STATE}, expand 2 (24 heads), "
        "conv 4, float32, batch 1, inference mode. HF defaults otherwise (`n_groups=8`, "
        "`chunk_size=256`); n_groups=1 is the configuration of perf-anchors §3, and HF with "
        "chunk 64 (its best CPU setting there) is shown too. HF runs its pure-torch path (no "
        "`mamba_ssm` / `causal_conv1d`).",
        "- Method: HF weights copied into archgen by name (`load_state_dict(strict=True)`), "
        f"outputs checked to agree (max abs diff column), {args.warmup} warm-up rounds, then "
        f"{args.repeats} interleaved rounds; median (min) wall time per call, and the median "
        "process CPU time (both threads summed; a cross-check: it skips time spent descheduled "
        "but counts OpenMP spin-waiting for a descheduled sibling thread).",
        "- Command: `python benchmarks/bench_mamba2.py "
        f"--lengths {args.lengths} --ngroups {args.ngroups} --chunks {args.chunks} "
        f"--hf-chunks {args.hf_chunks} --repeats {args.repeats}`",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
        *rows,
        "",
    ]
    # Hand-written analysis below a "## Notes" heading survives a rerun.
    previous = args.write.read_text() if args.write.exists() else ""
    notes = previous[previous.index(NOTES_HEADING) :] if NOTES_HEADING in previous else ""
    args.write.parent.mkdir(parents=True, exist_ok=True)
    args.write.write_text("\n".join(lines) + ("\n" + notes if notes else ""))
    print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
