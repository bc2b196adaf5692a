"""Graph passes. The default pipeline reads top to bottom::

verify -> infer_shapes -> annotate_cost
"""

from __future__ import annotations

from archgen.passes.annotate_cost import AnnotateCost
from archgen.passes.base import Pass, PassError, PassResult, run_pipeline
from archgen.passes.infer_shapes import InferShapes
from archgen.passes.verify import Verify

PASS_REGISTRY: dict[str, type[Pass]] = {p.name: p for p in (Verify, InferShapes, AnnotateCost)}


def default_pipeline(seq_len: int | None = None) -> list[Pass]:
    return [Verify(), InferShapes(), AnnotateCost(seq_len=seq_len)]


__all__ = [
    "PASS_REGISTRY",
    "AnnotateCost",
    "InferShapes",
    "Pass",
    "PassError",
    "PassResult",
    "Verify",
    "default_pipeline",
    "run_pipeline",
]
