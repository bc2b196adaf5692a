"""Masked-diffusion decoding on CPU (issue 15): confidence vs threshold vs LocalLeap.

Trains small masked-diffusion LMs here (bidirectional attention + SwiGLU, LLaDA's objective) on
prompt/answer tasks whose answers can be checked -- ``query_recall`` (associative recall with
the answers as one span after the queries) and ``selective_copy`` (the copied tokens replace
the copy markers), only the answer masked in training (LLaDA's SFT form) -- and on the built-in
text corpus (every position masked). Then, for generation lengths 64 and 256 with blocks of 32,
each decoder fills the answer span of held-out examples (seeds never used in training):

* ``accuracy``: exact match per answer token against the task's answer; for text, agreement
  with the confidence decoder's output (and, beside it, the bytes that match the real text);
* ``calls/token``: denoiser calls (NFE) per generated token -- a count, independent of load;
* ``tok/s`` and ``x conf``: wall-clock tokens/s, the decoders run interleaved per example so
  that the machine's load falls on all of them alike; the ratio to confidence is the figure
  to read on a shared machine.

On the G=64 cases, a sweep of LocalLeap's ``tau_relax`` and ``radius`` (tau 0.9), with
threshold and confidence (k tokens per call) as reference curves; calls/token vs accuracy of
every case is plotted in ``benchmarks/results/diffusion_tradeoff.png``. The text model is one
model for both lengths (trained on 320-byte windows; prompts of 320 - G bytes).

    python -m benchmarks.bench_diffusion [--threads 1] [--quick] [--out FOLDER]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from archgen import decoding, training
from archgen.backends.torch_model import build_model
from archgen.backends.weights import load_weights
from archgen.decoding import DecodePolicy, parse_decoder
from benchmarks.common import machine

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 32
MAIN = ("confidence", "threshold", "localleap")  # the defaults of research/mixers.md §9
HEADER = (
    "| decoder | accuracy | agreement w/ confidence | exact answers | calls/token | "
    "calls vs confidence | tok/s | tok/s vs confidence |\n|---|---:|---:|---:|---:|---:|---:|---:|"
)
TEXT_CONTEXT = 320  # text windows: prompt = 320 - G bytes, then G generated (trained at 320)


@dataclass(frozen=True)
class Case:
    """One model and the answers it generates: a task (or text) at one generation length."""

    name: str
    gen: int
    data: dict[str, Any]  # the spec's data: section
    vocab: int  # model vocab_size (the data's ids + the mask token)
    steps: int
    examples: int
    layers: int = 2
    d_model: int = 64
    batch: int = 16
    lr: float = 3e-3

    @property
    def seq_len(self) -> int:
        return int(self.data.get("seq_len", TEXT_CONTEXT))

    @property
    def is_text(self) -> bool:
        return self.data["kind"] == "text"


def cases(quick: bool) -> list[Case]:
    """G=64: recall, copy and text; G=256: copy and text (a recall model over 500+ tokens does
    not train in the few CPU minutes this benchmark allows)."""
    s = 0.1 if quick else 1.0
    recall = {"kind": "query_recall", "seq_len": 16 + 2 * 64, "vocab_size": 64, "num_pairs": 8}
    out = [Case("query_recall G=64", 64, recall, 65, int(800 * s), max(2, int(16 * s)), batch=32)]
    for gen, steps, batch, n in ((64, 500, 32, 16), (256, 300, 16, 8)):
        copy = {"kind": "selective_copy", "seq_len": 2 * gen + 8, "vocab_size": 16,
                "num_tokens": gen}  # fmt: skip
        out.append(
            Case(
                f"selective_copy G={gen}",
                gen,
                copy,
                17,
                int(steps * s),
                max(2, int(n * s)),
                batch=batch,
            )
        )
    for gen, n in ((64, 16), (256, 8)):
        out.append(Case(f"text G={gen}", gen, {"kind": "text"}, 257, 0, max(2, int(n * s))))
    return out


def spec_for(case: Case, steps: int) -> dict[str, Any]:
    layer = {"token_mixer": {"kind": "attention", "heads": 4}, "channel_mixer": {"kind": "swiglu"}}
    return {
        "model": {
            "name": "bench-diffusion",
            "task": "masked-diffusion-lm",
            "vocab_size": case.vocab,
            "d_model": case.d_model,
            "max_seq_len": case.seq_len,
            "layers": [layer] * case.layers,
        },
        "data": case.data,
        "train": {
            "steps": steps,
            "batch_size": case.batch,
            "seq_len": case.seq_len,
            "lr": case.lr,
            "warmup_steps": max(1, steps // 20),
            "eval_interval": steps,
            "eval_batches": 2,
            "checkpoint_interval": 10**6,
        },
    }


def train_model(case: Case, steps: int, folder: Path) -> tuple[Any, dict[str, float], float]:
    """The trained model, its final validation metrics and the training seconds. Tasks start
    from unit-variance embeddings, as the search's capability proxy does (token identity must
    survive the residual stream for recall; with the LM default small models stay at chance
    for thousands of steps)."""
    from archgen.search.proxies import unit_embeddings
    from archgen.train.diffusion import MaskedDiffusion
    from archgen.train.loop import train as run_train

    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_for(case, steps), sort_keys=False))
    prepared = training.prepare(spec)
    objective = MaskedDiffusion(case.vocab - 1)
    start = time.perf_counter()
    result = run_train(
        prepared.graph, prepared.data, prepared.config, folder / "run", progress=False,
        log=lambda _: None, objective=objective, evaluator=objective.evaluate,
        init=None if case.is_text else unit_embeddings,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    model = build_model(prepared.graph)
    load_weights(model, folder / "run" / "weights.safetensors")
    return model.eval(), dict(result.final), seconds


@dataclass(frozen=True)
class Example:
    prompt: list[int]
    answer: list[int]  # the true continuation (its G tokens)


def held_out(case: Case, folder: Path) -> list[Example]:
    """Examples from seeds training never draws (tasks), or validation text windows."""
    if case.is_text:
        data = training.prepare(folder / "spec.yaml").data
        val = data.val
        starts = np.linspace(0, len(val) - TEXT_CONTEXT - 1, case.examples).astype(int)
        cut = TEXT_CONTEXT - case.gen
        return [
            Example(val[s : s + cut].tolist(), val[s + cut : s + TEXT_CONTEXT].tolist())
            for s in starts
        ]
    from archgen.train.tasks import TASKS

    kind = case.data["kind"]
    task = TASKS[kind](**{k: v for k, v in case.data.items() if k != "kind"})
    batch = task.sample(np.random.default_rng([987654321, case.gen]), case.examples)
    span = slice(case.seq_len - case.gen, case.seq_len)
    out = []
    for i in range(case.examples):
        mask = batch.mask[i]
        if kind == "query_recall":  # next-token targets: the answers are the shifted span
            seq = batch.inputs[i]
            assert mask[span.start - 1 : span.stop - 1].all()
        else:  # selective copy: the answers replace the copy markers
            seq = np.where(mask, batch.targets[i], batch.inputs[i])
            assert mask[span].all()
        out.append(Example(seq[: span.start].tolist(), seq[span].tolist()))
    return out


@dataclass
class Tally:
    """Counts of one decoder over the examples of one case."""

    calls: int = 0
    tokens: int = 0
    right: int = 0  # tokens equal to the truth (task answer / real text)
    agree: int = 0  # tokens equal to the confidence decoder's output
    exact: int = 0  # whole answers right
    seconds: float = 0.0
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def calls_per_token(self) -> float:
        return self.calls / self.tokens

    @property
    def accuracy(self) -> float:
        return self.right / self.tokens

    @property
    def agreement(self) -> float:
        return self.agree / self.tokens

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def run_decoders(
    model: Any, case: Case, examples: list[Example], policies: list[DecodePolicy]
) -> list[Tally]:
    """Every policy on every example, interleaved (the order rotates per example), so that
    load changes during the run fall on all policies alike. The first policy is the reference
    of ``agree`` (confidence, one token per call)."""
    mask = case.vocab - 1
    tallies = [Tally() for _ in policies]
    with torch.no_grad():  # warm-up: first calls allocate
        decoding.decode(model, examples[0].prompt, case.gen, policies[0], mask_token=mask)
    for i, ex in enumerate(examples):
        order = [(i + j) % len(policies) for j in range(len(policies))]
        for j in order:
            got = decoding.decode(model, ex.prompt, case.gen, policies[j], mask_token=mask)
            t = tallies[j]
            t.calls += got.nfe
            t.tokens += len(got.new_tokens)
            t.right += sum(a == b for a, b in zip(got.new_tokens, ex.answer, strict=True))
            t.exact += got.new_tokens == ex.answer
            t.seconds += got.seconds
            t.outputs.append(got.new_tokens)
    for t in tallies:
        for out, ref in zip(t.outputs, tallies[0].outputs, strict=True):
            t.agree += sum(a == b for a, b in zip(out, ref, strict=True))
    return tallies


def main_policies() -> list[DecodePolicy]:
    return [parse_decoder(f"{name}{{block={BLOCK}}}") for name in MAIN]


def sweep_policies() -> list[DecodePolicy]:
    """Reference curves (confidence with k tokens per call, threshold at lower tau) and
    LocalLeap's tau_relax x radius grid at tau 0.9."""
    out = [parse_decoder(f"confidence{{tokens={k},block={BLOCK}}}") for k in (2, 4)]
    out += [parse_decoder(f"threshold{{tau={t},block={BLOCK}}}") for t in (0.6, 0.75)]
    grid = [(0.5, 1), (0.5, 4), (0.5, 8), (0.6, 4), (0.75, 1), (0.75, 8), (0.85, 4)]
    out += [
        parse_decoder(f"localleap{{tau=0.9,tau_relax={tr},radius={r},block={BLOCK}}}")
        for tr, r in grid
    ]
    return out


def label(policy: DecodePolicy) -> str:
    if isinstance(policy, decoding.LocalLeapDecoder):
        return f"localleap tau_relax={policy.tau_relax} r={policy.radius}"
    if isinstance(policy, decoding.ThresholdDecoder):
        return f"threshold tau={policy.tau}"
    if isinstance(policy, decoding.ConfidenceDecoder):
        return f"confidence k={policy.tokens}"
    return str(policy)


def score(case: Case, t: Tally) -> float:
    """The accuracy plotted and compared: task answers, or agreement for text."""
    return t.agreement if case.is_text else t.accuracy


def plot(
    results: dict[str, list[tuple[DecodePolicy, Tally]]], cases_: list[Case], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in cases_ if c.name in results]
    cols = 3
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    by_name = {c.name: c for c in cases_}
    for ax, name in zip(axes.flat, names, strict=False):
        case = by_name[name]
        groups: dict[str, list[tuple[float, float, str]]] = {}
        for policy, t in results[name]:
            groups.setdefault(policy.name, []).append(
                (t.calls_per_token, score(case, t), label(policy))
            )
        style = {"confidence": ("o-", "C0"), "threshold": ("s-", "C1"), "localleap": ("^", "C2")}
        for kind, pts in groups.items():
            pts.sort()
            marker, color = style[kind]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, color=color, label=kind, ms=5)
        for policy, t in results[name]:
            if str(policy) in {str(p) for p in main_policies()}:
                ax.annotate(policy.name, (t.calls_per_token, score(case, t)), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("denoiser calls per generated token")
        ax.set_ylabel("agreement with confidence" if case.is_text else "answer accuracy")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(
        f"masked-diffusion decoding, blocks of {BLOCK}; localleap: tau 0.9, sweep of "
        "tau_relax and radius"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny steps/examples (a smoke run)")
    parser.add_argument("--text-steps", type=int, default=800)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--steps", type=int, default=None, help="override the task cases' steps")
    parser.add_argument(
        "--plot", type=Path, default=ROOT / "benchmarks/results/diffusion_tradeoff.png"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"machine: {machine()}")
    print(f"command: python -m benchmarks.bench_diffusion {' '.join(argv or sys.argv[1:])}")
    all_cases = [c for c in cases(args.quick) if args.only in c.name]
    if args.steps is not None:
        all_cases = [replace(c, steps=args.steps) for c in all_cases]
    results: dict[str, list[tuple[DecodePolicy, Tally]]] = {}
    rows = []
    text_model: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in all_cases:
            folder = Path(tmp) / case.name.replace(" ", "_").replace("=", "")
            folder.mkdir()
            steps = case.steps
            if case.is_text:
                steps = max(2, args.text_steps // 10) if args.quick else args.text_steps
            if case.is_text and "model" in text_model:  # one text model for both lengths
                (folder / "spec.yaml").write_text(yaml.safe_dump(spec_for(case, steps)))
                model, final, secs = text_model["model"], text_model["final"], 0.0
            else:
                model, final, secs = train_model(case, steps, folder)
                if case.is_text:
                    text_model.update(model=model, final=final)
            load = os.getloadavg()[0]
            examples = held_out(case, folder)
            sweep = not args.no_sweep and case.gen == 64  # the sweep at G=64 only (time)
            policies = main_policies() + (sweep_policies() if sweep else [])
            start = time.perf_counter()
            tallies = run_decoders(model, case, examples, policies)
            results[case.name] = list(zip(policies, tallies, strict=True))
            ref = tallies[0]
            trained = f"{steps} steps in {secs:.0f} s" if secs else "(the text model above)"
            metric = ", ".join(f"{k} {v:.3f}" for k, v in final.items() if isinstance(v, float))
            print(
                f"\n## {case.name}: {len(examples)} held-out examples; model {case.layers} x "
                f"(attention + swiglu), d_model {case.d_model}, trained {trained} ({metric}); "
                f"decoding {time.perf_counter() - start:.0f} s, 1-min load {load:.2f}"
            )
            print(HEADER)
            for policy, t in results[case.name]:
                print(
                    f"| {label(policy)} | {t.accuracy:.3f} | {t.agreement:.3f} | "
                    f"{t.exact}/{len(examples)} | {t.calls_per_token:.3f} | "
                    f"{t.calls / ref.calls:.3f} | {t.tokens_per_second:.0f} | "
                    f"{t.tokens_per_second / ref.tokens_per_second:.2f}x |"
                )
            sys.stdout.flush()
            rows.append(case.name)
    if not args.no_sweep:
        plot(results, all_cases, args.plot)
        print(f"\nplot: {args.plot}")
    print(f"1-min load at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
