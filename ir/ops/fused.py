"""Fused node kinds: made only by the ``fuse_kernels`` pass, never written in a spec.

A fused kind computes exactly what the nodes it replaces computed (the pass is exact) and keeps
their parameters under the same checkpoint names, so a checkpoint loads before and after fusion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from archgen.ir.ops.base import (
    POSITIONWISE,
    Constraint,
    Op,
    Role,
    Trait,
    _expect_arity,
    attr,
    register_op,
)
from archgen.ir.types import TensorType, TypeRuleError


@register_op
@dataclass(frozen=True)
class AddNorm(Op):
    """``s = stream + branch; n = norm(s)`` -> ``(s, n)``: a residual add and the norm that
    reads its sum, in one pass over the activations (the fused "skip layer norm" of
    onnxruntime, TensorRT-LLM and Apex). Its parameters are the norm's (``weight``, and
    ``bias`` for a layer norm)."""

    kind: ClassVar[str] = "add_norm"
    role: ClassVar[Role] = Role.RESIDUAL
    arity: ClassVar[int] = 2  # (stream, branch), as residual_add
    num_outputs: ClassVar[int] = 2  # (new stream, normalised stream)
    traits: ClassVar[frozenset[Trait]] = POSITIONWISE
    summary: ClassVar[str] = "residual add fused with the norm after it (two outputs)"

    d_model: int = attr("model width", ge=1)
    norm: Literal["rmsnorm", "layernorm"] = attr(
        "the fused norm: rmsnorm or layernorm", default="rmsnorm"
    )
    eps: float = attr("the norm's eps", default=1e-5, gt=0)

    def extra_problems(self) -> list[Constraint]:
        if self.norm not in ("rmsnorm", "layernorm"):
            return [Constraint("norm", f"must be rmsnorm or layernorm, got {self.norm!r}")]
        return []

    def infer_outputs(self, inputs: Sequence[TensorType]) -> tuple[TensorType, ...]:
        stream, branch = _expect_arity(self, inputs)
        if stream.shape != branch.shape:
            raise TypeRuleError(f"add_norm: shapes differ: {stream} vs {branch}")
        if stream.shape[-1] != self.d_model:
            raise TypeRuleError(f"add_norm: expected last dim {self.d_model}, got {stream}")
        return stream, stream

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        return self.infer_outputs(inputs)[0]

    def params(self) -> int:
        return self.d_model if self.norm == "rmsnorm" else 2 * self.d_model

    def flops(self, seq_len: int) -> int:
        # the add, then the norm's own count (norms.py: 4 per element rmsnorm, 7 layernorm)
        return seq_len * self.d_model * (1 + (4 if self.norm == "rmsnorm" else 7))

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        return 2 * seq_len * self.d_model * dtype_bytes  # both outputs
