"""EfficientViM's modules over channels-last grids ``[B, H, W, C]`` (archgen.ir.ops.efficientvim
has the math and the source): the HSM-SSD token mixer, the depthwise conv + BatchNorm, the
BatchNorm FFN and the convex residual.

BatchNorm: in training mode a conv and its BatchNorm run as two steps (batch statistics); in
eval mode the BatchNorm is folded into the conv (``w' = w g / sqrt(var + eps)``,
``b' = beta - mean g / sqrt(var + eps)``) and one conv runs, so an exported graph has no
BatchNormalization node (TensorRT fuses it anyway, but the issue asks for it folded). The fold
is exact up to rounding; tests check eval-mode forward against the unfolded reference.

Each module has a production ``forward`` and a plainly written ``reference`` (loops over tokens,
states and kernel offsets) that tests compare in float64, forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archgen.mixers.base import ChannelMixer, TokenMixer
from archgen.mixers.vision import _shifted

# the official init of the convex layer scale's logit: sigmoid(1e-4) ~ 0.5
THETA_INIT = 1e-4
# the official init of the state bias a: U[1, 16]
A_INIT_RANGE = (1.0, 16.0)


def folded_scale_shift(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` with ``bn(y) == y * s + t`` per channel in eval mode (running statistics)."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def conv_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``bn(conv(x))`` on ``[B, C, H, W]``: two steps in training mode (batch statistics), one
    conv with the BatchNorm folded into its weight and bias in eval mode."""
    if bn.training:
        return bn(conv(x))
    scale, shift = folded_scale_shift(bn)
    weight = conv.weight * scale[:, None, None, None]
    bias = shift if conv.bias is None else shift + conv.bias * scale
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def batch_norm_reference(y: torch.Tensor, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> torch.Tensor:
    """BatchNorm over the last axis of ``y`` written out: batch statistics (biased variance)
    over every other axis in training mode, the running statistics in eval mode."""
    if bn.training:
        axes = tuple(range(y.dim() - 1))
        mean = y.mean(dim=axes)
        var = ((y - mean) ** 2).mean(dim=axes)
    else:
        mean, var = bn.running_mean, bn.running_var
    return (y - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias


class HSMSSD(TokenMixer):
    """``[B, H, W, D] -> ([B, H, W, D], h'' [B, N, D])``.

    >>> y, h = HSMSSD(8, state_dim=5)(torch.randn(2, 3, 7, 8))
    >>> tuple(y.shape), tuple(h.shape)
    ((2, 3, 7, 8), (2, 5, 8))
    """

    def __init__(
        self,
        d_model: int,
        *,
        state_dim: int = 49,
        expand: int = 1,
        kernel: int = 3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        n, e = state_dim, expand * d_model
        self.state_dim, self.inner, self.kernel = n, e, kernel
        # official names (mlvlab/EfficientViM HSMSSD), 1x1 convs as linears over channels-last
        self.BCdt_proj = nn.Linear(d_model, 3 * n, bias=False, **fk)
        self.dw = nn.Conv2d(3 * n, 3 * n, kernel, padding=kernel // 2, groups=3 * n, bias=False,
                            **fk)  # fmt: skip
        self.hz_proj = nn.Linear(d_model, 2 * e, bias=False, **fk)
        self.out_proj = nn.Linear(e, d_model, bias=False, **fk)
        self.A = nn.Parameter(torch.empty(n, **fk).uniform_(*A_INIT_RANGE))
        self.D = nn.Parameter(torch.ones(1, **fk))

    def output_projection(self) -> nn.Linear:
        return self.out_proj

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        b, h, w, d = x.shape
        n = self.state_dim
        bcdt = self.dw(self.BCdt_proj(x).permute(0, 3, 1, 2)).flatten(2)  # [B, 3N, L]
        bm, cm, dt = bcdt.split(n, dim=1)  # each [B, N, L]
        a = (dt + self.A[:, None]).softmax(dim=-1)  # normalised over the tokens
        state = (a * bm) @ x.reshape(b, h * w, d)  # [B, N, D]
        hp, z = self.hz_proj(state).chunk(2, dim=-1)  # [B, N, E] each
        state = self.out_proj(hp * F.silu(z) + self.D * hp)  # h'' [B, N, D]
        y = cm.transpose(1, 2) @ state  # [B, L, D]
        return y.reshape(b, h, w, d), state

    def reference(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        b, h, w, d = x.shape
        n, r = self.state_dim, self.kernel // 2
        proj = x @ self.BCdt_proj.weight.T  # [B, H, W, 3N]
        conv = torch.zeros_like(proj)
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                conv = conv + _shifted(proj, dy, dx) * self.dw.weight[:, 0, dy + r, dx + r]
        tokens = [(yy, xx) for yy in range(h) for xx in range(w)]  # row-major, as flatten
        state_rows = []
        for s in range(n):
            logits = [conv[:, yy, xx, 2 * n + s] + self.A[s] for yy, xx in tokens]
            top = torch.stack(logits, dim=-1).max(dim=-1).values.detach()
            exps = [torch.exp(v - top) for v in logits]
            total = sum(exps)
            row = torch.zeros(b, d, dtype=x.dtype)
            for t, (yy, xx) in enumerate(tokens):
                weight = exps[t] / total * conv[:, yy, xx, s]  # A[s, t] * B[s, t]
                row = row + weight[:, None] * x[:, yy, xx]
            state_rows.append(row)
        state = torch.stack(state_rows, dim=1)  # h [B, N, D]
        e = self.inner
        hz = state @ self.hz_proj.weight.T
        hp, z = hz[..., :e], hz[..., e:]
        silu = z / (1 + torch.exp(-z))
        state = (hp * silu + self.D * hp) @ self.out_proj.weight.T  # h'' [B, N, D]
        y = torch.zeros_like(x)
        for yy, xx in tokens:
            for s in range(n):
                y[:, yy, xx] = y[:, yy, xx] + conv[:, yy, xx, n + s, None] * state[:, s]
        return y, state


class DepthwiseConv(TokenMixer):
    """Depthwise ``k x k`` conv, then BatchNorm (folded in eval mode) or a bias.

    >>> DepthwiseConv(6)(torch.randn(2, 5, 3, 6)).shape
    torch.Size([2, 5, 3, 6])
    """

    def __init__(
        self,
        d_model: int,
        *,
        kernel: int = 3,
        batchnorm: bool = True,
        bn_eps: float = 1e-5,
        bn_init: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.kernel = kernel
        self.conv = nn.Conv2d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model,
                              bias=not batchnorm, **fk)  # fmt: skip
        self.bn = nn.BatchNorm2d(d_model, eps=bn_eps, **fk) if batchnorm else None
        if self.bn is not None:
            # official bn_weight_init=0: the branch starts at zero
            nn.init.constant_(self.bn.weight, bn_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.permute(0, 3, 1, 2)
        y = self.conv(y) if self.bn is None else conv_bn(y, self.conv, self.bn)
        return y.permute(0, 2, 3, 1)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        r = self.kernel // 2
        out = torch.zeros_like(x)
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                out = out + _shifted(x, dy, dx) * self.conv.weight[:, 0, dy + r, dx + r]
        if self.bn is None:
            return out + self.conv.bias
        return batch_norm_reference(out, self.bn)


class BatchNormFFN(ChannelMixer):
    """``bn2(fc2(relu(bn1(fc1(x)))))``, 1x1 convs as linears over channels-last grids.

    >>> BatchNormFFN(6, hidden=10)(torch.randn(2, 5, 3, 6)).shape
    torch.Size([2, 5, 3, 6])
    """

    def __init__(
        self,
        d_model: int,
        *,
        mlp_ratio: float = 4.0,
        hidden: int | None = None,
        bn_eps: float = 1e-5,
        bn_init: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden = hidden or max(1, int(d_model * mlp_ratio))
        fk = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(d_model, hidden, bias=False, **fk)
        self.bn1 = nn.BatchNorm1d(hidden, eps=bn_eps, **fk)
        self.fc2 = nn.Linear(hidden, d_model, bias=False, **fk)
        self.bn2 = nn.BatchNorm1d(d_model, eps=bn_eps, **fk)
        nn.init.constant_(self.bn2.weight, bn_init)  # official bn_weight_init=0 on the second

    @staticmethod
    def _linear_bn(x: torch.Tensor, fc: nn.Linear, bn: nn.BatchNorm1d) -> torch.Tensor:
        if bn.training:
            y = fc(x)
            return bn(y.reshape(-1, y.shape[-1])).reshape(y.shape)
        scale, shift = folded_scale_shift(bn)
        return F.linear(x, fc.weight * scale[:, None], shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear_bn(F.relu(self._linear_bn(x, self.fc1, self.bn1)), self.fc2, self.bn2)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        hidden = batch_norm_reference(x @ self.fc1.weight.T, self.bn1)
        hidden = torch.where(hidden > 0, hidden, torch.zeros_like(hidden))
        return batch_norm_reference(hidden @ self.fc2.weight.T, self.bn2)


class ConvexResidual(nn.Module):
    """``(1 - a) x + a f``, ``a = sigmoid(theta)`` per channel.

    >>> round(ConvexResidual(4)(torch.zeros(1, 4), torch.ones(1, 4))[0, 0].item(), 3)
    0.5
    """

    def __init__(
        self,
        d_model: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.full((d_model,), THETA_INIT, device=device, dtype=dtype))

    def forward(self, stream: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return stream + torch.sigmoid(self.theta) * (branch - stream)

    def reference(self, stream: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        alpha = 1 / (1 + torch.exp(-self.theta))
        return (1 - alpha) * stream + alpha * branch
