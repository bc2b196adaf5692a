"""The SCOUT conversion path (issue 12): does converting a trained transformer and distilling it
beat training the SCOUT model from scratch for the same steps?

1. train ``examples/transformer.yaml`` (the teacher, its spec's default steps);
2. ``archgen convert`` it with ``compress_segments{s=16,local=swa}`` and with
   ``compress_segments{s=16,local=mamba}``;
3. ``archgen distill`` each converted folder from the teacher for ``--distill-steps`` steps;
4. ``archgen train`` each converted spec from scratch (random init) for the same steps, batch
   and sequence length (so the same tokens);
5. read validation bits per byte from each run's ``metrics.jsonl`` (a distillation's step-0
   validation is the converted model before any update), and time prefill of teacher and
   converted models at the spec's longest length, paired call by call (search/paired.py), with
   the decode-state (KV cache) size from the IR's cost model.

Every command is an ``archgen`` subprocess, as a user runs it; the table goes to stdout.

    python -m benchmarks.scout_conversion OUT [--distill-steps 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from archgen import api
from archgen.ir.cost import graph_cost
from archgen.train.metrics import read_metrics
from benchmarks.common import machine

SPEC = Path(__file__).resolve().parent.parent / "examples" / "transformer.yaml"
VARIANTS = {
    "scout-swa": "compress_segments{s=16,local=swa}",
    "scout-mamba": "compress_segments{s=16,local=mamba}",
}


def archgen(*args: str) -> None:
    start = time.perf_counter()
    print(f"$ archgen {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "archgen.cli.main", *args], check=True)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def val_bpb(run: Path) -> tuple[float, float]:
    """(first, last) validation bits per byte of a run folder."""
    vals = [r for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "val"]
    return vals[0]["bpb"], vals[-1]["bpb"]


def at_length(folder: Path, length: int | None) -> object:
    """The folder's spec, with ``max_seq_len`` raised to ``length`` if given: latency does not
    depend on the weights, so a model can be timed past the length it was trained at."""
    spec = api.as_spec(folder / "spec.yaml")
    if length is None:
        return spec
    model = spec.model.model_copy(update={"max_seq_len": max(length, spec.model.max_seq_len)})
    return spec.model_copy(update={"model": model})


def prefill_ratio(
    teacher: Path, student: Path, threads: int, length: int | None = None
) -> tuple[float, float, float]:
    """Paired prefill latency of ``student`` / ``teacher`` at ``length`` (default: the longest
    the teacher takes), and the teacher's median seconds."""
    from archgen.search.measure import Measurer
    from archgen.search.timing import Workload

    reference = api.compile_spec(at_length(teacher, length))  # type: ignore[arg-type]
    graph = api.compile_spec(at_length(student, length))  # type: ignore[arg-type]
    workload = Workload(seq_len=length or reference.model.max_seq_len, threads=threads)
    measurer = Measurer(workload, reference=reference)
    (result,) = measurer.measure_against_reference([graph])
    return result.ratio, result.rel_error, result.reference_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--distill-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="training threads")
    parser.add_argument("--latency-threads", type=int, default=2)
    parser.add_argument(
        "--latency-only",
        type=int,
        metavar="L",
        help="only time prefill of the finished runs in OUT at length L (and the decode state)",
    )
    args = parser.parse_args()
    if args.latency_only:
        latency_table(args.out, args.latency_only, args.latency_threads)
        return
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    steps = ("--steps", str(args.distill_steps), "--threads", str(args.threads), "--no-progress")
    teacher = out / "teacher"
    if not (teacher / "weights.safetensors").is_file():
        archgen("train", str(SPEC), "--out", str(teacher), "--threads", str(args.threads),
                "--no-progress")  # fmt: skip
    rows = []
    for name, passes in VARIANTS.items():
        converted, distilled, scratch = (
            out / name,
            out / f"{name}-distilled",
            out / f"{name}-scratch",
        )
        if not converted.is_dir():
            archgen("convert", str(teacher), "--passes", passes, "-o", str(converted))
        if not (distilled / "weights.safetensors").is_file():
            archgen("distill", str(converted), "--teacher", str(teacher), "-o", str(distilled),
                    *steps)  # fmt: skip
        if not (scratch / "weights.safetensors").is_file():
            archgen("train", str(converted / "spec.yaml"), "--out", str(scratch), *steps)
        before, after = val_bpb(distilled)
        _, from_scratch = val_bpb(scratch)
        ratio, rel_error, teacher_s = prefill_ratio(teacher, converted, args.latency_threads)
        rows.append((name, passes, before, after, from_scratch, ratio, rel_error, teacher_s))
    teacher_bpb = val_bpb(teacher)[1]
    graph_t = api.compile_spec(teacher / "spec.yaml")
    length = graph_t.model.max_seq_len
    kv_t = graph_cost(graph_t, length).state_bytes
    print(f"\nteacher: {teacher_bpb:.3f} bits per byte; decode state at L={length}: "
          f"{kv_t / 2**20:.2f} MiB")  # fmt: skip
    print(f"distillation and from-scratch training: {args.distill_steps} steps each\n")
    print("| model | pipeline | bpb converted (step 0) | bpb distilled | bpb from scratch | "
          f"prefill L={length} vs teacher | decode state (MiB) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, passes, before, after, scratch_bpb, ratio, rel_error, _ in rows:
        kv = graph_cost(api.compile_spec(out / name / "spec.yaml"), length).state_bytes
        print(f"| {name} | `{passes}` | {before:.3f} | {after:.3f} | {scratch_bpb:.3f} | "
              f"{ratio:.3f}x (+-{rel_error * 100:.1f} %) | {kv / 2**20:.2f} |")  # fmt: skip
    print(f"\nteacher prefill at L={length}: {rows[0][7] * 1e3:.1f} ms (median of the paired "
          "rounds)")  # fmt: skip


def latency_table(out: Path, length: int, threads: int) -> None:
    print(f"machine: {machine()}", flush=True)
    teacher = out / "teacher"
    kv_t = graph_cost(api.compile_spec(at_length(teacher, length)), length).state_bytes
    print(f"\n| model | prefill L={length} vs teacher (paired) | teacher ms | decode state (MiB) |")
    print("|---|---:|---:|---:|")
    print(f"| teacher | 1 | - | {kv_t / 2**20:.2f} |")
    for name in VARIANTS:
        ratio, rel_error, teacher_s = prefill_ratio(teacher, out / name, threads, length)
        kv = graph_cost(api.compile_spec(at_length(out / name, length)), length).state_bytes
        print(f"| {name} | {ratio:.3f}x (+-{rel_error * 100:.1f} %) | {teacher_s * 1e3:.0f} | "
              f"{kv / 2**20:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
