"""Graph passes, each registered by name (``archgen passes`` lists them).

Analyses: ``verify -> infer_shapes -> annotate_cost`` (the default pipeline). Rewrites:
``compress_segments`` (SCOUT), ``replace_mixer``, ``fuse_kernels`` (exact kernel fusion). A user
pipeline runs between the analyses
(:func:`~archgen.passes.pipeline.full_pipeline`). Pairing a student with a teacher takes two
graphs: :func:`wire_distillation` / :func:`strip_distillation` are functions, not passes.
"""

from __future__ import annotations

from archgen.passes.annotate_cost import AnnotateCost
from archgen.passes.base import PASS_REGISTRY, Pass, PassError, PassResult, run_pipeline
from archgen.passes.compress_segments import CompressSegments
from archgen.passes.distillation import strip_distillation, wire_distillation
from archgen.passes.fuse_kernels import FuseKernels, unfuse
from archgen.passes.infer_shapes import InferShapes
from archgen.passes.pipeline import PassOptionError, full_pipeline, parse_pipeline
from archgen.passes.replace_mixer import ReplaceMixer, replace_mixers
from archgen.passes.verify import Verify


def default_pipeline(seq_len: int | None = None) -> list[Pass]:
    return [Verify(), InferShapes(), AnnotateCost(seq_len=seq_len)]


__all__ = [
    "PASS_REGISTRY",
    "AnnotateCost",
    "CompressSegments",
    "FuseKernels",
    "InferShapes",
    "Pass",
    "PassError",
    "PassOptionError",
    "PassResult",
    "ReplaceMixer",
    "Verify",
    "default_pipeline",
    "full_pipeline",
    "parse_pipeline",
    "replace_mixers",
    "run_pipeline",
    "strip_distillation",
    "unfuse",
    "wire_distillation",
]
