"""The ends and joints of the official EfficientViM network (mlvlab/EfficientViM @ 304340c,
models/EfficientViM.py and models/utils.py; research/mixers.md §4):

* ``conv_stem``: ``log2(stride)`` 3x3 stride-2 convs (padding 1, no bias) + BatchNorm, ReLU between,
  widths ``d / 2^(convs-1), ..., d / 2, d`` (the official stem: four, stride 16).
* ``evim_merge``: EfficientViM's patch merging between stages: ``x + dwconv_bn(x)``; then
  ``1x1 -> ratio * d_out`` (BN, ReLU), depthwise 3x3 stride 2 (BN, ReLU), squeeze-excite 0.25,
  ``1x1 -> d_out`` (BN); then ``y + dwconv_bn(y)``.
* ``msf_head``: the multi-stage hidden-state fusion classifier: one input per stage's hidden
  state ``h_i [B, N_i, D_i]`` and the final normed grid; logits
  ``sum_i softmax(w)_i head_i(mean_N LN(h_i)) + softmax(w)_last head_last(GAP(x))``.

Both downsamplers pad like the official convs, so an odd grid rounds up (7x7 -> 4x4 at
224^2), and ``rounds_up`` tells the spec's stage-grid rule so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from archgen.ir.ops.base import (
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
from archgen.ir.ops.vision import GRID_OP, expect_grid
from archgen.ir.types import TensorType, TypeRuleError


def se_reduced(channels: int, ratio: float = 0.25, divisor: int = 8) -> int:
    """timm's ``SqueezeExcite(channels, ratio)`` hidden width: ``make_divisible(channels *
    ratio, 8, round_limit=0)`` = the nearest multiple of 8, at least 8."""
    return max(divisor, int(channels * ratio + divisor / 2) // divisor * divisor)


@register_op
@dataclass(frozen=True)
class ConvStem(Op):
    """``log2(stride)`` 3x3 stride-2 conv + BatchNorm layers (ReLU after all but the last)."""

    kind: ClassVar[str] = "conv_stem"
    role: ClassVar[Role] = Role.DOWNSAMPLE
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "in_channels")
    summary: ClassVar[str] = "stack of 3x3 stride-2 conv + BN layers (EfficientViM's stem)"
    rounds_up: ClassVar[bool] = True  # padding 1: an odd side n becomes (n + 1) / 2

    d_model: int = attr("output width (the stage's width)", ge=1)
    in_channels: int = attr("input width (the image's channels)", ge=1)
    stride: int = attr("downsampling (a power of 2: one stride-2 conv per factor 2)", default=16,
                       ge=2, le=64)  # fmt: skip
    bn_eps: float = attr("epsilon of the BatchNorms", default=1e-5, gt=0)

    @property
    def convs(self) -> int:
        return self.stride.bit_length() - 1

    def extra_problems(self) -> list[Constraint]:
        if self.stride & (self.stride - 1):
            return [Constraint("stride", f"must be a power of 2, got {self.stride}")]
        return []

    def widths(self) -> list[int]:
        """Output width of each conv: ``d >> (convs - 1 - i)`` (official ``dim // 8``, ...)."""
        return [max(1, self.d_model >> (self.convs - 1 - i)) for i in range(self.convs)]

    def out_size(self, n: int) -> int:
        for _ in range(self.convs):
            n = ceil_div(n, 2)
        return n

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        h, w = expect_grid(self, x, self.in_channels)
        return TensorType((x.shape[0], self.out_size(h), self.out_size(w), self.d_model), x.dtype)

    def params(self) -> int:
        total, c_in = 0, self.in_channels
        for c in self.widths():
            total += 9 * c_in * c + 2 * c
            c_in = c
        return total

    def flops(self, seq_len: int) -> int:
        total, c_in, tokens = 0, self.in_channels, seq_len
        for c in self.widths():
            tokens = ceil_div(tokens, 4)
            total += linear_flops(9 * c_in, c, tokens) + 2 * tokens * c  # folded BN, ReLU
            c_in = c
        return total

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        total, tokens = 0, seq_len
        for c in self.widths():
            tokens = ceil_div(tokens, 4)
            total += 3 * tokens * c
        return total * dtype_bytes


@register_op
@dataclass(frozen=True)
class EfficientViMMerge(Op):
    """EfficientViM's patch merging (see the module docstring), ``[B, H, W, C_in] ->
    [B, ceil(H/2), ceil(W/2), d_model]``."""

    kind: ClassVar[str] = "evim_merge"
    role: ClassVar[Role] = Role.DOWNSAMPLE
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "in_channels")
    summary: ClassVar[str] = "EfficientViM patch merging (1x1, DW3x3 s2, SE, 1x1; DW residuals)"
    rounds_up: ClassVar[bool] = True
    stride: ClassVar[int] = 2

    d_model: int = attr("output width (the stage's width)", ge=1)
    in_channels: int = attr("input width (the previous stage's width)", ge=1)
    ratio: float = attr("hidden width, times d_model", default=4.0, gt=0, le=16)
    se_ratio: float = attr("squeeze-excite width, times the hidden width", default=0.25, gt=0)
    bn_eps: float = attr("epsilon of the BatchNorms", default=1e-5, gt=0)

    @property
    def hidden(self) -> int:
        return int(self.d_model * self.ratio)

    @property
    def se_hidden(self) -> int:
        return se_reduced(self.hidden, self.se_ratio)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        h, w = expect_grid(self, x, self.in_channels)
        return TensorType((x.shape[0], ceil_div(h, 2), ceil_div(w, 2), self.d_model), x.dtype)

    def params(self) -> int:
        c, m, d, r = self.in_channels, self.hidden, self.d_model, self.se_hidden
        return (
            (9 + 2) * c  # dwconv1 + BN
            + (c * m + 2 * m)  # 1x1 + BN
            + (9 * m + 2 * m)  # DW 3x3 s2 + BN
            + linear_params(m, r, True)
            + linear_params(r, m, True)  # squeeze-excite
            + (m * d + 2 * d)  # 1x1 + BN
            + (9 + 2) * d  # dwconv2 + BN
        )

    def flops(self, seq_len: int) -> int:
        c, m, d, r = self.in_channels, self.hidden, self.d_model, self.se_hidden
        out = ceil_div(seq_len, 4)
        return (
            2 * 9 * c * seq_len
            + linear_flops(c, m, seq_len)
            + 2 * 9 * m * out
            + out * m  # SE: pool, gate
            + linear_flops(m, r, 1)
            + linear_flops(r, m, 1)
            + out * m
            + linear_flops(m, d, out)
            + 2 * 9 * d * out
        )

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        out = ceil_div(seq_len, 4)
        return (seq_len * (2 * self.in_channels + self.hidden) + out * (3 * self.hidden)) * (
            dtype_bytes
        )


@register_op
@dataclass(frozen=True)
class HiddenStateFusionHead(Op):
    """EfficientViM's multi-stage hidden-state fusion (MSF) classifier. Inputs: the final
    normed grid ``[B, H, W, D_last]``, then each stage's hidden state ``[B, N_i, D_i]`` (the
    second output of its last ``hsm_ssd``); ``stage_widths`` are the ``D_i``. Parameters: the
    mixing logits ``w`` (one per input, init 1), a LayerNorm per hidden state and a linear head
    per input."""

    kind: ClassVar[str] = "msf_head"
    role: ClassVar[Role] = Role.HEAD
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "num_classes")
    summary: ClassVar[str] = "multi-stage hidden-state fusion classifier (EfficientViM)"

    d_model: int = attr("width of the last stage", ge=1)
    num_classes: int = attr("classes", ge=2)
    stage_widths: tuple[int, ...] = attr("width of each stage's hidden state")
    norm_eps: float = attr("epsilon of the hidden states' LayerNorms", default=1e-5, gt=0)

    @property
    def arity(self) -> int:  # type: ignore[override]
        return 1 + len(self.stage_widths)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        x, *states = _expect_arity(self, inputs)
        expect_grid(self, x, self.d_model)
        for s, width in zip(states, self.stage_widths, strict=True):
            if len(s.shape) != 3 or s.shape[-1] != width:
                raise TypeRuleError(f"msf_head: expected a hidden state [B, N, {width}], got {s}")
        return TensorType((x.shape[0], self.num_classes), x.dtype)

    def params(self) -> int:
        k = self.num_classes
        heads = sum(linear_params(d, k, True) + 2 * d for d in self.stage_widths)
        return len(self.stage_widths) + 1 + heads + linear_params(self.d_model, k, True)

    def flops(self, seq_len: int) -> int:
        # seq_len: the final grid's tokens; the hidden states' N are not known here, so their
        # norms and means (O(N D) each, small) are not counted
        k = self.num_classes
        heads = sum(linear_flops(d, k, 1) for d in self.stage_widths)
        return seq_len * self.d_model + heads + linear_flops(self.d_model, k, 1)

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        return (sum(self.stage_widths) + self.d_model + self.num_classes) * dtype_bytes
