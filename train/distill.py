"""Knowledge distillation of a student model from a trained teacher.

The wiring is a typed :class:`~archgen.ir.distill.DistillGraph` built by
:func:`~archgen.passes.distillation.wire_distillation` (pure Python): which block outputs are
tapped, where a linear adapter maps student -> teacher width, and the weighted loss terms.
:class:`DistillConfig` holds the user-facing options and translates into that call
(:meth:`DistillConfig.wiring`); this module only turns a pair into torch modules and a loss.

With the default options the loss is ``kd_weight * T^2 * KL(teacher_T || student_T)`` on the
logits (temperature ``T``, answer positions only) ``+ ce_weight * CE(labels) + feature_weight *
feature loss``, the feature taps being the block outputs the two graphs share by name
(``layers.0``, ``layers.1``...). Adapters are trained with the student and checkpointed, not
part of its weights. Each tap's MSE is divided by the teacher feature's mean square, so the
weight does not depend on how large the residual stream has grown at that depth.

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
from archgen.ir.distill import DistillGraph, LossTerm, Tap
from archgen.ir.graph import Graph
from archgen.passes.distillation import wire_distillation
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

    def wiring(self, student: Graph, teacher: Graph) -> DistillGraph:
        """These options as a wired pair: taps at the blocks both graphs share, MSE features."""
        return wire_distillation(
            student,
            teacher,
            temperature=self.temperature,
            kd_weight=self.kd_weight,
            ce_weight=self.ce_weight,
            feature_weight=self.feature_weight,
        )


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


def adapter_key(tap: Tap) -> str:
    """The adapter's module name: ModuleDict keys cannot hold dots, so the block name is kept
    readable with '_' (``layers_0``); checkpoints store adapters under these names."""
    return tap.name.replace(".", "_")


class Distillation:
    """The distillation objective of a wired pair (see the module docstring).

    ``teacher`` is the trained model of ``pair.teacher``; adapters come from the taps' adapters
    and the loss from ``pair.losses``, term by term in their order."""

    def __init__(self, teacher: ArchModel, pair: DistillGraph) -> None:
        if teacher.graph != pair.teacher:
            raise ArchgenError(
                f"the teacher model ({teacher.graph.model.name}) is not the pair's teacher graph "
                f"({pair.teacher.model.name})",
                hint="wire the pair with the teacher model's own graph",
            )
        self.teacher = teacher.eval().requires_grad_(False)
        self.pair = pair
        self.adapters = nn.ModuleDict()
        for tap in pair.taps:
            if tap.adapter is not None:
                self.adapters[adapter_key(tap)] = nn.Linear(
                    tap.adapter.d_in, tap.adapter.d_out, bias=False
                )
        # Checkpoints have held "adapters" whenever the widths differ, even with no taps; keep
        # that so runs written before resume unchanged.
        widths_differ = pair.student.model.d_model != pair.teacher.model.d_model
        keep = widths_differ or len(self.adapters) > 0
        self.modules: dict[str, nn.Module] = {"adapters": self.adapters} if keep else {}

    def _adapt(self, tap: Tap, x: torch.Tensor) -> torch.Tensor:
        return self.adapters[adapter_key(tap)](x) if tap.adapter is not None else x

    def loss(self, model: ArchModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        taps = self.pair.taps
        with torch.no_grad():
            t_logits, t_feats = self.teacher.run(
                batch.inputs, capture=tuple(t.teacher_value for t in taps)
            )
        s_logits, s_feats = model.run(batch.inputs, capture=tuple(t.student_value for t in taps))
        total: torch.Tensor | None = None
        parts: dict[str, float] = {}
        for term in self.pair.losses:
            if term.kind == "kl_logits":
                value = self._kl(s_logits, t_logits, batch.mask, term)
            elif term.kind == "ce":
                value = masked_cross_entropy(s_logits, batch)
            else:
                value = self._feature(term, s_feats, t_feats)
            parts[_PART[term.kind]] = float(value.detach())
            weighted = term.weight * value
            total = weighted if total is None else total + weighted
        assert total is not None, "wire_distillation never leaves a pair without loss terms"
        return total, parts

    @staticmethod
    def _kl(
        s_logits: torch.Tensor, t_logits: torch.Tensor, mask: torch.Tensor, term: LossTerm
    ) -> torch.Tensor:
        temp = term.temperature
        assert temp is not None  # LossTerm requires it for kl_logits
        s_log = F.log_softmax(s_logits[mask].float() / temp, dim=-1)
        t_log = F.log_softmax(t_logits[mask].float() / temp, dim=-1)
        # KL(teacher || student), times T^2 so its gradient scale does not shrink with T (Hinton).
        return F.kl_div(s_log, t_log, log_target=True, reduction="batchmean") * temp**2

    def _feature(
        self, term: LossTerm, s_feats: dict[str, torch.Tensor], t_feats: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The feature loss averaged over the taps (every position, not only answers)."""
        feats = []
        for tap in self.pair.taps:
            target = t_feats[tap.teacher_value].float()
            adapted = self._adapt(tap, s_feats[tap.student_value].float())
            if term.kind == "feature_mse":
                diff = adapted - target
                feats.append(diff.pow(2).mean() / target.pow(2).mean().clamp_min(1e-12))
            else:
                feats.append(1.0 - F.cosine_similarity(adapted, target, dim=-1).mean())
        return torch.stack(feats).mean()


# The names each term's value is logged under (metrics.jsonl), as before the typed wiring.
_PART: dict[str, str] = {
    "kl_logits": "kd",
    "ce": "ce",
    "feature_mse": "feature",
    "feature_cosine": "feature",
}


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
    on_wiring: Callable[[DistillGraph], None] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``student`` to imitate ``teacher`` on ``data`` (a run folder like ``train``'s);
    ``on_wiring`` sees the teacher/student pair (:class:`DistillGraph`) before training starts.

    ``init`` sets the student's starting weights (e.g. an assembled model's); without it the
    student copies the teacher's same-named, same-shaped tensors when
    ``distill_config.init_from_teacher``. On ``resume`` the checkpoint overwrites either."""
    dcfg = distill_config or DistillConfig()
    pair = dcfg.wiring(student, teacher.graph)
    if on_wiring is not None:
        on_wiring(pair)
    objective = Distillation(teacher.to(device), pair)
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
