"""The training loop: AdamW, warm-up + cosine schedule, clipping, bf16 autocast, validation,
atomic checkpoints and exact resume.

Exactness: every step's batch is a pure function of ``(seed, step)`` and the learning rate a
pure function of the step, so restoring model + optimizer state from the checkpoint of step
``k`` and running steps ``k..N`` gives bit-for-bit the weights of an uninterrupted run (on the
same machine and torch build). A run folder holds::

    config.json          what the run is (train + data config, model); checked on --resume
    metrics.jsonl        train / val records (see archgen.train.metrics)
    loss.png             loss curves, written at the end
    checkpoints/         step_NNNNNNN/{weights.safetensors,state.pt,meta.json}, latest
    weights.safetensors  the final weights, written at the end

>>> result = train(graph, data, TrainConfig(steps=10), "runs/x", progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from archgen.backends.torch_model import ArchModel, build_model
from archgen.backends.weights import save_weights
from archgen.errors import ArchgenError
from archgen.ir.graph import Graph
from archgen.train.checkpoint import (
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    write_text_atomic,
)
from archgen.train.config import TrainConfig, as_plain
from archgen.train.data import TrainingData
from archgen.train.metrics import MetricsLog, plot_curves, read_metrics
from archgen.train.tasks import TaskBatch, answer_accuracy

# Options that change the math of a run; the others (intervals, keep) may differ on --resume.
_BOOKKEEPING = {"eval_interval", "eval_batches", "checkpoint_interval", "keep_checkpoints",
                "log_interval", "steps"}  # fmt: skip


@dataclass(frozen=True)
class Batch:
    """A batch on the device: ``inputs``/``targets`` int64 ``[B, L]``, ``mask`` bool ``[B, L]``."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor

    @staticmethod
    def of(batch: TaskBatch, device: torch.device) -> Batch:
        return Batch(
            torch.from_numpy(batch.inputs).to(device),
            torch.from_numpy(batch.targets).to(device),
            torch.from_numpy(batch.mask).to(device),
        )


def masked_cross_entropy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer positions, computed in float32."""
    return F.cross_entropy(logits[batch.mask].float(), batch.targets[batch.mask])


class Objective(Protocol):
    """What a step minimises. ``modules`` are extra trainable parts (e.g. adapters) that are
    optimised and checkpointed with the model."""

    modules: dict[str, nn.Module]

    def loss(self, model: ArchModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


# What validation computes: ``(model, batches, data, config, device) -> record`` (see ``evaluate``;
# a masked-diffusion LM scores masked tokens instead of next tokens: train/diffusion.py).
Evaluator = Callable[
    [ArchModel, list[TaskBatch], TrainingData, TrainConfig, torch.device], dict[str, float]
]


@dataclass
class LanguageModeling:
    """Cross-entropy of the next token (text, tokens) or of the answers (tasks)."""

    modules: dict[str, nn.Module] = field(default_factory=dict)

    def loss(self, model: ArchModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return masked_cross_entropy(model(batch.inputs), batch), {}


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    steps: int  # completed optimizer steps
    trained_steps: int  # of which this call ran (0 when a finished run is resumed)
    seconds: float
    final: dict[str, float]  # the last validation record
    first: dict[str, float]  # the first validation record of the run


def _param_groups(params: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    # Decay matrices only: decaying norm scales and biases only hurts (GPT-2/nanoGPT practice).
    decay = [p for _, p in params if p.ndim >= 2]
    rest = [p for _, p in params if p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module, extra: dict[str, nn.Module], config: TrainConfig
) -> torch.optim.AdamW:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for key, module in extra.items():
        params += [(f"{key}.{n}", p) for n, p in module.named_parameters() if p.requires_grad]
    return torch.optim.AdamW(
        _param_groups(params, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        # foreach=False: the same kernels whatever the parameter count, for exact resumes.
        foreach=False,
    )


def autocast(config: TrainConfig, device: torch.device) -> Any:
    if not config.bf16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(
    model: ArchModel,
    batches: list[TaskBatch],
    data: TrainingData,
    config: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """Mean validation loss; bits per byte (text) or answer accuracy (tasks).

    Bits per byte are the summed loss (nats) over ``ln 2`` and the bytes the scored target
    tokens cover (:meth:`TrainingData.bytes_covered`: exact with a BPE tokenizer, so byte-level
    and BPE models are compared on the same text)."""
    was_training = model.training
    model.eval()
    total, count, hits, answers = 0.0, 0, 0, 0
    covered: float | None = 0.0
    for raw in batches:
        batch = Batch.of(raw, device)
        with autocast(config, device):
            logits = model(batch.inputs)
        n = int(batch.mask.sum())
        total += float(masked_cross_entropy(logits, batch)) * n
        count += n
        size = data.bytes_covered(raw.targets[raw.mask])
        covered = None if size is None or covered is None else covered + size
        if data.is_task:
            pred = logits.argmax(-1).cpu().numpy()
            hits += round(answer_accuracy(pred, raw.targets, raw.mask) * n)
            answers += n
    model.train(was_training)
    out = {"loss": total / count}
    if covered:
        out["bpb"] = total / math.log(2) / covered
    if answers:
        out["accuracy"] = hits / answers
    return out


def run_identity(graph: Graph, data: TrainingData, config: TrainConfig) -> dict[str, Any]:
    """What makes two runs the same run (compared on --resume)."""
    return {
        "model": graph.model.name,
        "params": sum(n.op.params() for n in graph.nodes),
        "data": as_plain(data.source),
        "train": as_plain(config),
    }


def _check_resumable(saved: dict[str, Any], now: dict[str, Any], out: Path) -> list[str]:
    notes = []
    for key in [k for k in now if k != "train"]:
        if saved.get(key) != now[key]:
            raise ArchgenError(
                f"{out} holds a run with a different {key} ({saved.get(key)} vs {now[key]})",
                hint="resume with the same spec and options, or choose another --out",
            )
    for key, value in now["train"].items():
        old = saved["train"].get(key)
        if old != value and key not in _BOOKKEEPING:
            raise ArchgenError(
                f"{out} was trained with train.{key} = {old}, now {value}",
                hint="a resumed run must keep the options that change its math",
            )
        if old != value and key == "steps":
            notes.append(f"steps changed {old} -> {value}: the cosine schedule changes with it")
    return notes


def train(
    graph: Graph,
    data: TrainingData,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    objective: Objective | None = None,
    evaluator: Evaluator | None = None,
    init: Callable[[ArchModel], None] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] = print,
    identity: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the model of ``graph`` on ``data`` into ``out_dir`` (see the module docstring).

    ``init`` adjusts the freshly built model before training (e.g. load weights); ``on_step``
    is called after every optimizer step with ``(step, loss)``; ``evaluator`` replaces
    :func:`evaluate` for validation; ``identity`` adds what else
    makes this run itself (e.g. the teacher) to the facts checked on ``resume``.
    """
    out = Path(out_dir)
    dev = torch.device(device)
    seq_len = data.seq_len_for(config.seq_len)
    if data.images is None and seq_len > graph.model.max_seq_len:
        raise ArchgenError(
            f"training sequences of {seq_len} tokens exceed the model's max_seq_len "
            f"{graph.model.max_seq_len}",
            hint="lower train.seq_len (or the task's seq_len)",
        )
    identity = {**run_identity(graph, data, config), **(identity or {})}
    ckpt_root = out / "checkpoints"
    ckpt = latest_checkpoint(ckpt_root)
    if ckpt is not None and not resume:
        raise ArchgenError(
            f"{out} already holds a run (checkpoint at step {ckpt.step})",
            hint="pass --resume to continue it, or choose another --out",
        )
    if ckpt is None and (out / "weights.safetensors").is_file():
        # a finished run whose checkpoints are gone: training again would replace its weights
        raise ArchgenError(
            f"{out} holds a trained model (weights.safetensors) but no checkpoint to "
            f"{'resume' if resume else 'continue'} from",
            hint="choose another --out (a new run there would replace those weights)",
        )
    if ckpt is not None:
        try:
            saved = json.loads((out / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ArchgenError(
                f"{out / 'config.json'}: cannot read what the run is ({exc})",
                hint="it is needed to check that --resume continues the same run; choose "
                "another --out",
            ) from None
        if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict):
            raise ArchgenError(f"{out / 'config.json'}: not a run's config.json")
        for note in _check_resumable(saved, identity, out):
            log(f"note: {note}")
    elif resume:
        log(f"note: no checkpoint in {out}; starting a new run")
    if config.warmup_steps >= config.steps:
        log(
            f"note: all {config.steps} steps are warm-up (train.warmup_steps "
            f"{config.warmup_steps}): the learning rate only reaches "
            f"{config.lr_at(config.steps - 1):.3g} (train.lr is {config.lr:g}) and never "
            "decays; lower train.warmup_steps for a short run"
        )

    model = build_model(graph, seed=config.seed, device=dev)
    if init is not None:
        init(model)
    objective = objective or LanguageModeling()
    for module in objective.modules.values():
        module.to(dev)
    optimizer = make_optimizer(model, objective.modules, config)
    start, elapsed_before = 0, 0.0
    if ckpt is not None:
        ckpt = restore_checkpoint(ckpt, model, optimizer, objective.modules, log)
        start, elapsed_before = ckpt.step, ckpt.elapsed_s
        log(f"resumed from {ckpt.path} (step {start})")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.json", json.dumps(identity, indent=2) + "\n")
    metrics = MetricsLog(out / "metrics.jsonl", keep_until=start if ckpt is not None else None)
    val_batches = data.val_batches(
        batches=config.eval_batches, batch_size=config.batch_size, seq_len=seq_len
    )

    def validate(step: int) -> dict[str, float]:
        record = (evaluator or evaluate)(model, val_batches, data, config, dev)
        metrics.write({"kind": "val", "step": step, **record})
        return record

    last_val = validate(0) if start == 0 else {}
    # elapsed_s counts training time over every session of the run: it continues on --resume.
    began = time.perf_counter() - elapsed_before
    window_tokens, window_start = 0, time.perf_counter()
    info = "starting"
    bar = _progress(progress)
    task = bar.add_task(graph.model.name, total=config.steps, completed=start, info=info)
    model.train()
    with bar:
        for step in range(start, config.steps):
            raw = data.train_batch(
                seed=config.seed, step=step, batch_size=config.batch_size, seq_len=seq_len
            )
            batch = Batch.of(raw, dev)
            lr = config.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(config, dev):
                loss, parts = objective.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = _clip(model, objective.modules, config.grad_clip)
            optimizer.step()
            done = step + 1
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise ArchgenError(
                    f"the loss became {loss_value} at step {done}",
                    hint="lower train.lr or enable train.grad_clip",
                )
            window_tokens += raw.targets.size if data.images is not None else raw.inputs.size
            if done % config.log_interval == 0 or done == config.steps:
                now = time.perf_counter()
                tps = window_tokens / max(now - window_start, 1e-9)
                window_tokens, window_start = 0, now
                metrics.write(
                    {"kind": "train", "step": done, "loss": loss_value, "lr": lr,
                     "grad_norm": grad_norm, "tokens_per_s": tps,
                     "elapsed_s": now - began, **parts}
                )  # fmt: skip
                unit = "img/s" if data.images is not None else "tok/s"
                info = f"loss {loss_value:.3f}  {tps:,.0f} {unit}"
            if done % config.eval_interval == 0 or done == config.steps:
                last_val = validate(done)
            if last_val:
                info = info.split("  val")[0] + "  val " + _short(last_val)
            bar.update(task, completed=done, info=info)
            if done % config.checkpoint_interval == 0 or done == config.steps:
                save_checkpoint(
                    ckpt_root, done, model, optimizer, objective.modules,
                    {"val": last_val, "lr": lr}, keep=config.keep_checkpoints,
                    elapsed_s=time.perf_counter() - began,
                )  # fmt: skip
            if on_step is not None:
                on_step(done, loss_value)
    seconds = time.perf_counter() - began - elapsed_before  # this session's
    save_weights(model, out / "weights.safetensors", {"steps": str(config.steps)})
    records = read_metrics(out / "metrics.jsonl")
    plot_curves(records, out / "loss.png", f"{graph.model.name}: {data.describe()}")
    vals = [r for r in records if r["kind"] == "val"]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("kind", "step")}  # noqa: E731
    return TrainResult(
        out,
        config.steps,
        max(0, config.steps - start),
        seconds,
        strip(vals[-1]) if vals else {},
        strip(vals[0]) if vals else {},
    )


def _clip(model: nn.Module, extra: dict[str, nn.Module], limit: float | None) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    for module in extra.values():
        params += [p for p in module.parameters() if p.grad is not None]
    if limit is None:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
    return float(torch.nn.utils.clip_grad_norm_(params, limit, foreach=False))


def _short(record: dict[str, float]) -> str:
    if "bpb" in record:
        return f"bpb {record['bpb']:.3f}"
    if "accuracy" in record:
        return f"acc {record['accuracy']:.3f}"
    return f"loss {record['loss']:.3f}"


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
        disable=not enabled,
    )
