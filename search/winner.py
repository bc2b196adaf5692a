"""The search winner with trained weights: ``OUT/best/``, a run folder you can deploy.

The blockwise proxy (search/proxies.py) has already trained a teacher (the spec's base model)
and distilled every (layer, choice) block from it; both are cached. The winner is assembled
from them -- a node the winner keeps takes the teacher's weights, a swapped node and the rest
of its block take the weights its blockwise job trained -- and then, optionally, distilled end
to end from the teacher for a few steps (``finalize_steps``; the assembled blocks were each
trained on the teacher's block inputs, not on each other's outputs). Validation bits per byte
of the teacher, the assembled and the finalised model are measured on the same batches.

``OUT/best/`` holds ``weights.safetensors``, ``spec.yaml`` and ``manifest.json`` (and the
finalisation's ``config.json``, ``metrics.jsonl``, ``loss.png``); ``archgen generate``,
``validate`` and ``export`` take it as ``--weights``. It is written through a staging folder,
so it appears complete or not at all; a rerun with the same winner reuses it.

>>> winner = build_winner(spec, graph, candidate, space, cache, out, finalize_steps=40,
...                       quick=True, log=print)  # doctest: +SKIP
>>> winner.folder, winner.finalized.bpb  # doctest: +SKIP
(PosixPath('out/best'), 2.41)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archgen.errors import ArchgenError
from archgen.ir.graph import Graph
from archgen.search.proxies import BlockwiseSetup, one_process_at_a_time, teacher_dir
from archgen.search.space import Candidate, SearchSpace
from archgen.spec.models import ArchSpec

if TYPE_CHECKING:
    import torch

    from archgen.backends.torch_model import ArchModel
    from archgen.export import ExportResult, Format
    from archgen.train.config import TrainConfig
    from archgen.train.data import TrainingData

Log = Callable[[str], None]
BEST = "best"
COMMAND = "search"  # best/'s manifest names the command that owns it (archgen.staging)
# The assembled model starts near the teacher, so the short run uses a lower peak learning rate.
# How much lower matters little: on a 3-layer d=32 model (40 steps) 1, 1/3 and 1/10 of the
# teacher's ended within 0.003 bits per byte of each other; a third is the middle.
FINALIZE_LR_SCALE = 1 / 3


def default_finalize_steps(spec: ArchSpec, quick: bool) -> int:
    """Finalisation steps when the user gives none: a fraction of the teacher's training,
    at most 100 (40 with ``--quick``; tens of seconds on a 2-core CPU for examples/hybrid)."""
    setup = BlockwiseSetup.of(spec, quick)
    return max(1, min(40 if quick else 100, setup.teacher_steps // 3))


@dataclass(frozen=True)
class Validation:
    """Validation of one model on the teacher's validation batches."""

    loss: float
    bpb: float | None  # None for data without bytes (capability tasks, images)
    accuracy: float | None = None  # an image classifier's top-1 accuracy; None for LMs

    @staticmethod
    def of(record: Mapping[str, float]) -> Validation:
        bpb, accuracy = record.get("bpb"), record.get("accuracy")
        return Validation(
            float(record["loss"]), None if bpb is None else float(bpb),
            None if accuracy is None else float(accuracy),
        )  # fmt: skip

    def __str__(self) -> str:
        if self.bpb is not None:
            return f"{self.bpb:.4f} bits per byte"
        if self.accuracy is not None:
            return f"accuracy {self.accuracy:.4f} (loss {self.loss:.4f})"
        return f"loss {self.loss:.4f}"


@dataclass(frozen=True)
class Assembly:
    """Where each weight of the assembled winner came from."""

    from_teacher: tuple[str, ...]  # nodes whose tensors are the teacher's
    from_blockwise: tuple[str, ...]  # nodes whose tensors a cached blockwise job trained
    not_carried: tuple[str, ...]  # tensors with no trained source: left at their seeded init


@dataclass(frozen=True)
class Winner:
    folder: Path  # OUT/best
    candidate: dict[str, str]
    teacher_folder: Path
    teacher: Validation
    assembled: Validation
    finalized: Validation | None  # None when finalize_steps == 0
    assembly: Assembly
    finalize_steps: int
    seconds: float  # spent by build_winner (assembly, validation, finalisation)
    reused: bool = False  # an earlier run's best/ for the same winner was kept

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["folder"], data["teacher_folder"] = str(self.folder), str(self.teacher_folder)
        data["assembly"] = {k: list(v) for k, v in data["assembly"].items()}
        return data

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Winner:
        fin = data["finalized"]
        return Winner(
            folder=Path(data["folder"]), candidate=dict(data["candidate"]),
            teacher_folder=Path(data["teacher_folder"]), teacher=Validation(**data["teacher"]),
            assembled=Validation(**data["assembled"]),
            finalized=None if fin is None else Validation(**fin),
            assembly=Assembly(**{k: tuple(v) for k, v in data["assembly"].items()}),
            finalize_steps=int(data["finalize_steps"]), seconds=float(data["seconds"]),
            reused=bool(data.get("reused", False)),
        )  # fmt: skip


def assemble(
    teacher: ArchModel,
    graph: Graph,
    blocks: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    seed: int = 0,
) -> tuple[ArchModel, Assembly]:
    """The model of ``graph`` with trained weights: ``blocks[node]`` holds the tensors the
    blockwise job of swapped ``node`` trained (its whole block, named as in the model).

    A tensor of a swapped node comes from its job. The other tensors of a block with exactly one
    swapped node (norms, the other mixer) come from that job too: they were trained together.
    Every other tensor is the teacher's same-named one; a tensor with neither (a shape the
    teacher does not have) keeps its seeded initialisation and is listed in ``not_carried``."""
    import torch

    from archgen.backends.torch_model import build_model

    model = build_model(graph, seed=seed)
    theirs = teacher.state_dict()
    swapped_in_block: dict[str, list[str]] = {}
    for name in blocks:
        block = graph.node(name).block
        if block is None:
            raise ArchgenError(f"{name} is not inside a block")
        swapped_in_block.setdefault(block, []).append(name)
    owners = sorted((n.name for n in graph.nodes), key=len, reverse=True)  # longest first
    sources: dict[str, set[str]] = {}
    missing: list[str] = []
    with torch.no_grad():
        for tensor_name, tensor in model.state_dict().items():
            owner = next((o for o in owners if tensor_name.startswith(o + ".")), tensor_name)
            block = graph.node(owner).block if owner in owners else None
            together = swapped_in_block.get(block or "", [])
            job = owner if owner in blocks else (together[0] if len(together) == 1 else None)
            source = blocks[job].get(tensor_name) if job is not None else theirs.get(tensor_name)
            if source is None or source.shape != tensor.shape:
                missing.append(tensor_name)
                continue
            tensor.copy_(source)
            sources.setdefault(owner, set()).add("blockwise" if job is not None else "teacher")
    from_blockwise = tuple(o for o, s in sources.items() if "blockwise" in s)
    from_teacher = tuple(o for o, s in sources.items() if s == {"teacher"})
    return model.eval(), Assembly(from_teacher, from_blockwise, tuple(missing))


def build_winner(
    spec: ArchSpec,
    graph: Graph,
    candidate: Candidate,
    space: SearchSpace,
    cache: Path,
    out: Path,
    *,
    finalize_steps: int,
    quick: bool,
    log: Log,
) -> Winner:
    """Write ``out/best/``: the winner (``graph``, which is ``space.graph_for(candidate)``)
    assembled from the cached teacher and blockwise-distilled blocks of the blockwise proxy that
    scored it (same ``spec``, ``cache`` and ``quick``), then distilled end to end from the
    teacher for ``finalize_steps`` (0 skips). See the module docstring."""
    from archgen.search.proxies import train_teacher
    from archgen.staging import OutputFolder
    from archgen.train.blockwise import CACHE_VERSION, block_weights

    began = time.perf_counter()
    target = OutputFolder(out / BEST, COMMAND, force=True)
    target.check()  # never over a user's files, before any work
    setup = BlockwiseSetup.of(spec, quick)
    tfolder = teacher_dir(spec, setup.teacher_steps, cache)
    key = _key(space, candidate, tfolder, setup, finalize_steps, CACHE_VERSION)
    previous = _previous(target.path, key)
    if previous is not None:
        log(f"winner: reusing {target.path} (same winner, teacher and finalisation)")
        return previous
    swapped = {
        n: (label, op) for n, (label, op) in space.node_choices(candidate).items()
        if graph.node(n).op != space.base.node(n).op
    }  # fmt: skip
    with one_process_at_a_time(tfolder.with_name(tfolder.name + ".lock"), log):
        teacher, tfolder, prepared = train_teacher(spec, setup.teacher_steps, cache, log)
        jobs = {n: {label: op} for n, (label, op) in swapped.items()}
        trained = block_weights(
            teacher, jobs, prepared.data, setup.block_config(prepared.config),
            cache_dir=cache / "blockwise", log=log,
        )  # fmt: skip
    blocks = {n: trained[n, label] for n, (label, _) in swapped.items()}
    model, assembly = assemble(teacher, graph, blocks, seed=prepared.config.seed)
    log(f"winner: {len(assembly.from_blockwise)} node(s) from blockwise-distilled blocks, "
        f"{len(assembly.from_teacher)} from the teacher")  # fmt: skip
    if assembly.not_carried:
        log(f"winner: no trained weights for {len(assembly.not_carried)} tensor(s) "
            f"(seeded init): {', '.join(assembly.not_carried[:5])}")  # fmt: skip
    data, config = prepared.data, prepared.config
    teacher_val = _validate(teacher, data, config)
    assembled_val = _validate(model, data, config)
    log(f"winner: teacher {teacher_val}; assembled {assembled_val}")

    finalized_val = None
    fconfig = finalize_config(config, finalize_steps) if finalize_steps > 0 else config
    with target.staging() as staging:
        if finalize_steps > 0:
            finalized_val = _finalize(graph, teacher, model, data, fconfig, staging, log)
            log(f"winner: after {finalize_steps} finalisation steps {finalized_val}")
        else:
            from archgen.backends.weights import save_weights

            save_weights(model, staging / "weights.safetensors")
        winner = Winner(
            target.path, dict(candidate), tfolder, teacher_val, assembled_val, finalized_val,
            assembly, finalize_steps, time.perf_counter() - began,
        )  # fmt: skip
        _write_files(graph, data, fconfig, staging, winner, key)
    log(f"winner: wrote {target.path}/ in {winner.seconds:.1f} s")
    return winner


def finalize_config(teacher: TrainConfig, steps: int) -> TrainConfig:
    """The teacher's options, shortened to ``steps`` at a lower peak learning rate."""
    steps = max(1, steps)
    return replace(
        teacher, steps=steps, lr=teacher.lr * FINALIZE_LR_SCALE,
        warmup_steps=min(teacher.warmup_steps, steps // 5), eval_interval=steps,
        checkpoint_interval=steps, keep_checkpoints=1,
        log_interval=min(teacher.log_interval, steps),
    )  # fmt: skip


def export_winner(
    folder: Path, out_dir: Path, *, fmt: Format = "onnx", force: bool = False
) -> ExportResult:
    """Export ``folder`` (``OUT/best``) with its trained weights and validate the numerics
    (:func:`archgen.export.export`); ``force`` replaces a previous export there."""
    from archgen.export import export

    return export(
        folder / "spec.yaml", out_dir, fmt=fmt, weights=folder / "weights.safetensors",
        force=force,
    )  # fmt: skip


# -- internals ---------------------------------------------------------------------------------
def _key(
    space: SearchSpace, candidate: Candidate, teacher: Path, setup: BlockwiseSetup, steps: int,
    version: int,
) -> str:  # fmt: skip
    facts = [space.key(candidate), teacher.name, asdict(setup), steps, version, FINALIZE_LR_SCALE]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def _previous(folder: Path, key: str) -> Winner | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("winner_key") != key or not (folder / "weights.safetensors").is_file():
        return None
    return replace(Winner.from_json(manifest["winner"]), folder=folder, reused=True)


def _validate(model: ArchModel, data: TrainingData, config: TrainConfig) -> Validation:
    import torch

    from archgen.train.loop import evaluate

    batches = data.val_batches(
        batches=config.eval_batches, batch_size=config.batch_size,
        seq_len=data.seq_len_for(config.seq_len),
    )  # fmt: skip
    return Validation.of(evaluate(model, batches, data, config, torch.device("cpu")))


def _finalize(
    graph: Graph, teacher: ArchModel, assembled: ArchModel, data: TrainingData,
    config: TrainConfig, folder: Path, log: Log,
) -> Validation:  # fmt: skip
    """End-to-end distillation from the teacher, starting at the assembled weights; its
    validation batches are the ones :func:`_validate` uses (same data and options)."""
    from archgen.passes.infer_shapes import InferShapes
    from archgen.train.distill import copy_matching, distill

    # The taps' widths come from the value types, which the swaps dropped: an image model's
    # stages differ in width (without them every block would read as d_model wide).
    graph = InferShapes().run(graph).graph

    def init(model: ArchModel) -> None:
        copy_matching(assembled, model)  # every tensor: same graph

    result = distill(graph, teacher, data, config, folder, init=init, progress=False, log=log)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # a deployable, not a resumable run
    return Validation.of(result.final)


def _write_files(
    graph: Graph, data: TrainingData, config: TrainConfig, folder: Path,
    winner: Winner, key: str,
) -> None:  # fmt: skip
    from archgen.spec.expand import spec_from_graph
    from archgen.training import write_run_files

    files = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    files = sorted({*files, "spec.yaml"} - {"manifest.json"})
    best = spec_from_graph(graph)  # write_run_files adds the data and options used
    extra = {"command": COMMAND, "winner_key": key, "winner": winner.to_json()}
    write_run_files(
        best, graph, data.source, config, folder, extra, files=files, tokenizer=data.tokenizer
    )  # tokenizer.json too: generate reads a BPE winner's tokens from its folder
