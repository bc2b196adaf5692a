"""Blockwise local distillation (Puzzle-style): score alternative mixers per layer cheaply.

For a trained teacher and, per mixer node, a few alternative ops (``{"layers.2.token_mixer":
{"swa64": SlidingWindowAttention(...), ...}}``), each alternative *block* -- the teacher's block
with that node's op replaced -- is trained alone to map the teacher block's input to the teacher
block's output (both captured with ``ArchModel.run(capture=...)``). The block is the teacher's
graph with the op replaced (:func:`archgen.ir.edit.replace_op`), cut out with
:func:`archgen.ir.slicing.subgraph` and run by the same ``ArchModel`` as whole models, so its
parameters are named as in the whole model. Each (node, alternative) is an independent small
job; its validation error fills one cell of a :class:`ScoreTable`:

* ``mse``        -- mean squared error of the block output on the validation windows;
* ``normalized`` -- that error divided by the mean square of what the teacher block adds
  (``y - x``): 0 is a perfect replacement, 1 is as bad as deleting the block.

Alternatives start from the teacher's weights where names and shapes match (attention -> swa or
checkpoint_attention keep q/k/v/o; norms and the channel mixer are always copied) and train all
of the block's parameters. Results are cached under ``cache_dir``, keyed by a hash of (teacher
graph and weights, node, alternative op, data, training options): ``KEY.json`` the score and
``KEY.safetensors`` the trained block's weights, named as in the whole model
(``layers.2.token_mixer.q_proj.weight``), so search trials and reruns reuse them (a fully cached
call runs no optimizer step) and :func:`block_weights` hands a search winner its trained blocks.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from archgen.backends.torch_model import ArchModel
from archgen.backends.weights import load_tensors, save_tensors
from archgen.errors import ArchgenError
from archgen.ir.edit import EditError, replace_op
from archgen.ir.graph import Graph, Node
from archgen.ir.ops import Op, causality_problem
from archgen.ir.slicing import block_io, subgraph
from archgen.train.checkpoint import write_text_atomic
from archgen.train.config import TrainConfig, as_plain
from archgen.train.data import TrainingData
from archgen.train.distill import copy_matching
from archgen.train.loop import autocast, make_optimizer

CACHE_VERSION = 2  # 2: the trained block's weights are cached beside its score


@dataclass(frozen=True)
class BlockScore:
    node: str  # the replaced node, e.g. layers.2.token_mixer
    label: str  # the alternative's name
    op: str  # the alternative op, printed
    mse: float
    normalized: float
    normalized_at_init: float  # before training (teacher-initialised parts already fit)
    from_teacher: int  # tensors initialised from the teacher
    steps: int
    cached: bool = False


@dataclass(frozen=True)
class ScoreTable:
    rows: tuple[BlockScore, ...]
    optimizer_steps: int  # optimizer steps this call ran (0 when everything was cached)

    def get(self, node: str, label: str) -> BlockScore:
        for row in self.rows:
            if row.node == node and row.label == label:
                return row
        raise KeyError((node, label))

    def scores(self, metric: str = "normalized") -> dict[tuple[str, str], float]:
        """``{(node, label): value}``, the shape ``archgen.search.quality.TableQuality`` takes."""
        return {(r.node, r.label): getattr(r, metric) for r in self.rows}

    def to_text(self) -> str:
        lines = [
            "| node | alternative | normalized | mse | at init | cached |",
            "|---|---|---:|---:|---:|---|",
        ]
        lines += [
            f"| {r.node} | {r.label} | {r.normalized:.4f} | {r.mse:.3e} | "
            f"{r.normalized_at_init:.4f} | {'yes' if r.cached else 'no'} |"
            for r in self.rows
        ]
        return "\n".join(lines)


def teacher_digest(teacher: ArchModel) -> str:
    """Hash of the teacher's graph and weights (the part of a cache key the teacher decides)."""
    h = hashlib.sha256()
    h.update(repr([(n.name, n.op, n.inputs) for n in teacher.graph.nodes]).encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _check_op(graph: Graph, node: Node, label: str, op: Op) -> Op:
    op = op.resolved()
    if op.role is not node.op.role:
        raise ArchgenError(
            f"alternative {label!r} for {node.name} is a {op.role.value}, "
            f"not a {node.op.role.value}"
        )
    # the width of the node's own stream: an image model's stages differ in width
    teacher_width = getattr(node.op, "d_model", graph.model.d_model)
    width = getattr(op, "d_model", teacher_width)
    if width != teacher_width:
        raise ArchgenError(
            f"alternative {label!r} for {node.name} has d_model {width}, the teacher "
            f"{teacher_width}"
        )
    problems = op.problems()
    if problems:
        raise ArchgenError(f"alternative {label!r}: {problems[0].field}: {problems[0].message}")
    if (why := causality_problem(op, graph.model.task)) is not None:
        raise ArchgenError(f"alternative {label!r} for {node.name} is {why}")
    return op


@dataclass
class _Job:
    node: Node
    label: str
    op: Op
    key: str
    module: ArchModel  # the block alone: its input value -> its output value
    from_teacher: int
    input_name: str
    output_name: str
    optimizer: torch.optim.Optimizer | None = None


def _build_job(teacher: ArchModel, node: Node, label: str, op: Op, key: str, seed: int) -> _Job:
    block = node.block or ""
    try:
        swapped = replace_op(teacher.graph, node.name, op)
        io, alone = block_io(swapped, block), subgraph(swapped, block)
    except EditError as e:
        raise ArchgenError(f"blockwise distillation of {node.name}: {e}") from None
    with torch.random.fork_rng(devices=[]):
        # Fresh parameters of the alternative are seeded by the job alone, so a job's result
        # does not depend on which other jobs share the call.
        torch.manual_seed(int(key[:15], 16) ^ seed)
        module = ArchModel(alone)
    # the block's parameters are named as in the teacher: same name and shape -> copied
    copied = len(copy_matching(teacher, module))
    return _Job(node, label, op, key, module, copied, io.entering, io.leaving)


def blockwise_scores(
    teacher: ArchModel,
    alternatives: Mapping[str, Mapping[str, Op]],
    data: TrainingData,
    config: TrainConfig,
    *,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> ScoreTable:
    """Train and score every (node, alternative) of ``alternatives`` (see the module docstring).

    ``config`` gives steps, batch size, sequence length, learning rate and schedule, clipping,
    bf16, ``eval_batches`` and the seed; jobs found in ``cache_dir`` are not retrained. The
    teacher is moved to ``device`` and frozen (eval mode, no gradients).
    """
    dev = torch.device(device)
    graph = teacher.graph
    teacher = teacher.to(dev).eval().requires_grad_(False)
    seq_len = data.seq_len_for(config.seq_len)
    if data.images is None and seq_len > graph.model.max_seq_len:  # images: their own size
        raise ArchgenError(f"seq_len {seq_len} exceeds the teacher's max_seq_len")
    cache = Path(cache_dir) if cache_dir is not None else None
    keys = _CacheKeys(teacher, data, config)
    rows: dict[tuple[str, str], BlockScore] = {}
    jobs: list[_Job] = []
    for node_name, choices in alternatives.items():
        try:
            node = graph.node(node_name)
        except KeyError:
            raise ArchgenError(f"the teacher has no node {node_name!r}") from None
        if node.block is None:
            raise ArchgenError(f"{node_name} is not inside a block")
        for label, raw_op in choices.items():
            op = _check_op(graph, node, label, raw_op)
            key = keys.key(node_name, op)
            if cache is not None and _cached(cache, key):
                stored = json.loads((cache / f"{key}.json").read_text())
                rows[node_name, label] = BlockScore(**{**stored, "label": label, "cached": True})
                continue
            jobs.append(_build_job(teacher, node, label, op, key, config.seed))
    for job in jobs:
        job.module.to(dev).train()
        job.optimizer = make_optimizer(job.module, {}, config)
    capture = tuple(sorted({j.input_name for j in jobs} | {j.output_name for j in jobs}))
    val = [
        teacher.run(torch.from_numpy(b.inputs).to(dev), capture=capture)[1]
        for b in data.val_batches(batches=config.eval_batches, batch_size=config.batch_size,
                                  seq_len=seq_len)
    ] if jobs else []  # fmt: skip
    at_init = {id(j): _validate(j, val, config, dev) for j in jobs}
    steps_run = 0
    if jobs:
        log(f"blockwise distillation: {len(jobs)} jobs x {config.steps} steps")
    progress = _Progress(config.steps, log)
    for step in range(config.steps if jobs else 0):
        progress.tick(step)
        raw = data.train_batch(
            seed=config.seed, step=step, batch_size=config.batch_size, seq_len=seq_len
        )
        with torch.no_grad():
            _, caps = teacher.run(torch.from_numpy(raw.inputs).to(dev), capture=capture)
        lr = config.lr_at(step)
        for job in jobs:
            assert job.optimizer is not None
            for group in job.optimizer.param_groups:
                group["lr"] = lr
            x, y = caps[job.input_name], caps[job.output_name]
            with autocast(config, dev):
                pred = job.module(x)
            # Normalised by what the block adds, so every layer trains at the same scale.
            loss = (pred.float() - y).pow(2).mean() / (y - x).pow(2).mean().clamp_min(1e-12)
            job.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(job.module.parameters(), config.grad_clip)
            job.optimizer.step()
            steps_run += 1
    for job in jobs:
        mse, normalized = _validate(job, val, config, dev)
        score = BlockScore(
            job.node.name, job.label, repr(job.op), mse, normalized,
            at_init[id(job)][1], job.from_teacher, config.steps,
        )  # fmt: skip
        rows[job.node.name, job.label] = score
        if cache is not None:
            # the weights first: the score file is what marks the entry complete
            save_tensors(_block_state(job), cache / f"{job.key}.safetensors")
            stored = {k: v for k, v in asdict(score).items() if k not in ("label", "cached")}
            write_text_atomic(cache / f"{job.key}.json", json.dumps(stored, indent=2) + "\n")
    ordered = tuple(rows[n, label] for n, choices in alternatives.items() for label in choices)
    return ScoreTable(ordered, steps_run)


class _Progress:
    """A line every ``every_s`` seconds of a long blockwise run (minutes on a CPU, silent
    otherwise): steps done, elapsed, and the time left at the pace so far."""

    def __init__(self, steps: int, log: Callable[[str], None], every_s: float = 30.0) -> None:
        self.steps, self.log, self.every_s = steps, log, every_s
        self.start = self.last = time.monotonic()

    def tick(self, step: int) -> None:
        now = time.monotonic()
        if step == 0 or now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.start
        left = elapsed / step * (self.steps - step)
        self.log(
            f"blockwise distillation: step {step}/{self.steps}, {elapsed:.0f} s, "
            f"about {left:.0f} s left"
        )


class _CacheKeys:
    """The cache key of each (node, alternative op) job for one teacher, data and config."""

    def __init__(self, teacher: ArchModel, data: TrainingData, config: TrainConfig) -> None:
        self.base = {
            "version": CACHE_VERSION,
            "teacher": teacher_digest(teacher),
            "data": data.fingerprint,
            "train": as_plain(config),
        }

    def key(self, node: str, op: Op) -> str:
        facts = {**self.base, "node": node, "op": repr(op)}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def _cached(cache: Path, key: str) -> bool:
    return (cache / f"{key}.json").is_file() and (cache / f"{key}.safetensors").is_file()


def _block_state(job: _Job) -> dict[str, torch.Tensor]:
    """The trained block's tensors, named as in the whole model (``layers.2.norm1.weight``)."""
    return dict(job.module.state_dict())


def block_weights(
    teacher: ArchModel,
    alternatives: Mapping[str, Mapping[str, Op]],
    data: TrainingData,
    config: TrainConfig,
    *,
    cache_dir: str | Path,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
    """The trained weights of each (node, alternative) block, ``{(node, label): {name:
    tensor}}`` with names as in the whole model: read from ``cache_dir`` where
    :func:`blockwise_scores` left them (same teacher, data and config), trained now (and
    cached) where it did not."""
    blockwise_scores(teacher, alternatives, data, config, cache_dir=cache_dir, device=device,
                     log=log)  # fmt: skip
    keys = _CacheKeys(teacher, data, config)
    cache = Path(cache_dir)
    out = {}
    for node_name, choices in alternatives.items():
        node = teacher.graph.node(node_name)
        for label, raw_op in choices.items():
            key = keys.key(node_name, _check_op(teacher.graph, node, label, raw_op))
            out[node_name, label] = load_tensors(cache / f"{key}.safetensors")
    return out


@torch.no_grad()
def _validate(
    job: _Job, val: list[dict[str, torch.Tensor]], config: TrainConfig, dev: torch.device
) -> tuple[float, float]:
    job.module.eval()
    err = added = 0.0
    count = 0
    for caps in val:
        x, y = caps[job.input_name], caps[job.output_name]
        with autocast(config, dev):
            pred = job.module(x)
        err += float((pred.float() - y).pow(2).sum())
        added += float((y - x).pow(2).sum())
        count += y.numel()
    job.module.train()
    return err / count, err / max(added, 1e-30)
