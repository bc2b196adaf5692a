"""A teacher/student pair as one typed, printable object: :class:`DistillGraph`.

Distillation pairs two graphs: the *student* being trained and a trained *teacher* it imitates.
What ties them together is data, not code: the *taps* (a student value compared with a teacher
value, through a linear :class:`Adapter` where their widths differ) and the *loss terms* (logit
KL at a temperature, cross-entropy on the labels, a feature loss over the taps). The pair keeps
the two graphs whole and side by side -- no merged namespace -- so stripping the wiring gives
back the student unchanged.

``archgen.passes.distillation.wire_distillation`` builds one; ``archgen.train.distill`` turns
it into torch modules and a loss. Pure Python, like the rest of :mod:`archgen.ir`.

>>> from archgen.ir.distill import LossTerm
>>> LossTerm("kl_logits", 1.0, temperature=2.0)
LossTerm(kind='kl_logits', weight=1.0, temperature=2.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from archgen.ir.graph import Graph
from archgen.ir.printer import print_graph

LossKind = Literal["kl_logits", "ce", "feature_mse", "feature_cosine"]
LOSS_KINDS: tuple[str, ...] = get_args(LossKind)
FEATURE_KINDS: tuple[str, ...] = ("feature_mse", "feature_cosine")


@dataclass(frozen=True)
class Adapter:
    """A linear map (no bias) from the student's width to the teacher's at one tap; trained
    with the student, not part of its weights."""

    d_in: int
    d_out: int


@dataclass(frozen=True)
class Tap:
    """Student value ``student_value`` is compared with teacher value ``teacher_value``
    (``name`` is the block both leave, e.g. ``layers.0``)."""

    name: str
    student_value: str
    teacher_value: str
    adapter: Adapter | None = None


@dataclass(frozen=True)
class LossTerm:
    """``weight`` times one loss. ``kl_logits`` is ``T^2 * KL(teacher_T || student_T)`` at
    ``temperature`` T; ``ce`` is cross-entropy on the labels; ``feature_mse`` (divided by the
    teacher feature's mean square) and ``feature_cosine`` (one minus the cosine similarity)
    are averaged over the taps."""

    kind: LossKind
    weight: float
    temperature: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss kind {self.kind!r} (one of {', '.join(LOSS_KINDS)})")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"loss {self.kind}: weight must be finite and >= 0, got {self.weight}")
        wants_temperature = self.kind == "kl_logits"
        if wants_temperature and (self.temperature is None or not self.temperature > 0):
            raise ValueError(f"loss kl_logits: temperature must be > 0, got {self.temperature}")
        if not wants_temperature and self.temperature is not None:
            raise ValueError(f"loss {self.kind} takes no temperature")


def value_width(graph: Graph, value: str) -> int:
    """The last dim of ``value``: from the inferred types when present, else ``d_model`` (every
    block leaves the residual stream, whose width is the model's)."""
    vtype = graph.value_types.get(value)
    if vtype is not None and vtype.shape and isinstance(vtype.shape[-1], int):
        return vtype.shape[-1]
    return graph.model.d_model


@dataclass(frozen=True)
class DistillGraph:
    """A student and a teacher graph, the taps between them and the loss terms."""

    student: Graph
    teacher: Graph
    taps: tuple[Tap, ...]
    losses: tuple[LossTerm, ...]

    def loss(self, kind: LossKind) -> LossTerm | None:
        """The term of ``kind``, if the pair has one."""
        return next((t for t in self.losses if t.kind == kind), None)

    def problems(self) -> list[str]:
        """What breaks the rules of a pair (empty when it is well formed): both graphs predict
        the same vocabulary; each tap names values the graphs produce and an adapter exactly
        where (and as wide as) the widths differ; each loss kind at most once; feature terms
        need taps and taps need a feature term."""
        found: list[str] = []
        s, t = self.student, self.teacher
        if s.model.vocab_size != t.model.vocab_size:
            found.append(
                f"teacher vocab_size {t.model.vocab_size} differs from the student's "
                f"{s.model.vocab_size}: logits cannot be compared"
            )
        names = [tap.name for tap in self.taps]
        for name in sorted({n for n in names if names.count(n) > 1}):
            found.append(f"tap {name!r} appears more than once")
        for tap in self.taps:
            missing = [
                f"the {who} has no value %{value}"
                for who, graph, value in (
                    ("student", s, tap.student_value),
                    ("teacher", t, tap.teacher_value),
                )
                if value not in graph
            ]
            if missing:
                found.append(f"tap {tap.name!r}: {'; '.join(missing)}")
                continue
            d_in, d_out = value_width(s, tap.student_value), value_width(t, tap.teacher_value)
            want = Adapter(d_in, d_out) if d_in != d_out else None
            if tap.adapter != want:
                found.append(
                    f"tap {tap.name!r}: widths {d_in} -> {d_out} need "
                    f"{_adapter_text(want)}, the tap has {_adapter_text(tap.adapter)}"
                )
        kinds = [term.kind for term in self.losses]
        for kind in sorted({k for k in kinds if kinds.count(k) > 1}):
            found.append(f"loss {kind} appears more than once")
        has_feature = any(k in FEATURE_KINDS for k in kinds)
        if has_feature and not self.taps:
            found.append("a feature loss without taps")
        if self.taps and not has_feature:
            found.append("taps without a feature loss to use them")
        return found


def _adapter_text(adapter: Adapter | None) -> str:
    return "no adapter" if adapter is None else f"linear({adapter.d_in} -> {adapter.d_out})"


def print_distill_graph(pair: DistillGraph) -> str:
    """The wiring (teacher, taps with their adapters, loss terms), then the student graph."""
    s, t = pair.student.model, pair.teacher.model
    lines = [
        f"distill {s.name} <- teacher {t.name} (d_model={t.d_model}, "
        f"vocab_size={t.vocab_size}, blocks={len(pair.teacher.blocks())}) {{"
    ]
    for tap in pair.taps:
        line = f"  tap {tap.name}: %{tap.student_value} -> teacher %{tap.teacher_value}"
        if tap.adapter is not None:
            line += f" via adapter {_adapter_text(tap.adapter)} {{bias=false}}"
        lines.append(line)
    for term in pair.losses:
        line = f"  loss {term.kind} {{weight={term.weight!r}"
        if term.temperature is not None:
            line += f", temperature={term.temperature!r}"
        line += "}"
        if term.kind in FEATURE_KINDS:
            line += f" over {len(pair.taps)} tap{'s' if len(pair.taps) != 1 else ''}"
        lines.append(line)
    lines.append("}")
    return "\n".join(lines) + "\n" + print_graph(pair.student)


__all__ = [
    "FEATURE_KINDS",
    "LOSS_KINDS",
    "Adapter",
    "DistillGraph",
    "LossKind",
    "LossTerm",
    "Tap",
    "print_distill_graph",
    "value_width",
]
