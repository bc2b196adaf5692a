"""Node kinds of EfficientViM (Lee et al., CVPR 2025; mlvlab/EfficientViM @ 304340c, read in
research/mixers.md §4), over channels-last grids ``[B, H, W, C]``.

* ``hsm_ssd``: the hidden-state-mixer SSD token mixer. Two outputs: the mixed grid and the
  hidden state ``h''`` ``[B, N, D]`` (N state columns of width D, channels last like a grid),
  which the multi-stage fusion head reads.
* ``dwconv``: a depthwise ``k x k`` convolution, followed by BatchNorm (the official
  ``ConvLayer2D(groups=dim, act=None)``) or with a bias.
* ``bn_ffn``: the BatchNorm FFN, ``1x1 conv + BN + ReLU, 1x1 conv + BN``.
* ``convex_residual``: the block's convex layer scale ``(1 - a) x + a f(x)``, ``a = sigmoid(t)``
  per channel; a vision layer with ``residual: convex`` gets one instead of ``residual_add``.

BatchNorm is folded into the convolution before it in eval mode (mixers/efficientvim.py), so an
exported graph holds one Conv per ``dwconv`` / FFN linear and no BatchNormalization.
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
    linear_flops,
    linear_params,
    register_op,
)
from archgen.ir.ops.vision import GRID_OP, expect_grid
from archgen.ir.types import TensorType, TypeRuleError


@register_op
@dataclass(frozen=True)
class HSMSSD(Op):
    """EfficientViM's HSM-SSD (non-causal, single head) on a grid of ``L = H W`` tokens::

        [B, C, dt] = dwconv3x3(x W_bcd)         each [L, N] (1x1 D -> 3N, depthwise 3x3, no bias)
        A = softmax_L(dt + a)                   a [N] learned; normalised over the tokens
        h = (A * B)^T x                         [N, D]: the global hidden state
        [h', z] = h W_hz                        [N, 2E]   (E = expand * D)
        h'' = (h' * silu(z) + d h') W_o         [N, D]    d a learned scalar
        y = C h''                               [L, D]

    The projections act on the N state columns, not the L tokens (the paper's point: O(N D^2)
    instead of O(L D^2)). Outputs ``(y [B, H, W, D], h'' [B, N, D])``. H and W come from the
    grid itself (the official code assumes a square map, ``H = sqrt(L)``)."""

    kind: ClassVar[str] = "hsm_ssd"
    role: ClassVar[Role] = Role.TOKEN_MIXER
    arity: ClassVar[int] = 1
    num_outputs: ClassVar[int] = 2  # (mixed grid, hidden state h'')
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    summary: ClassVar[str] = "EfficientViM hidden-state-mixer SSD (2 outputs: grid, state)"

    d_model: int = attr("model width", ge=1)
    state_dim: int = attr("state size N (columns of the hidden state)", default=49, ge=1)
    expand: int = attr("width of the hidden-state mixer, times d_model", default=1, ge=1, le=16)
    kernel: int = attr("depthwise conv kernel on B, C, dt (odd)", default=3, ge=1, le=31)

    def extra_problems(self) -> list[Constraint]:
        if self.kernel % 2 == 0:
            return [Constraint("kernel", f"must be odd (same-size output), got {self.kernel}")]
        return []

    def infer_outputs(self, inputs: Sequence[TensorType]) -> tuple[TensorType, ...]:
        (x,) = _expect_arity(self, inputs)
        expect_grid(self, x, self.d_model)
        return x, TensorType((x.shape[0], self.state_dim, self.d_model), x.dtype)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        return self.infer_outputs(inputs)[0]

    def params(self) -> int:
        d, n, e = self.d_model, self.state_dim, self.expand * self.d_model
        return (
            linear_params(d, 3 * n, bias=False)  # BCdt_proj
            + self.kernel**2 * 3 * n  # depthwise conv, no bias
            + linear_params(d, 2 * e, bias=False)  # hz_proj
            + linear_params(e, d, bias=False)  # out_proj
            + n  # a
            + 1  # d
        )

    def flops(self, seq_len: int) -> int:
        d, n, e, k = self.d_model, self.state_dim, self.expand * self.d_model, self.kernel
        return (
            linear_flops(d, 3 * n, seq_len)
            + 2 * k * k * 3 * n * seq_len
            + 6 * n * seq_len  # dt + a, softmax (exp, sum, divide), A * B
            + 2 * 2 * seq_len * n * d  # h = (A B)^T x and y = C h''
            + linear_flops(d, 2 * e, n)
            + 6 * n * e  # silu, gate, d h', add
            + linear_flops(e, d, n)
        )

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        d, n, e = self.d_model, self.state_dim, self.expand * self.d_model
        return (seq_len * (6 * n + d) + n * (4 * e + 2 * d)) * dtype_bytes


@register_op
@dataclass(frozen=True)
class DepthwiseConv(Op):
    """A depthwise ``kernel x kernel`` convolution (padding ``kernel // 2``), then BatchNorm
    (``batchnorm: true``, the conv without bias: EfficientViM's ``dwconv1``/``dwconv2``) or
    a per-channel bias. Used with ``pre_norm: false`` in a vision layer."""

    kind: ClassVar[str] = "dwconv"
    role: ClassVar[Role] = Role.TOKEN_MIXER
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    summary: ClassVar[str] = "depthwise conv (+ BatchNorm, folded for export)"

    d_model: int = attr("model width", ge=1)
    kernel: int = attr("kernel size (odd)", default=3, ge=1, le=31)
    batchnorm: bool = attr("BatchNorm after the conv (else the conv has a bias)", default=True)
    bn_eps: float = attr("epsilon of the BatchNorm", default=1e-5, gt=0)
    bn_init: float = attr(
        "initial BatchNorm scale (the official 0 starts the branch at zero)", default=0.0, ge=0
    )

    def extra_problems(self) -> list[Constraint]:
        if self.kernel % 2 == 0:
            return [Constraint("kernel", f"must be odd (same-size output), got {self.kernel}")]
        return []

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        expect_grid(self, x, self.d_model)
        return x

    def params(self) -> int:
        return self.kernel**2 * self.d_model + (2 if self.batchnorm else 1) * self.d_model

    def flops(self, seq_len: int) -> int:
        # eval-mode BatchNorm is folded into the conv: its cost is the conv's bias add
        return 2 * self.kernel**2 * self.d_model * seq_len + seq_len * self.d_model


def bn_ffn_default_hidden(d_model: int, mlp_ratio: float) -> int:
    """EfficientViM's rule: ``int(dim * mlp_ratio)``."""
    return max(1, int(d_model * mlp_ratio))


@register_op
@dataclass(frozen=True)
class BatchNormFFN(Op):
    """EfficientViM's FFN: ``1x1 conv (no bias) + BN + ReLU, 1x1 conv (no bias) + BN``.
    Position-wise at inference, but in training its BatchNorm averages over the batch and every
    position of the grid (a causal LM would leak the future through it): a grid op, image
    models only."""

    kind: ClassVar[str] = "bn_ffn"
    role: ClassVar[Role] = Role.CHANNEL_MIXER
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    summary: ClassVar[str] = "FFN of 1x1 convs with BatchNorm and ReLU (EfficientViM)"

    d_model: int = attr("model width", ge=1)
    mlp_ratio: float = attr("hidden width, times d_model", default=4.0, gt=0, le=64)
    hidden: int | None = attr(
        "hidden width (default int(d_model * mlp_ratio))", auto=True, ge=1, le=1 << 20
    )
    bn_eps: float = attr("epsilon of the BatchNorms", default=1e-5, gt=0)
    bn_init: float = attr(
        "initial scale of the second BatchNorm (the official 0 starts the branch at zero)",
        default=0.0,
        ge=0,
    )

    def resolved(self) -> BatchNormFFN:
        if self.hidden is not None:
            return self
        return replace(self, hidden=bn_ffn_default_hidden(self.d_model, self.mlp_ratio))

    def _hidden(self) -> int:
        h = self.resolved().hidden
        assert h is not None
        return h

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        if x.shape[-1] != self.d_model:
            raise TypeRuleError(f"bn_ffn: expected last dim {self.d_model}, got {x}")
        return x

    def params(self) -> int:
        m, d = self._hidden(), self.d_model
        return linear_params(d, m, bias=False) + 2 * m + linear_params(m, d, bias=False) + 2 * d

    def flops(self, seq_len: int) -> int:
        m, d = self._hidden(), self.d_model
        # folded BN: a bias add per output; ReLU one per hidden element
        return linear_flops(d, m, seq_len) + linear_flops(m, d, seq_len) + seq_len * (2 * m + d)

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        return seq_len * (3 * self._hidden() + self.d_model) * dtype_bytes


@register_op
@dataclass(frozen=True)
class ConvexResidual(Op):
    """``(1 - a) stream + a branch``, ``a = sigmoid(theta)`` per channel (``theta`` starts at
    1e-4, so ``a`` ~ 0.5): EfficientViM's convex layer scale. Made by the spec for a layer with
    ``residual: convex``; its one parameter vector is ``theta``."""

    kind: ClassVar[str] = "convex_residual"
    role: ClassVar[Role] = Role.RESIDUAL
    arity: ClassVar[int] = 2  # (stream, branch), as residual_add
    traits: ClassVar[frozenset[Trait]] = POSITIONWISE
    summary: ClassVar[str] = "convex residual (1 - a) x + a f(x), a = sigmoid(theta) per channel"

    d_model: int = attr("model width", ge=1)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        stream, branch = _expect_arity(self, inputs)
        if stream.shape != branch.shape:
            raise TypeRuleError(f"convex_residual: shapes differ: {stream} vs {branch}")
        if stream.shape[-1] != self.d_model:
            raise TypeRuleError(f"convex_residual: expected last dim {self.d_model}, got {stream}")
        return stream

    def params(self) -> int:
        return self.d_model

    def flops(self, seq_len: int) -> int:
        return 3 * seq_len * self.d_model  # x + a (f - x)
