"""Normalisation layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from archgen.ir.ops.base import POSITIONWISE, Op, Role, Trait, attr, register_op


@register_op
@dataclass(frozen=True)
class RMSNorm(Op):
    kind: ClassVar[str] = "rmsnorm"
    role: ClassVar[Role] = Role.NORM
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = POSITIONWISE
    summary: ClassVar[str] = "root-mean-square norm with a learned scale"

    d_model: int = attr("model width", ge=1)
    eps: float = attr("added to the mean square", default=1e-5, gt=0)

    def params(self) -> int:
        return self.d_model

    def flops(self, seq_len: int) -> int:
        return 4 * seq_len * self.d_model


@register_op
@dataclass(frozen=True)
class LayerNorm(Op):
    kind: ClassVar[str] = "layernorm"
    role: ClassVar[Role] = Role.NORM
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = POSITIONWISE
    summary: ClassVar[str] = "layer norm with learned scale and bias"

    d_model: int = attr("model width", ge=1)
    eps: float = attr("added to the variance", default=1e-5, gt=0)

    def params(self) -> int:
        return 2 * self.d_model

    def flops(self, seq_len: int) -> int:
        return 7 * seq_len * self.d_model
