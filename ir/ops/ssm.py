"""State-space token mixers: Mamba-1 (S6 selective scan) and Mamba-2 (SSD).

Parameter counts follow mamba-ssm's modules exactly (same names and shapes in
``archgen.mixers``), so checkpoints of those modules load unchanged.

Both are causal in a causal-lm and bidirectional in a masked-diffusion-lm: ``causal`` is a
context field set from the task (as attention's), so causal specs, printed graphs and hashes
are as they were. The bidirectional form (Vision Mamba / MambaMixer, research/mixers.md §8) adds
a second scan over the flipped sequence with its own conv and SSM parameters (``*_b``); the
in/out projections (and Mamba-2's gated norm) are shared. It has no decode step.
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

# traits a bidirectional (causal=False) SSM lacks: every output depends on every token
_CAUSAL_DOC = "causal scan (from the task: false in a masked-diffusion-lm adds a flipped scan)"


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
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "causal")

    d_model: int = attr("model width", ge=1)
    d_state: int = attr("SSM state size N", default=16, ge=1, le=1024)
    d_conv: int = attr("causal depthwise conv kernel", default=4, ge=1, le=64)
    expand: int = attr("inner width = expand * d_model", default=2, ge=1, le=16)
    dt_rank: int | None = attr(
        "rank of the dt projection (default ceil(d_model/16))", auto=True, ge=1
    )
    conv_bias: bool = attr("bias on the conv", default=True)
    bias: bool = attr("biases on in_proj/out_proj", default=False)
    causal: bool = attr(_CAUSAL_DOC, default=True)

    @property
    def directions(self) -> int:
        """Scans per call: 1 (causal) or 2 (forward + flipped)."""
        return 1 if self.causal else 2

    def resolved(self) -> Mamba:
        return self if self.dt_rank else replace(self, dt_rank=ceil_div(self.d_model, 16))

    def _inner(self) -> tuple[int, int, int]:
        r = self.resolved()
        assert r.dt_rank is not None
        return self.expand * self.d_model, self.d_state, r.dt_rank

    def params(self) -> int:
        di, n, rank = self._inner()
        per_direction = (  # conv1d, x_proj, dt_proj, A_log, D (each again as *_b if bidirectional)
            di * self.d_conv
            + (di if self.conv_bias else 0)
            + linear_params(di, rank + 2 * n, False)
            + linear_params(rank, di, True)
            + di * n  # A_log
            + di  # D
        )
        return (
            linear_params(self.d_model, 2 * di, self.bias)
            + self.directions * per_direction
            + linear_params(di, self.d_model, self.bias)
        )

    def flops(self, seq_len: int) -> int:
        di, n, rank = self._inner()
        shared = linear_flops(self.d_model, 2 * di, seq_len) + linear_flops(
            di, self.d_model, seq_len
        )
        per_direction = (
            linear_flops(di, rank + 2 * n, seq_len)
            + linear_flops(rank, di, seq_len)
            + 2 * di * self.d_conv * seq_len  # conv
            + 9 * di * n * seq_len  # scan: decay exp, update (mul-add), readout (mul-add), dt*x*B
            + 5 * di * seq_len  # conv SiLU, softplus, D skip
        )
        # gate and, when bidirectional, the sum of the two directions
        return shared + self.directions * per_direction + (2 + self.directions) * di * seq_len

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        di, n, rank = self._inner()
        per_direction = 4 * di + rank + 2 * n
        return seq_len * (2 * di + self.directions * per_direction + self.d_model) * dtype_bytes

    def state_bytes(self, context_len: int, dtype_bytes: int = 4) -> int:
        if not self.causal:  # no decode step, no state
            return 0
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
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "causal")

    d_model: int = attr("model width", ge=1)
    d_state: int = attr("SSM state size N", default=64, ge=1, le=1024)
    d_conv: int = attr("causal depthwise conv kernel", default=4, ge=1, le=64)
    expand: int = attr("inner width = expand * d_model", default=2, ge=1, le=16)
    head_dim: int = attr("channels per SSM head P", default=64, ge=1)
    ngroups: int = attr("groups sharing B and C", default=1, ge=1)
    chunk_size: int = attr("SSD chunk length (speed only, not math)", default=64, ge=1, le=4096)
    conv_bias: bool = attr("bias on the conv", default=True)
    bias: bool = attr("biases on in_proj/out_proj", default=False)
    causal: bool = attr(_CAUSAL_DOC, default=True)

    @property
    def directions(self) -> int:
        """Scans per call: 1 (causal) or 2 (forward + flipped)."""
        return 1 if self.causal else 2

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
        per_direction = (  # conv1d, dt_bias, A_log, D (each again as *_b if bidirectional)
            conv_dim * self.d_conv + (conv_dim if self.conv_bias else 0) + 3 * h
        )
        return (
            linear_params(self.d_model, 2 * di + 2 * g * n + h, self.bias)
            + self.directions * per_direction
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
        # 10 elementwise passes (skip, gate, norm); a bidirectional call adds the sum
        tail = (10 + (self.directions - 1)) * di * seq_len
        return proj + self.directions * (conv + intra + states) + tail

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        di, n, h, g = self._dims()
        q = min(self.chunk_size, seq_len)
        per_direction = 3 * di + 4 * g * n + h * q
        return seq_len * (2 * di + self.directions * per_direction + self.d_model) * dtype_bytes

    def state_bytes(self, context_len: int, dtype_bytes: int = 4) -> int:
        if not self.causal:  # no decode step, no state
            return 0
        di, n, _, g = self._dims()
        return (di * n + (di + 2 * g * n) * (self.d_conv - 1)) * dtype_bytes
