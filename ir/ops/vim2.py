"""MambaMixer's vision model ViM2 (Behrouz, Santacatterina & Zabih, arXiv 2403.19888 v1;
research/mixers.md §8): the selective token mixer over a 2-D grid, the selective channel mixer,
and the weighted averaging of a stage's earlier outputs (a multi-input weighted-sum node).

The paper's code is unpublished (its repository holds a README only); these follow the v1 text.
Where a choice was needed it is said in the op's docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from archgen.ir.ops.base import (
    POSITIONWISE,
    Constraint,
    Op,
    Role,
    Trait,
    _expect_arity,
    attr,
    ceil_div,
    linear_flops,
    linear_params,
    register_op,
)
from archgen.ir.ops.ssm import Mamba
from archgen.ir.ops.vision import GRID_OP, expect_grid
from archgen.ir.types import TensorType, TypeRuleError

# VMamba's cross-scan (CrossScan in vmamba.py): scan k reads the grid in this order
CROSS_SCAN_ORDERS: tuple[str, ...] = (
    "row-major (top-left -> bottom-right, row by row)",
    "column-major (top-left -> bottom-right, column by column)",
    "row-major reversed (bottom-right -> top-left)",
    "column-major reversed (bottom-right -> top-left)",
)


@register_op
@dataclass(frozen=True)
class SelectiveTokenMixer(Op):
    """ViM2's selective token mixer: Mamba's S6 over the 4 cross-scan orders of a 2-D grid::

        [x, z] = in_proj(u)                      D -> 2 Di  (Di = expand * D; ViM2: D -> 2D)
        x = SiLU(depthwise kxk conv(x))          on the [H, W] grid (2-D layout kept)
        y = sum_k unscan_k(S6_k(scan_k(x)))      k = 0..3, one S6 parameter set per scan
        out = out_proj(y * SiLU(z))

    The scans are VMamba's cross-scan orders (:data:`CROSS_SCAN_ORDERS`): row-major,
    column-major, and the reverse of each; each S6 is Mamba-1's (``x_proj``, ``dt_proj``,
    ``A_log``, ``D``) and its output is put back at the grid position it was read from. Not
    causal (every output reads the whole grid). Differences from VMamba's SS2D: no LayerNorm
    before the gate (ViM2's table lists Linear, DWConv, S6, Linear) and ``expand = 1``."""

    kind: ClassVar[str] = "selective_token"
    role: ClassVar[Role] = Role.TOKEN_MIXER
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    summary: ClassVar[str] = "ViM2 selective token mixer: S6 over the 4 cross-scan orders"
    scans: ClassVar[int] = len(CROSS_SCAN_ORDERS)

    d_model: int = attr("model width", ge=1)
    d_state: int = attr("SSM state size N", default=16, ge=1, le=1024)
    expand: int = attr("inner width = expand * d_model (ViM2: 1)", default=1, ge=1, le=16)
    dt_rank: int | None = attr(
        "rank of the dt projection (default ceil(d_model/16))", auto=True, ge=1
    )
    kernel: int = attr("depthwise conv kernel (odd)", default=3, ge=1, le=31)

    def resolved(self) -> SelectiveTokenMixer:
        return self if self.dt_rank else replace(self, dt_rank=ceil_div(self.d_model, 16))

    def extra_problems(self) -> list[Constraint]:
        if self.kernel % 2 == 0:
            return [Constraint("kernel", f"must be odd (same-size output), got {self.kernel}")]
        return []

    def _inner(self) -> tuple[int, int, int]:
        rank = self.resolved().dt_rank
        assert rank is not None
        return self.expand * self.d_model, self.d_state, rank

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        expect_grid(self, x, self.d_model)
        return x

    def params(self) -> int:
        di, n, rank = self._inner()
        per_scan = (  # x_proj, dt_proj (with bias), A_log, D
            linear_params(di, rank + 2 * n, False) + linear_params(rank, di, True) + di * n + di
        )
        return (
            linear_params(self.d_model, 2 * di, False)
            + di * self.kernel**2
            + di  # the conv's bias
            + self.scans * per_scan
            + linear_params(di, self.d_model, False)
        )

    def flops(self, seq_len: int) -> int:
        di, n, rank = self._inner()
        per_scan = (
            linear_flops(di, rank + 2 * n, seq_len)
            + linear_flops(rank, di, seq_len)
            + 9 * di * n * seq_len  # decay exp, update, readout, dt*x*B (as Mamba's count)
            + 3 * di * seq_len  # softplus, D skip, the sum of the scans
        )
        return (
            linear_flops(self.d_model, 2 * di, seq_len)
            + 2 * self.kernel**2 * di * seq_len
            + 4 * di * seq_len  # the conv's SiLU
            + self.scans * per_scan
            + 5 * di * seq_len  # gate: SiLU(z) and the product
            + linear_flops(di, self.d_model, seq_len)
        )

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        di, n, rank = self._inner()
        per_scan = 3 * di + rank + 2 * n
        return seq_len * (3 * di + self.scans * per_scan + self.d_model) * dtype_bytes


@register_op
@dataclass(frozen=True)
class SelectiveChannelMixer(Op):
    """MambaMixer's selective channel mixer on a fixed ``height x width`` grid, written as the
    paper writes it: a bidirectional Mamba block run on the transposed tokens ``x^T [B, D, L]``
    (the sequence is the D channels, each step's features are the L = H*W tokens)::

        y^T = Mamba_bidirectional(x^T)           d_model = L, a scan over channels both ways

    i.e. ``[u, z] = in_proj(x^T)`` (L -> 2 expand L), per direction a causal conv (``d_conv``)
    along the channel axis, SiLU and S6 with its own parameters (the backward one on the
    channel-flipped sequence, flipped back), ``(y_f + y_b) * SiLU(z)``, ``out_proj`` back to L.
    This is ``mamba`` with ``causal: false`` (``archgen.mixers.mamba``), parameters and all.

    Where it may differ from the paper: the projections act on the token axis, so their width is
    L and the weights are tied to the stage's grid (a fixed image size, as raft and spectrum);
    at 224x224 the first stage has L = 3136 and this block alone holds 32.3M parameters, far
    above ViM2-T's reported 20M in total, so the paper's image model must shrink this somehow
    (its v1 appendix lists "CW-Linear 192/384/768" without saying how; research/mixers.md §8g)."""

    kind: ClassVar[str] = "selective_channel"
    role: ClassVar[Role] = Role.CHANNEL_MIXER
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "height", "width")
    summary: ClassVar[str] = "MambaMixer selective channel mixer: bidirectional S6 over channels"

    d_model: int = attr("model width (the scanned sequence's length)", ge=1)
    height: int = attr("grid height (from the stage)", ge=1)
    width: int = attr("grid width (from the stage)", ge=1)
    d_state: int = attr("SSM state size N", default=16, ge=1, le=1024)
    d_conv: int = attr("conv kernel along the channel axis", default=4, ge=1, le=64)
    expand: int = attr("inner width = expand * tokens", default=1, ge=1, le=16)
    dt_rank: int | None = attr(
        "rank of the dt projection (default ceil(tokens/16))", auto=True, ge=1
    )

    @property
    def tokens(self) -> int:
        """L = H * W: the width of the projections."""
        return self.height * self.width

    def inner_mamba(self) -> Mamba:
        """The bidirectional Mamba block over ``x^T`` this mixer is."""
        return Mamba(
            d_model=self.tokens,
            d_state=self.d_state,
            d_conv=self.d_conv,
            expand=self.expand,
            dt_rank=self.dt_rank,
            causal=False,
        ).resolved()

    def resolved(self) -> SelectiveChannelMixer:
        return self if self.dt_rank else replace(self, dt_rank=ceil_div(self.tokens, 16))

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        h, w = expect_grid(self, x, self.d_model)
        if (h, w) != (self.height, self.width):
            raise TypeRuleError(
                f"selective_channel: weights are for a {self.height}x{self.width} grid, got {h}x{w}"
            )
        return x

    def params(self) -> int:
        return self.inner_mamba().params()

    def flops(self, seq_len: int) -> int:
        # the inner block over its sequence of D channels (seq_len = H*W is its width)
        return self.inner_mamba().flops(self.d_model)

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        return self.inner_mamba().activation_bytes(self.d_model, dtype_bytes)


@register_op
@dataclass(frozen=True)
class WeightedSum(Op):
    """``sum_i w_i x_i`` over ``inputs`` values of one shape, with a learned scalar ``w_i`` per
    input: DenseFormer's depth-weighted average, MambaMixer's weighted averaging of a stage's
    earlier outputs (``y^(0)`` = the stage input, then every residual layer's output).
    Initialised to ``w = (0, ..., 0, 1)``: the newest input alone, a plain residual chain.

    Variadic: ``arity`` is the fewest operands; a node takes :meth:`operand_count` of them."""

    kind: ClassVar[str] = "weighted_sum"
    role: ClassVar[Role] = Role.RESIDUAL
    arity: ClassVar[int] = 2
    traits: ClassVar[frozenset[Trait]] = POSITIONWISE
    summary: ClassVar[str] = "learned weighted sum of earlier outputs (DenseFormer / MambaMixer)"

    d_model: int = attr("model width", ge=1)
    inputs: int = attr("values summed (the operands)", default=2, ge=2, le=4096)

    def operand_count(self) -> int:
        return self.inputs

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        values = _expect_arity(self, inputs)
        first = values[0]
        if first.shape[-1] != self.d_model:
            raise TypeRuleError(f"weighted_sum: expected last dim {self.d_model}, got {first}")
        for v in values[1:]:
            if v.shape != first.shape:
                raise TypeRuleError(f"weighted_sum: shapes differ: {first} vs {v}")
        return first

    def params(self) -> int:
        return self.inputs

    def flops(self, seq_len: int) -> int:
        return 2 * self.inputs * seq_len * self.d_model

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        # backward needs every input for the weights' gradients: they stay alive (mixers.md §8g)
        return seq_len * self.d_model * dtype_bytes
