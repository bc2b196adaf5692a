"""State-space token mixers: Mamba-1 (S6 selective scan) and Mamba-2 (SSD).

Parameter counts follow mamba-ssm's modules exactly (same names and shapes in
``archgen.mixers``), so checkpoints of those modules load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from archgen.ir.ops.base import (
    Constraint,
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
class Mamba(Op):
    kind: ClassVar[str] = "mamba"
    role: ClassVar[Role] = Role.TOKEN_MIXER
    arity: ClassVar[int] = 1
    # decode state: fixed-size conv window + SSM state
    traits: ClassVar[frozenset[Trait]] = frozenset(
        {Trait.CAUSAL, Trait.DECODABLE, Trait.DECODE_EXPORTABLE}
    )
    summary: ClassVar[str] = "Mamba-1 selective state-space mixer (S6)"

    d_model: int = attr("model width", ge=1)
    d_state: int = attr("SSM state size N", default=16, ge=1, le=1024)
    d_conv: int = attr("causal depthwise conv kernel", default=4, ge=1, le=64)
    expand: int = attr("inner width = expand * d_model", default=2, ge=1, le=16)
    dt_rank: int | None = attr(
        "rank of the dt projection (default ceil(d_model/16))", auto=True, ge=1
    )
    conv_bias: bool = attr("bias on the conv", default=True)
    bias: bool = attr("biases on in_proj/out_proj", default=False)

    def resolved(self) -> Mamba:
        return self if self.dt_rank else replace(self, dt_rank=ceil_div(self.d_model, 16))

    def _inner(self) -> tuple[int, int, int]:
        r = self.resolved()
        assert r.dt_rank is not None
        return self.expand * self.d_model, self.d_state, r.dt_rank

    def params(self) -> int:
        di, n, rank = self._inner()
        return (
            linear_params(self.d_model, 2 * di, self.bias)
            + di * self.d_conv
            + (di if self.conv_bias else 0)
            + linear_params(di, rank + 2 * n, False)
            + linear_params(rank, di, True)
            + di * n  # A_log
            + di  # D
            + linear_params(di, self.d_model, self.bias)
        )

    def flops(self, seq_len: int) -> int:
        di, n, rank = self._inner()
        proj = (
            linear_flops(self.d_model, 2 * di, seq_len)
            + linear_flops(di, rank + 2 * n, seq_len)
            + linear_flops(rank, di, seq_len)
            + linear_flops(di, self.d_model, seq_len)
        )
        conv = 2 * di * self.d_conv * seq_len
        scan = 9 * di * n * seq_len  # decay exp, update (mul-add), readout (mul-add), dt*x*B
        return proj + conv + scan + 8 * di * seq_len

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        di, n, rank = self._inner()
        return seq_len * (6 * di + rank + 2 * n + self.d_model) * dtype_bytes

    def state_bytes(self, context_len: int, dtype_bytes: int = 4) -> int:
        di, n, _ = self._inner()
        return di * (n + self.d_conv - 1) * dtype_bytes


@register_op
@dataclass(frozen=True)
class Mamba2(Op):
    kind: ClassVar[str] = "mamba2"
    role: ClassVar[Role] = Role.TOKEN_MIXER
    arity: ClassVar[int] = 1
    # decode state: fixed-size conv window + SSM state
    traits: ClassVar[frozenset[Trait]] = frozenset(
        {Trait.CAUSAL, Trait.DECODABLE, Trait.DECODE_EXPORTABLE}
    )
    summary: ClassVar[str] = "Mamba-2 state-space duality mixer (SSD)"

    d_model: int = attr("model width", ge=1)
    d_state: int = attr("SSM state size N", default=64, ge=1, le=1024)
    d_conv: int = attr("causal depthwise conv kernel", default=4, ge=1, le=64)
    expand: int = attr("inner width = expand * d_model", default=2, ge=1, le=16)
    head_dim: int = attr("channels per SSM head P", default=64, ge=1)
    ngroups: int = attr("groups sharing B and C", default=1, ge=1)
    chunk_size: int = attr("SSD chunk length (speed only, not math)", default=64, ge=1, le=4096)
    conv_bias: bool = attr("bias on the conv", default=True)
    bias: bool = attr("biases on in_proj/out_proj", default=False)

    def extra_problems(self) -> list[Constraint]:
        di = self.expand * self.d_model
        found = []
        if di % self.head_dim:
            found.append(
                Constraint(
                    "head_dim",
                    f"inner width {di} (expand*d_model) is not divisible by {self.head_dim}",
                )
            )
        elif (di // self.head_dim) % self.ngroups:
            found.append(
                Constraint(
                    "ngroups", f"{di // self.head_dim} heads not divisible by {self.ngroups}"
                )
            )
        return found

    def _dims(self) -> tuple[int, int, int, int]:
        di = self.expand * self.d_model
        return di, self.d_state, max(1, di // self.head_dim), self.ngroups

    def params(self) -> int:
        di, n, h, g = self._dims()
        conv_dim = di + 2 * g * n
        return (
            linear_params(self.d_model, 2 * di + 2 * g * n + h, self.bias)
            + conv_dim * self.d_conv
            + (conv_dim if self.conv_bias else 0)
            + 3 * h  # dt_bias, A_log, D
            + di  # gated RMSNorm weight
            + linear_params(di, self.d_model, self.bias)
        )

    def flops(self, seq_len: int) -> int:
        di, n, h, g = self._dims()
        q = min(self.chunk_size, seq_len)
        proj = linear_flops(self.d_model, 2 * di + 2 * g * n + h, seq_len) + linear_flops(
            di, self.d_model, seq_len
        )
        conv = 2 * (di + 2 * g * n) * self.d_conv * seq_len
        # SSD: intra-chunk C.B^T and masked (.)x (quadratic in the chunk), chunk states, readout.
        intra = seq_len * q * (2 * g * n + 2 * di)
        states = 2 * 2 * seq_len * di * n
        return proj + conv + intra + states + 10 * di * seq_len

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        di, n, h, g = self._dims()
        q = min(self.chunk_size, seq_len)
        return seq_len * (5 * di + 4 * g * n + h * q + self.d_model) * dtype_bytes

    def state_bytes(self, context_len: int, dtype_bytes: int = 4) -> int:
        di, n, _, g = self._dims()
        return (di * n + (di + 2 * g * n) * (self.d_conv - 1)) * dtype_bytes
