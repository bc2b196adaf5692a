"""Torch modules of the official EfficientViM network's ends and joints over channels-last
grids (archgen.ir.ops.efficientvim_net has the structure and the source): the conv stem, the
patch merging and the multi-stage hidden-state fusion head. BatchNorm folds into the convs in
eval mode (:func:`archgen.mixers.efficientvim.conv_bn`).

Each has a production ``forward`` and a ``reference`` with the convolutions written as loops
over output positions and kernel offsets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archgen.ir.ops.efficientvim_net import se_reduced
from archgen.mixers.efficientvim import DepthwiseConv, batch_norm_reference, conv_bn


def conv_reference(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv`` (dense or depthwise; no bias) on a ``[B, H, W, C]`` grid, written as loops."""
    b, h, w, _ = x.shape
    weight = conv.weight  # [out, in / groups, k, k]
    k, s, p = weight.shape[-1], conv.stride[0], conv.padding[0]  # type: ignore[index]
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    depthwise = conv.groups > 1
    rows = []
    for oy in range(oh):
        cols = []
        for ox in range(ow):
            acc = x.new_zeros(b, weight.shape[0])
            for ky in range(k):
                for kx in range(k):
                    y, xx = oy * s - p + ky, ox * s - p + kx
                    if 0 <= y < h and 0 <= xx < w:
                        tap = weight[:, :, ky, kx]
                        acc = acc + (x[:, y, xx] * tap[:, 0] if depthwise else x[:, y, xx] @ tap.T)
            cols.append(acc)
        rows.append(torch.stack(cols, dim=1))
    return torch.stack(rows, dim=1)


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class ConvStem(nn.Module):
    """``log2(stride)`` x (3x3 stride-2 conv + BN), ReLU between.

    >>> ConvStem(16, in_channels=3, stride=4)(torch.randn(2, 9, 8, 3)).shape
    torch.Size([2, 3, 2, 16])
    """

    def __init__(
        self,
        d_model: int,
        *,
        in_channels: int,
        stride: int = 16,
        bn_eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        convs = stride.bit_length() - 1
        widths = [max(1, d_model >> (convs - 1 - i)) for i in range(convs)]
        ins = [in_channels, *widths[:-1]]
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c, 3, 2, 1, bias=False, **fk)
            for c_in, c in zip(ins, widths, strict=True)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(c, eps=bn_eps, **fk) for c in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _nchw(x)
        for i, (conv, bn) in enumerate(zip(self.convs, self.norms, strict=True)):
            y = conv_bn(y, conv, bn)  # type: ignore[arg-type]
            if i < len(self.convs) - 1:
                y = F.relu(y)
        return _nhwc(y)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv, bn) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = batch_norm_reference(conv_reference(x, conv), bn)  # type: ignore[arg-type]
            if i < len(self.convs) - 1:
                x = torch.where(x > 0, x, torch.zeros_like(x))
        return x


class EfficientViMMerge(nn.Module):
    """EfficientViM's patch merging, ``[B, H, W, C_in] -> [B, ceil(H/2), ceil(W/2), D]``.

    >>> EfficientViMMerge(8, in_channels=6)(torch.randn(2, 5, 4, 6)).shape
    torch.Size([2, 3, 2, 8])
    """

    def __init__(
        self,
        d_model: int,
        *,
        in_channels: int,
        ratio: float = 4.0,
        se_ratio: float = 0.25,
        bn_eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        m = int(d_model * ratio)
        r = se_reduced(m, se_ratio)
        # the official ConvLayer2D's in PatchMerging keep BN weight init 1
        self.dwconv1 = DepthwiseConv(in_channels, bn_eps=bn_eps, bn_init=1.0, **fk)
        self.expand = nn.Conv2d(in_channels, m, 1, bias=False, **fk)
        self.expand_bn = nn.BatchNorm2d(m, eps=bn_eps, **fk)
        self.down = nn.Conv2d(m, m, 3, 2, 1, groups=m, bias=False, **fk)
        self.down_bn = nn.BatchNorm2d(m, eps=bn_eps, **fk)
        self.se_reduce = nn.Conv2d(m, r, 1, **fk)
        self.se_expand = nn.Conv2d(r, m, 1, **fk)
        self.project = nn.Conv2d(m, d_model, 1, bias=False, **fk)
        self.project_bn = nn.BatchNorm2d(d_model, eps=bn_eps, **fk)
        self.dwconv2 = DepthwiseConv(d_model, bn_eps=bn_eps, bn_init=1.0, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dwconv1(x)
        y = F.relu(conv_bn(_nchw(x), self.expand, self.expand_bn))
        y = F.relu(conv_bn(y, self.down, self.down_bn))
        gate = self.se_expand(F.relu(self.se_reduce(y.mean(dim=(2, 3), keepdim=True))))
        y = _nhwc(conv_bn(y * torch.sigmoid(gate), self.project, self.project_bn))
        return y + self.dwconv2(y)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        def relu(t: torch.Tensor) -> torch.Tensor:
            return torch.where(t > 0, t, torch.zeros_like(t))

        x = x + self.dwconv1.reference(x)
        y = relu(batch_norm_reference(conv_reference(x, self.expand), self.expand_bn))
        y = relu(batch_norm_reference(conv_reference(y, self.down), self.down_bn))
        h, w = y.shape[1], y.shape[2]
        pooled = sum(y[:, i, j] for i in range(h) for j in range(w)) / (h * w)  # [B, m]
        squeezed = relu(pooled @ self.se_reduce.weight[:, :, 0, 0].T + self.se_reduce.bias)
        gate = squeezed @ self.se_expand.weight[:, :, 0, 0].T + self.se_expand.bias
        y = y * (1 / (1 + torch.exp(-gate)))[:, None, None, :]
        y = batch_norm_reference(conv_reference(y, self.project), self.project_bn)
        return y + self.dwconv2.reference(y)


class HiddenStateFusionHead(nn.Module):
    """``(x [B, H, W, D], h_1 [B, N_1, D_1], ...) -> logits``: see the op's docstring.

    >>> head = HiddenStateFusionHead(6, num_classes=3, stage_widths=(4, 6))
    >>> head(torch.randn(2, 3, 3, 6), torch.randn(2, 5, 4), torch.randn(2, 2, 6)).shape
    torch.Size([2, 3])
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_classes: int,
        stage_widths: tuple[int, ...],
        norm_eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        # mixing logits: the stages' heads, then the pooled grid's (official init: ones)
        self.weights = nn.Parameter(torch.ones(len(stage_widths) + 1, **fk))
        self.norms = nn.ModuleList(nn.LayerNorm(d, eps=norm_eps, **fk) for d in stage_widths)
        self.heads = nn.ModuleList(nn.Linear(d, num_classes, **fk) for d in stage_widths)
        self.head = nn.Linear(d_model, num_classes, **fk)
        for linear in [*self.heads, self.head]:  # official: trunc_normal(std .02), zero bias
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor, *states: torch.Tensor) -> torch.Tensor:
        w = self.weights.softmax(dim=0)
        logits = w[-1] * self.head(x.mean(dim=(1, 2)))
        for i, (state, norm, head) in enumerate(zip(states, self.norms, self.heads, strict=True)):
            logits = logits + w[i] * head(norm(state).mean(dim=1))
        return logits

    def reference(self, x: torch.Tensor, *states: torch.Tensor) -> torch.Tensor:
        exps = torch.exp(self.weights - self.weights.max())
        w = exps / exps.sum()
        h, ww = x.shape[1], x.shape[2]
        pooled = sum(x[:, i, j] for i in range(h) for j in range(ww)) / (h * ww)
        logits = w[-1] * (pooled @ self.head.weight.T + self.head.bias)
        for i, state in enumerate(states):
            norm, head = self.norms[i], self.heads[i]
            mean = state.mean(-1, keepdim=True)
            var = ((state - mean) ** 2).mean(-1, keepdim=True)
            normed = (state - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
            column_mean = sum(normed[:, n] for n in range(state.shape[1])) / state.shape[1]
            logits = logits + w[i] * (column_mean @ head.weight.T + head.bias)
        return logits
