"""Node kinds of image-classification models, over 2-D token grids ``[B, H, W, C]``.

Every grid is channels-last (the image itself is ``f32[B, H, W, in_channels]``), so position-wise
ops (norms, MLPs, the residual add) run on grids unchanged. The ops here mix neighbouring
positions (trait ``SPATIAL``): the downsampling between stages, the classifier head, ConvGLU
(TransNeXt) and RaftMLP's raft token mixing. Costs take ``seq_len`` = the tokens ``H * W`` of the
node's input grid (:func:`archgen.ir.cost.node_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from archgen.ir.ops.base import (
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
from archgen.ir.types import TensorType, TypeRuleError

GRID_OP: frozenset[Trait] = frozenset({Trait.GRID, Trait.SPATIAL})


def expect_grid(op: Op, x: TensorType, channels: int) -> tuple[int, int]:
    """``(H, W)`` of ``x``, which must be a grid ``[B, H, W, channels]`` with a static H, W."""
    if len(x.shape) != 4 or x.shape[-1] != channels:
        raise TypeRuleError(f"{op.kind}: expected a grid [B, H, W, {channels}], got {x}")
    h, w = x.shape[1], x.shape[2]
    if not isinstance(h, int) or not isinstance(w, int):
        raise TypeRuleError(f"{op.kind}: needs a static grid size, got {x}")
    return h, w


def downsampled_grid(
    op: Op, x: TensorType, in_channels: int, stride: int, d_model: int
) -> TensorType:
    """The shape rule of a strided downsampling op: grid ``[B, H, W, in_channels]`` ->
    ``[B, H/stride, W/stride, d_model]``, with H and W divisible by ``stride``."""
    h, w = expect_grid(op, x, in_channels)
    if h % stride or w % stride:
        raise TypeRuleError(f"{op.kind}: grid {h}x{w} is not divisible by stride {stride}")
    return TensorType((x.shape[0], h // stride, w // stride, d_model), x.dtype)


@register_op
@dataclass(frozen=True)
class PatchEmbed(Op):
    """Strided convolution + LayerNorm: ``[B, H, W, in_channels] -> [B, H/s, W/s, d_model]``.
    ``kernel == stride`` is a ViT patch embedding; an odd ``kernel > stride`` (padding
    ``kernel // 2``) is an overlapping conv stem (TransNeXt: 7x7 stride 4, then 3x3 stride 2)."""

    kind: ClassVar[str] = "patch_embed"
    role: ClassVar[Role] = Role.DOWNSAMPLE
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "in_channels", "norm_eps")
    summary: ClassVar[str] = "patch embedding / overlapping conv stem (conv + LayerNorm)"

    d_model: int = attr("output width (the stage's width)", ge=1)
    in_channels: int = attr(
        "input width (the image's channels or the previous stage's width)", ge=1
    )
    norm_eps: float = attr("epsilon of the LayerNorm after the conv", default=1e-6, gt=0)
    stride: int = attr("downsampling factor (patch size)", default=4, ge=1, le=64)
    kernel: int | None = attr(
        "conv kernel (default: stride, non-overlapping); odd and > stride: overlapping",
        auto=True,
        ge=1,
        le=64,
    )

    def resolved(self) -> PatchEmbed:
        return self if self.kernel is not None else replace(self, kernel=self.stride)

    @property
    def padding(self) -> int:
        k = self.resolved().kernel
        assert k is not None
        return 0 if k == self.stride else k // 2

    def extra_problems(self) -> list[Constraint]:
        k = self.kernel
        if k is not None and k != self.stride and (k < self.stride or k % 2 == 0):
            return [
                Constraint(
                    "kernel",
                    f"must equal stride {self.stride} or be odd and larger (so the output is "
                    f"exactly 1/{self.stride} of the grid), got {k}",
                )
            ]
        return []

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        return downsampled_grid(self, x, self.in_channels, self.stride, self.d_model)

    def params(self) -> int:
        k = self.resolved().kernel
        assert k is not None
        return k * k * self.in_channels * self.d_model + self.d_model + 2 * self.d_model

    def flops(self, seq_len: int) -> int:
        k = self.resolved().kernel
        assert k is not None
        out_tokens = seq_len // (self.stride * self.stride)
        return linear_flops(k * k * self.in_channels, self.d_model, out_tokens) + 7 * (
            out_tokens * self.d_model
        )

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        out_tokens = seq_len // (self.stride * self.stride)
        return 2 * out_tokens * self.d_model * dtype_bytes


@register_op
@dataclass(frozen=True)
class PatchMerge(Op):
    """Swin's patch merging: each ``factor x factor`` neighbourhood concatenated (``f^2 C``),
    LayerNorm, then a linear map to ``d_model`` (no bias)."""

    kind: ClassVar[str] = "patch_merge"
    role: ClassVar[Role] = Role.DOWNSAMPLE
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "in_channels", "norm_eps")
    summary: ClassVar[str] = "patch merging (Swin): concat f x f neighbours, norm, linear"

    d_model: int = attr("output width (the stage's width)", ge=1)
    in_channels: int = attr("input width (the previous stage's width)", ge=1)
    norm_eps: float = attr("epsilon of the LayerNorm before the linear map", default=1e-6, gt=0)
    factor: int = attr("downsampling factor", default=2, ge=1, le=16)

    @property
    def stride(self) -> int:
        return self.factor

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        h, w = expect_grid(self, x, self.in_channels)
        f = self.factor
        if h % f or w % f:
            raise TypeRuleError(f"{self.kind}: grid {h}x{w} is not divisible by factor {f}")
        return TensorType((x.shape[0], h // f, w // f, self.d_model), x.dtype)

    def params(self) -> int:
        merged = self.factor**2 * self.in_channels
        return 2 * merged + linear_params(merged, self.d_model, bias=False)

    def flops(self, seq_len: int) -> int:
        out_tokens = seq_len // (self.factor**2)
        merged = self.factor**2 * self.in_channels
        return 7 * seq_len * self.in_channels + linear_flops(merged, self.d_model, out_tokens)

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        return (2 * seq_len * self.in_channels + seq_len // self.factor**2 * self.d_model) * (
            dtype_bytes
        )


@register_op
@dataclass(frozen=True)
class ClassifierHead(Op):
    """Global average pool over the grid, then a linear map to class logits ``[B, classes]``."""

    kind: ClassVar[str] = "classifier"
    role: ClassVar[Role] = Role.HEAD
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "num_classes")
    summary: ClassVar[str] = "global average pool + linear classifier"

    d_model: int = attr("width of the last stage", ge=1)
    num_classes: int = attr("classes", ge=2)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        expect_grid(self, x, self.d_model)
        return TensorType((x.shape[0], self.num_classes), x.dtype)

    def params(self) -> int:
        return linear_params(self.d_model, self.num_classes, bias=True)

    def flops(self, seq_len: int) -> int:
        return seq_len * self.d_model + linear_flops(self.d_model, self.num_classes, 1)

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        return (self.d_model + self.num_classes) * dtype_bytes


def convglu_default_hidden(d_model: int, mlp_ratio: float) -> int:
    """TransNeXt's rule: ``int(2 * hidden / 3)`` of the plain MLP's ``hidden = d * ratio``, so
    the gated MLP has about the parameters of the plain one."""
    return max(1, int(2 * int(d_model * mlp_ratio) / 3))


@register_op
@dataclass(frozen=True)
class ConvGLU(Op):
    """TransNeXt's Convolutional GLU: ``[g, v] = fc1(x)``; ``fc2(gelu(dwconv3x3(g)) * v)``."""

    kind: ClassVar[str] = "convglu"
    role: ClassVar[Role] = Role.CHANNEL_MIXER
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    summary: ClassVar[str] = "convolutional GLU (TransNeXt): gated MLP with a 3x3 depthwise conv"

    d_model: int = attr("model width", ge=1)
    mlp_ratio: float = attr("width ratio of the plain MLP it replaces", default=4.0, gt=0, le=64)
    hidden: int | None = attr(
        "gated hidden width (default int(2/3 * d_model * mlp_ratio))", auto=True, ge=1, le=1 << 20
    )
    kernel: int = attr("depthwise conv kernel (odd)", default=3, ge=1, le=31)

    def resolved(self) -> ConvGLU:
        if self.hidden is not None:
            return self
        return replace(self, hidden=convglu_default_hidden(self.d_model, self.mlp_ratio))

    def extra_problems(self) -> list[Constraint]:
        if self.kernel % 2 == 0:
            return [Constraint("kernel", f"must be odd (same-size output), got {self.kernel}")]
        return []

    def _hidden(self) -> int:
        h = self.resolved().hidden
        assert h is not None
        return h

    def params(self) -> int:
        m, d = self._hidden(), self.d_model
        return (
            linear_params(d, 2 * m, bias=True)
            + m * self.kernel**2
            + m
            + linear_params(m, d, bias=True)
        )

    def flops(self, seq_len: int) -> int:
        m, d = self._hidden(), self.d_model
        return (
            linear_flops(d, 2 * m, seq_len)
            + 2 * self.kernel**2 * m * seq_len
            + 9 * m * seq_len  # gelu and the gate product
            + linear_flops(m, d, seq_len)
        )

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        return seq_len * (4 * self._hidden() + self.d_model) * dtype_bytes


@register_op
@dataclass(frozen=True)
class RaftTokenMixer(Op):
    """RaftMLP's raft token mixing along one axis of a fixed ``height x width`` grid.

    Channel ``c = a * (C/r) + b`` (``a`` in ``[0, r)``, the raft member): along ``axis:
    vertical`` each column and each ``b`` gives the vector ``v[a * H + y]`` of length ``r H``,
    mixed by one MLP ``rH -> e rH -> rH`` (GELU) shared over columns and ``b``; ``horizontal``
    is the same over rows. RaftMLP's block is two layers: a vertical raft, then a horizontal raft
    with the channel MLP (each its own pre-norm residual branch, as in the paper)."""

    kind: ClassVar[str] = "raft"
    role: ClassVar[Role] = Role.TOKEN_MIXER
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "height", "width")
    summary: ClassVar[str] = "RaftMLP raft token mixing (vertical or horizontal, fixed grid)"

    d_model: int = attr("model width", ge=1)
    height: int = attr("grid height (from the stage)", ge=1)
    width: int = attr("grid width (from the stage)", ge=1)
    axis: Literal["vertical", "horizontal"] = attr("mix along columns or rows", default="vertical")
    raft_size: int = attr("channels mixed jointly with the axis (r)", default=2, ge=1, le=64)
    expansion: int = attr("hidden width of the token MLP, times r * length", default=2, ge=1)

    @property
    def length(self) -> int:
        """Tokens along the mixed axis."""
        return self.height if self.axis == "vertical" else self.width

    def extra_problems(self) -> list[Constraint]:
        if self.d_model % self.raft_size:
            return [
                Constraint(
                    "raft_size",
                    f"the stage width {self.d_model} is not divisible by raft_size "
                    f"{self.raft_size}",
                )
            ]
        return []

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        h, w = expect_grid(self, x, self.d_model)
        if (h, w) != (self.height, self.width):
            raise TypeRuleError(
                f"raft: weights are for a {self.height}x{self.width} grid, got {h}x{w}"
            )
        return x

    def params(self) -> int:
        n = self.raft_size * self.length
        return linear_params(n, self.expansion * n, True) + linear_params(
            self.expansion * n, n, True
        )

    def flops(self, seq_len: int) -> int:
        # (C/r) * (seq_len / length) vectors of r * length, each through the two linears
        n = self.raft_size * self.length
        vectors = self.d_model // self.raft_size * seq_len // self.length
        return 2 * linear_flops(n, self.expansion * n, vectors) + vectors * self.expansion * n

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        return seq_len * self.d_model * (2 + 2 * self.expansion) * dtype_bytes


@register_op
@dataclass(frozen=True)
class DynamicSpectrumMixer(Op):
    """The Dynamic Spectrum Mixer (Hu & Yu 2023), *reconstructed*: the paper's code is
    unpublished and only its abstract was read (research/mixers.md §3). It follows the
    code-verified DFFormer dynamic filter with the FFT replaced by an orthonormal 2-D DCT, computed
    as two matmuls (no DFT op: exportable to ONNX and TensorRT)::

        a = softmax_K(route(mean_HW x))        [B, K, C'], C' = expansion * C
        x' = gelu(x W1)                        [B, H, W, C']
        y = DCT^-1( DCT(x') * sum_k a_k bases_k ) W2

    Where it may differ from the paper: GELU instead of DFFormer's StarReLU, the routing MLP's
    shape (C -> C/4 -> K C'), the bases' initialisation (identity filter plus noise) and the
    block it sits in. The bases are tied to the stage's grid (fixed image size)."""

    kind: ClassVar[str] = "spectrum"
    role: ClassVar[Role] = Role.TOKEN_MIXER
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "height", "width")
    summary: ClassVar[str] = "dynamic spectrum mixer (DCT band weights; reconstruction)"

    d_model: int = attr("model width", ge=1)
    height: int = attr("grid height (from the stage)", ge=1)
    width: int = attr("grid width (from the stage)", ge=1)
    expansion: int = attr("inner width, times d_model", default=2, ge=1, le=16)
    filters: int = attr("spectral weight bases mixed per image (K)", default=4, ge=1, le=64)
    reweight: float = attr("hidden width of the routing MLP, times d_model", default=0.25, gt=0)

    def _dims(self) -> tuple[int, int, int]:
        inner = self.expansion * self.d_model
        return inner, max(1, int(self.d_model * self.reweight)), self.height * self.width

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        h, w = expect_grid(self, x, self.d_model)
        if (h, w) != (self.height, self.width):
            raise TypeRuleError(
                f"spectrum: weights are for a {self.height}x{self.width} grid, got {h}x{w}"
            )
        return x

    def params(self) -> int:
        inner, hidden, grid = self._dims()
        return (
            2 * self.d_model * inner  # W1, W2 (no biases, as DFFormer)
            + linear_params(self.d_model, hidden, True)
            + linear_params(hidden, self.filters * inner, True)
            + self.filters * grid
        )

    def flops(self, seq_len: int) -> int:
        inner, hidden, _ = self._dims()
        dct = 2 * 2 * (self.height + self.width) * seq_len * inner  # forward and inverse
        route = linear_flops(self.d_model, hidden, 1) + linear_flops(
            hidden, self.filters * inner, 1
        )
        return (
            2 * linear_flops(self.d_model, inner, seq_len)
            + dct
            + (2 * self.filters + 1) * seq_len * inner
            + route
        )

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        inner, _, _ = self._dims()
        return seq_len * (4 * inner + self.d_model) * dtype_bytes
