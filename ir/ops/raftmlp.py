"""RaftMLP's cross-scale embedding (Tatsunami & Taki 2021, research/mixers.md §5), the
downsampling that starts each of RaftMLP's stages.

Read from the official code (okojoalg/raft-mlp @ 6060d5d, ``libs/modules.py``,
``CrossScaleMLPEmbedding``): for every kernel ``k`` in ``kernels`` the ``k x k`` patch around each
output position (stride ``s``, zero padding ``(k - s) / 2``) is unfolded; the patches of all the
kernels are concatenated (``sum k^2 * C_in`` values) and one linear map with a bias gives the
stage's width. No norm follows (the token MLPs' pre-norms come next). RaftMLP-S uses kernels
``[4, 8]`` (stride 4), ``[2, 4]``, ``[2, 4]`` and ``[2]`` (stride 2).

The linear map over the concatenation equals a sum of strided convolutions, one per kernel,
which is how the module computes it (no unfold: less memory, and Conv exports to ONNX and
TensorRT). The grid is fixed by the spec (no bicubic resize: TensorRT has none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from archgen.ir.ops.base import (
    Constraint,
    Op,
    Role,
    Trait,
    _expect_arity,
    attr,
    linear_flops,
    register_op,
)
from archgen.ir.ops.vision import GRID_OP, downsampled_grid
from archgen.ir.types import TensorType

MAX_KERNELS = 8


@register_op
@dataclass(frozen=True)
class CrossScaleEmbed(Op):
    """RaftMLP's cross-scale embedding: ``[B, H, W, in_channels] -> [B, H/s, W/s, d_model]``,
    one linear map over the concatenated ``k x k`` patches of every kernel ``k`` (stride ``s``,
    padding ``(k - s) / 2``, so each kernel's patches are centred on the same output grid)."""

    kind: ClassVar[str] = "cross_scale_embed"
    role: ClassVar[Role] = Role.DOWNSAMPLE
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "in_channels")
    summary: ClassVar[str] = (
        "cross-scale embedding (RaftMLP): patches of several kernel sizes, one linear map"
    )

    d_model: int = attr("output width (the stage's width)", ge=1)
    in_channels: int = attr(
        "input width (the image's channels or the previous stage's width)", ge=1
    )
    stride: int = attr("downsampling factor (the patch size)", default=4, ge=1, le=64)
    kernels: tuple[int, ...] | None = attr(
        "patch sizes, each a multiple of stride with (kernel - stride) even "
        "(default: [stride, 2 * stride], RaftMLP's first three stages)",
        auto=True,
        ge=1,
        le=128,
    )

    def resolved(self) -> CrossScaleEmbed:
        if self.kernels is not None:
            return self
        return replace(self, kernels=(self.stride, 2 * self.stride))

    def _kernels(self) -> tuple[int, ...]:
        kernels = self.resolved().kernels
        assert kernels is not None
        return kernels

    def paddings(self) -> tuple[int, ...]:
        """Zero padding of each kernel's patches: ``(k - stride) / 2`` on every side."""
        return tuple((k - self.stride) // 2 for k in self._kernels())

    def extra_problems(self) -> list[Constraint]:
        kernels, s = self.kernels, self.stride
        if kernels is None:
            return []
        if not 1 <= len(kernels) <= MAX_KERNELS:
            count = len(kernels)
            return [Constraint("kernels", f"must list 1 to {MAX_KERNELS} sizes, got {count}")]
        if len(set(kernels)) != len(kernels):
            return [Constraint("kernels", f"must be distinct, got {list(kernels)}")]
        for k in kernels:
            if k % s or (k - s) % 2:
                return [
                    Constraint(
                        "kernels",
                        f"{k} is not a multiple of stride {s} with {k} - {s} even (so its "
                        f"patches, padded by (k - stride) / 2, tile the same 1/{s} grid)",
                    )
                ]
        return []

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        return downsampled_grid(self, x, self.in_channels, self.stride, self.d_model)

    def patch_width(self) -> int:
        """Values of one output position's concatenated patches: ``sum k^2 * in_channels``."""
        return sum(k * k for k in self._kernels()) * self.in_channels

    def params(self) -> int:
        return self.patch_width() * self.d_model + self.d_model

    def flops(self, seq_len: int) -> int:
        # padded border taps are multiplications by zero, counted as the dense linear map does
        out_tokens = seq_len // (self.stride * self.stride)
        return linear_flops(self.patch_width(), self.d_model, out_tokens)

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        # each kernel's convolution output, then their sum
        out_tokens = seq_len // (self.stride * self.stride)
        return (len(self._kernels()) + 1) * out_tokens * self.d_model * dtype_bytes
