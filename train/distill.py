"""Knowledge distillation of a student model from a trained teacher.

The loss is ``kd_weight * T^2 * KL(teacher_T || student_T)`` on the logits (temperature ``T``,
answer positions only) ``+ ce_weight * CE(labels) + feature_weight * feature loss``. Feature
taps are the block outputs the two graphs share by name (``layers.0``, ``layers.1``...), as the
``wire_distillation`` design describes; when the widths differ a linear adapter (trained with
the student, checkpointed, not part of the student's weights) maps student -> teacher width.
Each tap's MSE is divided by the teacher feature's mean square, so the weight does not depend on
how large the residual stream has grown at that depth.

The student trains with :func:`archgen.train.loop.train`, so progress, validation, checkpoints
and exact ``--resume`` work as for plain training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from archgen.backends.torch_model import ArchModel
from archgen.errors import ArchgenError
from archgen.ir.graph import Graph
from archgen.train.config import TrainConfig, as_plain, check_bounds, option
from archgen.train.data import TrainingData
from archgen.train.loop import Batch, TrainResult, masked_cross_entropy, train


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = option("softmax temperature of the logit KL", 2.0, gt=0, le=100)
    kd_weight: float = option("weight of the logit KL term", 1.0, ge=0)
    ce_weight: float = option("weight of the ordinary cross-entropy on the labels", 0.0, ge=0)
    feature_weight: float = option("weight of the block-output feature loss", 1.0, ge=0)
    init_from_teacher: bool = option("copy teacher weights into same-named, same-shaped ones", True)

    def __post_init__(self) -> None:
        check_bounds(self)


def copy_matching(source: nn.Module, target: nn.Module) -> list[str]:
    """Copy every parameter/buffer of ``source`` into the same-named, same-shaped one of
    ``target``; return the names copied (the rest keep their initialisation)."""
    theirs = source.state_dict()
    copied = []
    with torch.no_grad():
        for name, tensor in target.state_dict().items():
            other = theirs.get(name)
            if other is not None and other.shape == tensor.shape:
                tensor.copy_(other)
                copied.append(name)
    return copied


def shared_taps(student: Graph, teacher: Graph) -> list[tuple[str, str, str]]:
    """``(block, student value, teacher value)`` for each block name both graphs have."""
    s_out, t_out = student.block_outputs(), teacher.block_outputs()
    return [(b, s_out[b], t_out[b]) for b in student.blocks() if b in t_out]


class Distillation:
    """The distillation objective (see the module docstring)."""

    def __init__(self, teacher: ArchModel, student: Graph, config: DistillConfig) -> None:
        if teacher.graph.model.vocab_size != student.model.vocab_size:
            raise ArchgenError(
                f"teacher vocab_size {teacher.graph.model.vocab_size} differs from the student's "
                f"{student.model.vocab_size}: logits cannot be compared"
            )
        self.teacher = teacher.eval().requires_grad_(False)
        self.config = config
        self.taps = shared_taps(student, teacher.graph) if config.feature_weight > 0 else []
        d_s, d_t = student.model.d_model, teacher.graph.model.d_model
        self.adapters = nn.ModuleDict()
        if d_s != d_t:
            for block, _, _ in self.taps:
                # ModuleDict keys cannot hold dots; the block name stays readable with '_'.
                self.adapters[block.replace(".", "_")] = nn.Linear(d_s, d_t, bias=False)
        self.modules: dict[str, nn.Module] = {"adapters": self.adapters} if d_s != d_t else {}

    def _adapt(self, block: str, x: torch.Tensor) -> torch.Tensor:
        key = block.replace(".", "_")
        return self.adapters[key](x) if key in self.adapters else x

    def loss(self, model: ArchModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        with torch.no_grad():
            t_logits, t_feats = self.teacher.run(
                batch.inputs, capture=tuple(t for *_, t in self.taps)
            )
        s_logits, s_feats = model.run(batch.inputs, capture=tuple(s for _, s, _ in self.taps))
        mask = batch.mask
        temp = cfg.temperature
        s_log = F.log_softmax(s_logits[mask].float() / temp, dim=-1)
        t_log = F.log_softmax(t_logits[mask].float() / temp, dim=-1)
        # KL(teacher || student), times T^2 so its gradient scale does not shrink with T (Hinton).
        kd = F.kl_div(s_log, t_log, log_target=True, reduction="batchmean") * temp**2
        total = cfg.kd_weight * kd
        parts = {"kd": float(kd.detach())}
        if cfg.ce_weight > 0:
            ce = masked_cross_entropy(s_logits, batch)
            total = total + cfg.ce_weight * ce
            parts["ce"] = float(ce.detach())
        if self.taps:
            feats = []
            for block, s_name, t_name in self.taps:
                target = t_feats[t_name].float()
                diff = self._adapt(block, s_feats[s_name].float()) - target
                feats.append(diff.pow(2).mean() / target.pow(2).mean().clamp_min(1e-12))
            feature = torch.stack(feats).mean()
            total = total + cfg.feature_weight * feature
            parts["feature"] = float(feature.detach())
        return total, parts


def distill(
    student: Graph,
    teacher: ArchModel,
    data: TrainingData,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    distill_config: DistillConfig | None = None,
    init: Callable[[ArchModel], None] | None = None,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``student`` to imitate ``teacher`` on ``data`` (a run folder like ``train``'s).

    ``init`` sets the student's starting weights (e.g. an assembled model's); without it the
    student copies the teacher's same-named, same-shaped tensors when
    ``distill_config.init_from_teacher``. On ``resume`` the checkpoint overwrites either."""
    dcfg = distill_config or DistillConfig()
    objective = Distillation(teacher.to(device), student, dcfg)
    teacher_params = sum(p.numel() for p in teacher.parameters())

    def from_teacher(model: ArchModel) -> None:
        if dcfg.init_from_teacher:
            copied = copy_matching(teacher, model)
            log(f"initialised {len(copied)} of the student's tensors from the teacher")

    return train(
        student,
        data,
        config,
        out_dir,
        resume=resume,
        objective=objective,
        init=init if init is not None else from_teacher,
        device=device,
        progress=progress,
        on_step=on_step,
        log=log,
        identity={
            "distill": as_plain(dcfg),
            "teacher": {"model": teacher.graph.model.name, "params": teacher_params},
        },
    )
