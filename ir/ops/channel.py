"""Channel mixers: position-wise MLPs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from archgen.ir.ops.base import (
    POSITIONWISE,
    Op,
    Role,
    Trait,
    attr,
    ceil_div,
    linear_flops,
    linear_params,
    register_op,
)


@register_op
@dataclass(frozen=True)
class MLP(Op):
    """``down(act(up(x)))``."""

    kind: ClassVar[str] = "mlp"
    role: ClassVar[Role] = Role.CHANNEL_MIXER
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = POSITIONWISE
    summary: ClassVar[str] = "two-layer MLP"

    d_model: int = attr("model width", ge=1)
    hidden: int | None = attr("hidden width (default 4 * d_model)", auto=True, ge=1, le=1 << 20)
    activation: Literal["gelu", "silu", "relu"] = attr("activation", default="gelu")
    bias: bool = attr("biases on both projections", default=True)

    def resolved(self) -> MLP:
        return self if self.hidden is not None else replace(self, hidden=4 * self.d_model)

    def params(self) -> int:
        h = self.resolved().hidden
        assert h is not None
        return linear_params(self.d_model, h, self.bias) + linear_params(h, self.d_model, self.bias)

    def flops(self, seq_len: int) -> int:
        h = self.resolved().hidden
        assert h is not None
        return 2 * linear_flops(self.d_model, h, seq_len) + seq_len * h

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        h = self.resolved().hidden
        assert h is not None
        return seq_len * (2 * h + self.d_model) * dtype_bytes


def swiglu_default_hidden(d_model: int) -> int:
    """Llama's rule: 2/3 of 4*d_model (same parameters as a 4x MLP), rounded up to 64."""
    return 64 * ceil_div(8 * d_model, 3 * 64)


@register_op
@dataclass(frozen=True)
class SwiGLU(Op):
    """``down(silu(gate(x)) * up(x))`` (Shazeer 2020), names as in Llama."""

    kind: ClassVar[str] = "swiglu"
    role: ClassVar[Role] = Role.CHANNEL_MIXER
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = POSITIONWISE
    summary: ClassVar[str] = "gated MLP with SiLU gate"

    d_model: int = attr("model width", ge=1)
    hidden: int | None = attr(
        "hidden width (default 8/3 * d_model rounded up to 64)", auto=True, ge=1, le=1 << 20
    )
    bias: bool = attr("biases on the projections", default=False)

    def resolved(self) -> SwiGLU:
        if self.hidden is not None:
            return self
        return replace(self, hidden=swiglu_default_hidden(self.d_model))

    def params(self) -> int:
        h = self.resolved().hidden
        assert h is not None
        return 2 * linear_params(self.d_model, h, self.bias) + linear_params(
            h, self.d_model, self.bias
        )

    def flops(self, seq_len: int) -> int:
        h = self.resolved().hidden
        assert h is not None
        return 3 * linear_flops(self.d_model, h, seq_len) + 5 * seq_len * h

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        h = self.resolved().hidden
        assert h is not None
        return seq_len * (3 * h + self.d_model) * dtype_bytes
