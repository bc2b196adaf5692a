"""``wire_distillation``: pair a student graph with a teacher graph as a :class:`DistillGraph`.

Taps sit at block outputs -- by default every block both graphs have by name (``layers.0``,
``layers.1``...), or an explicit list of blocks -- with a linear adapter where the student's
width differs from the teacher's. Loss terms come from the weights: logit KL at a temperature,
cross-entropy on the labels, a feature loss (normalised MSE or cosine) over the taps; a term of
weight zero is left out, and so are the taps when no feature term uses them.
:func:`strip_distillation` gives back the plain student.

These are functions, not a registered :class:`~archgen.passes.base.Pass`: a pass maps one
graph to one graph (``Pass(graph) -> PassResult(graph, ...)``), its options are strings a
pipeline can spell, and every registered pass runs on every example graph. Wiring takes a
second graph (the teacher, a trained model rather than an option) and returns a pair, not a
graph; forcing it into that shape would mean a teacher smuggled in as an option and a pair
disguised as a graph. ``print_distill_graph`` gives the text ``--dump-after wire_distillation``
shows.

>>> pair = wire_distillation(student, teacher, temperature=2.0, ce_weight=0.5)  # doctest: +SKIP
>>> print(print_distill_graph(pair))  # doctest: +SKIP
>>> strip_distillation(pair) == student  # doctest: +SKIP
True
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Literal

from archgen.errors import ArchgenError
from archgen.ir.distill import Adapter, DistillGraph, LossKind, LossTerm, Tap, value_width
from archgen.ir.graph import Graph
from archgen.passes.base import GraphInvalid

SHARED_BLOCKS = "shared-blocks"
FeatureLoss = Literal["mse", "cosine"]
_FEATURE_KIND: dict[str, LossKind] = {"mse": "feature_mse", "cosine": "feature_cosine"}


def wire_distillation(
    student: Graph,
    teacher: Graph,
    *,
    taps: Literal["shared-blocks"] | Sequence[str] = SHARED_BLOCKS,
    temperature: float = 2.0,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    feature_weight: float = 1.0,
    feature_loss: FeatureLoss = "mse",
) -> DistillGraph:
    """The pair ``student`` <- ``teacher`` wired as the module docstring says.

    Raises :class:`ArchgenError` for vocab sizes that differ, a tap naming a block one graph
    lacks (naming it and the graph), a repeated tap, a bad option or weights that leave no
    loss term at all."""
    if student.model.vocab_size != teacher.model.vocab_size:
        raise ArchgenError(
            f"teacher vocab_size {teacher.model.vocab_size} differs from the student's "
            f"{student.model.vocab_size}: logits cannot be compared"
        )
    if feature_loss not in _FEATURE_KIND:
        raise ArchgenError(
            f"feature_loss must be one of {', '.join(_FEATURE_KIND)}, got {feature_loss!r}"
        )
    blocks = _tap_blocks(student, teacher, taps)  # checked even when no feature term uses them
    terms: list[LossTerm] = []
    try:
        if kd_weight > 0:
            terms.append(LossTerm("kl_logits", kd_weight, temperature))
        if ce_weight > 0:
            terms.append(LossTerm("ce", ce_weight))
        if feature_weight > 0 and blocks:
            terms.append(LossTerm(_FEATURE_KIND[feature_loss], feature_weight))
    except ValueError as exc:
        raise ArchgenError(f"wire_distillation: {exc}") from None
    if not terms:
        raise ArchgenError(
            "every distillation loss has weight zero (or the feature loss has no taps): "
            "nothing to train the student on",
            hint="give kd_weight, ce_weight or feature_weight a positive value",
        )
    wired: tuple[Tap, ...] = ()
    if any(t.kind in _FEATURE_KIND.values() for t in terms):
        s_out, t_out = student.block_outputs(), teacher.block_outputs()
        wired = tuple(_tap(student, teacher, b, s_out[b], t_out[b]) for b in blocks)
    pair = DistillGraph(student, teacher, wired, tuple(terms))
    verify_distillation(pair)
    return pair


def _tap_blocks(
    student: Graph, teacher: Graph, taps: Literal["shared-blocks"] | Sequence[str]
) -> list[str]:
    """The tapped blocks, in the order given (student order for shared blocks)."""
    s_blocks, t_blocks = student.blocks(), set(teacher.blocks())
    if isinstance(taps, str):
        if taps != SHARED_BLOCKS:
            raise ArchgenError(
                f"taps must be {SHARED_BLOCKS!r} or a list of block names, got {taps!r}",
                hint=f"e.g. taps=[{', '.join(repr(b) for b in s_blocks[:2])}]",
            )
        return [b for b in s_blocks if b in t_blocks]
    blocks = list(taps)
    for block in blocks:
        for who, graph, known in (
            ("student", student, s_blocks),
            ("teacher", teacher, teacher.blocks()),
        ):
            if block not in known:
                close = difflib.get_close_matches(block, known, n=1)
                raise ArchgenError(
                    f"tap {block!r}: the {who} ({graph.model.name}) has no block {block!r}",
                    hint=f"did you mean {close[0]!r}?" if close else f"its blocks: {known}",
                )
        if blocks.count(block) > 1:
            raise ArchgenError(f"tap {block!r} is listed more than once")
    return blocks


def _tap(student: Graph, teacher: Graph, block: str, s_value: str, t_value: str) -> Tap:
    d_in, d_out = value_width(student, s_value), value_width(teacher, t_value)
    return Tap(block, s_value, t_value, Adapter(d_in, d_out) if d_in != d_out else None)


def verify_distillation(pair: DistillGraph) -> None:
    """Raise :class:`GraphInvalid` listing what breaks the rules of a pair
    (:meth:`DistillGraph.problems`), e.g. for one built by hand."""
    found = pair.problems()
    if found:
        raise GraphInvalid("distillation pair: " + "; ".join(found))


def strip_distillation(pair: DistillGraph) -> Graph:
    """The plain student: wiring never changes it, so this is the graph that was wired."""
    return pair.student


__all__ = [
    "SHARED_BLOCKS",
    "FeatureLoss",
    "strip_distillation",
    "verify_distillation",
    "wire_distillation",
]
