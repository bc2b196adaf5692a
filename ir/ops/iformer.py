"""Node kinds of the Inception Transformer (iFormer, Si et al., NeurIPS 2022), over 2-D grids.

* ``inception``: the inception token mixer. The ``C`` channels split into a high-frequency part
  (the first ``C_h``) and a low-frequency part (the last ``C_l = attention_heads * C / heads``):

  - high, first half ``C_h/2`` channels: ``gelu(dwconv3x3(conv1x1_{C_h/2 -> C_h}(x)))``, no biases;
  - high, second half: ``gelu(conv1x1_{C_h/2 -> C_h}(maxpool3x3,s1(x)))``, with bias;
  - low: ``upsample_p(attention(avgpool_p(x)))``: multi-head attention with ``attention_heads``
    heads of width ``C / heads`` over the ``p x p``-average-pooled grid (qkv projection, no output
    projection), upsampled back by ``p`` (nearest, as the paper; or bilinear);
  - fusion: ``y = concat(high_conv, high_pool, low)`` (``2 C_h + C_l`` channels), then
    ``proj1x1_{-> C}(y + dwconv3x3(y))``; an optional LayerScale multiplies the output.

  Each high branch *doubles* its width (research/mixers.md §11 g). iFormer raises
  ``attention_heads`` with depth (its frequency ramp): a spec gives one value per block.
* ``layerscale_mlp``: the plain two-layer GELU MLP times a learned per-channel LayerScale (iFormer
  uses LayerScale in its last two stages, on both branches of a block).
* ``conv_bn_embed``: iFormer's downsampling: 3x3 stride-2 convolutions with BatchNorm (stride 4:
  the stem, two of them with GELU between, the first to ``C/2``), then a learned absolute
  position embedding of the stage's grid added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from archgen.ir.ops.base import (
    POSITIONWISE,
    Constraint,
    Op,
    Role,
    Trait,
    _expect_arity,
    attr,
    linear_flops,
    linear_params,
    register_op,
)
from archgen.ir.ops.vision import GRID_OP, expect_grid
from archgen.ir.types import TensorType, TypeRuleError

DEFAULT_HEAD_DIM = 32  # iFormer's head width in every stage
KERNEL = 3  # every conv and the max-pool of the mixer are 3x3 (stride 1, padding 1)


@register_op
@dataclass(frozen=True)
class InceptionMixer(Op):
    """iFormer's inception token mixer (see the module docstring for the math)."""

    kind: ClassVar[str] = "inception"
    role: ClassVar[Role] = Role.TOKEN_MIXER
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "height", "width")
    summary: ClassVar[str] = "iFormer inception mixer: max-pool + conv paths, pooled attention"

    d_model: int = attr("model width", ge=1)
    height: int = attr("grid height (from the stage; the pool must divide it)", ge=1)
    width: int = attr("grid width (from the stage; the pool must divide it)", ge=1)
    heads: int | None = attr(
        "heads of the stage: they fix the head width d_model / heads (default: head width 32, "
        "as iFormer)",
        auto=True,
        ge=1,
    )
    attention_heads: int = attr(
        "heads of the low-frequency (attention) path; it takes attention_heads * d_model / heads "
        "channels, the high-frequency paths the rest (iFormer raises it with depth)",
        default=1,
        ge=1,
    )
    pool: int = attr(
        "average-pool factor before the attention, and upsampling after it (1: none)",
        default=2,
        ge=1,
        le=64,
    )
    upsample: Literal["nearest", "bilinear"] = attr(
        "how the attention's output is upsampled back to the grid (iFormer: nearest)",
        default="nearest",
    )
    qkv_bias: bool = attr("bias on the attention's qkv projection", default=True)
    layer_scale: float | None = attr(
        "LayerScale: initial value of a learned per-channel output scale (null: none)",
        default=None,
        gt=0,
    )

    def resolved(self) -> InceptionMixer:
        if self.heads is not None:
            return self
        return replace(self, heads=max(1, self.d_model // DEFAULT_HEAD_DIM))

    # -- channel split -------------------------------------------------------------------------
    @property
    def num_heads(self) -> int:
        heads = self.resolved().heads
        assert heads is not None
        return heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def low_dim(self) -> int:
        """Channels of the low-frequency (attention) path, the last ones of the input."""
        return self.attention_heads * self.head_dim

    @property
    def high_dim(self) -> int:
        """Channels of the high-frequency paths, the first ones; each path takes half."""
        return self.d_model - self.low_dim

    @property
    def fused_dim(self) -> int:
        """Channels of the concatenation: each high path doubles its half, so ``2 C_h + C_l``."""
        return 2 * self.high_dim + self.low_dim

    def extra_problems(self) -> list[Constraint]:
        if self.d_model % self.num_heads:
            return [
                Constraint(
                    "heads", f"the stage width {self.d_model} is not divisible by heads "
                    f"{self.num_heads}",
                )
            ]  # fmt: skip
        found = []
        if self.attention_heads >= self.num_heads:
            found.append(
                Constraint(
                    "attention_heads",
                    f"must be < heads {self.num_heads} (the high-frequency paths need channels), "
                    f"got {self.attention_heads}",
                )
            )
        elif self.high_dim % 2:
            found.append(
                Constraint(
                    "attention_heads",
                    f"leaves {self.high_dim} high-frequency channels, an odd number: the conv and "
                    "max-pool paths take half each",
                )
            )
        if self.height % self.pool or self.width % self.pool:
            found.append(
                Constraint(
                    "pool",
                    f"must divide the stage's {self.height}x{self.width} grid, got {self.pool}",
                )
            )
        return found

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        h, w = expect_grid(self, x, self.d_model)
        if h % self.pool or w % self.pool:
            raise TypeRuleError(f"{self.kind}: grid {h}x{w} is not divisible by pool {self.pool}")
        return x

    # -- cost ----------------------------------------------------------------------------------
    def params(self) -> int:
        high, low, fused, half = self.high_dim, self.low_dim, self.fused_dim, self.high_dim // 2
        conv_path = linear_params(half, high, bias=False) + KERNEL**2 * high
        pool_path = linear_params(half, high, bias=True)
        attention = linear_params(low, 3 * low, bias=self.qkv_bias)
        fusion = KERNEL**2 * fused + linear_params(fused, self.d_model, bias=True)
        scale = self.d_model if self.layer_scale is not None else 0
        return conv_path + pool_path + attention + fusion + scale

    def flops(self, seq_len: int) -> int:
        high, low, fused, half = self.high_dim, self.low_dim, self.fused_dim, self.high_dim // 2
        pooled = seq_len // self.pool**2
        conv_path = linear_flops(half, high, seq_len) + 2 * KERNEL**2 * high * seq_len
        pool_path = KERNEL**2 * half * seq_len + linear_flops(half, high, seq_len)
        gelus = 2 * 8 * high * seq_len  # erf GELU, ~8 FLOPs an element
        attention = (
            (low * seq_len if self.pool > 1 else 0)  # average pool: each input read once
            + linear_flops(low, 3 * low, pooled)
            + 2 * linear_flops(pooled, low, pooled)  # q k^T and attn v, all heads
            + 5 * self.attention_heads * pooled * pooled  # scale, softmax
            + (4 * low * seq_len if self.upsample == "bilinear" else 0)
        )
        fusion = 2 * KERNEL**2 * fused * seq_len + fused * seq_len
        fusion += linear_flops(fused, self.d_model, seq_len)
        scale = self.d_model * seq_len if self.layer_scale is not None else 0
        return conv_path + pool_path + gelus + attention + fusion + scale

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        pooled = seq_len // self.pool**2
        kept = seq_len * (5 * self.high_dim + 3 * self.fused_dim + self.d_model)
        kept += pooled * 4 * self.low_dim + self.attention_heads * pooled * pooled
        return kept * dtype_bytes


@register_op
@dataclass(frozen=True)
class LayerScaleMLP(Op):
    """``scale * down(act(up(x)))``: the two-layer MLP with a learned per-channel LayerScale."""

    kind: ClassVar[str] = "layerscale_mlp"
    role: ClassVar[Role] = Role.CHANNEL_MIXER
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = POSITIONWISE
    summary: ClassVar[str] = "two-layer MLP with LayerScale (iFormer, CaiT)"

    d_model: int = attr("model width", ge=1)
    hidden: int | None = attr("hidden width (default 4 * d_model)", auto=True, ge=1, le=1 << 20)
    layer_scale: float = attr("initial value of the per-channel output scale", default=1e-6, gt=0)

    def resolved(self) -> LayerScaleMLP:
        if self.hidden is not None:
            return self
        return LayerScaleMLP(self.d_model, hidden=4 * self.d_model, layer_scale=self.layer_scale)

    def _hidden(self) -> int:
        h = self.resolved().hidden
        assert h is not None
        return h

    def params(self) -> int:
        h = self._hidden()
        scale = self.d_model
        return linear_params(self.d_model, h, True) + linear_params(h, self.d_model, True) + scale

    def flops(self, seq_len: int) -> int:
        h = self._hidden()
        # the MLP's count (one FLOP an activation) plus the scale
        return 2 * linear_flops(self.d_model, h, seq_len) + seq_len * h + seq_len * self.d_model

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        return seq_len * (2 * self._hidden() + 2 * self.d_model) * dtype_bytes


@register_op
@dataclass(frozen=True)
class ConvBNEmbed(Op):
    """iFormer's downsampling: ``stride 2``: conv3x3/2 + BatchNorm; ``stride 4`` (the stem):
    conv3x3/2 to ``d_model / 2`` + BatchNorm + GELU + conv3x3/2 + BatchNorm. Then, with
    ``position_embedding``, a learned ``[height, width, d_model]`` table is added (the stage's
    grid: weights are tied to the image size)."""

    kind: ClassVar[str] = "conv_bn_embed"
    role: ClassVar[Role] = Role.DOWNSAMPLE
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "in_channels", "height", "width")
    summary: ClassVar[str] = "3x3 stride-2 conv(s) + BatchNorm (+ position embedding), iFormer"

    d_model: int = attr("output width (the stage's width)", ge=1)
    in_channels: int = attr("input width (the image's channels or the previous stage's)", ge=1)
    height: int = attr("output grid height (from the stage)", ge=1)
    width: int = attr("output grid width (from the stage)", ge=1)
    stride: int = attr("2: one conv; 4: the stem, two convs with GELU between", default=2, ge=2)
    position_embedding: bool = attr(
        "add a learned absolute position embedding of the stage's grid", default=True
    )

    def extra_problems(self) -> list[Constraint]:
        if self.stride not in (2, 4):
            return [Constraint("stride", f"must be 2 or 4, got {self.stride}")]
        if self.stride == 4 and self.d_model % 2:
            return [Constraint("stride", f"4 (the stem) needs an even width, got {self.d_model}")]
        return []

    def convs(self) -> list[tuple[int, int]]:
        """``(in, out)`` channels of each 3x3 stride-2 conv, in order."""
        if self.stride == 4:
            return [(self.in_channels, self.d_model // 2), (self.d_model // 2, self.d_model)]
        return [(self.in_channels, self.d_model)]

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        h, w = expect_grid(self, x, self.in_channels)
        if (h, w) != (self.height * self.stride, self.width * self.stride):
            raise TypeRuleError(
                f"{self.kind}: made for a {self.height * self.stride}x{self.width * self.stride} "
                f"grid (its position embedding), got {h}x{w}"
            )
        return TensorType((x.shape[0], self.height, self.width, self.d_model), x.dtype)

    def params(self) -> int:
        convs = sum(KERNEL**2 * c_in * c_out + c_out + 2 * c_out for c_in, c_out in self.convs())
        table = self.height * self.width * self.d_model if self.position_embedding else 0
        return convs + table

    def flops(self, seq_len: int) -> int:
        total, tokens = 0, seq_len
        for c_in, c_out in self.convs():
            tokens //= 4
            total += linear_flops(KERNEL**2 * c_in, c_out, tokens) + 2 * c_out * tokens
        if self.stride == 4:
            total += 8 * tokens * 4 * (self.d_model // 2)  # the GELU, on the first conv's grid
        return total + (tokens * self.d_model if self.position_embedding else 0)

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        # each conv's output and its norm's; the stem also keeps its GELU's output on the
        # intermediate grid (4x the tokens, half the width); then the sum with the table
        out_tokens = seq_len // self.stride**2
        kept = sum(2 * out_tokens * self.stride**2 // 4**i * c for i, (_, c) in
                   enumerate(self.convs(), start=1))  # fmt: skip
        if self.stride == 4:
            kept += 4 * out_tokens * (self.d_model // 2)
        return (kept + out_tokens * self.d_model) * dtype_bytes
