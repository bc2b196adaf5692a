"""Torch modules of iFormer (archgen.ir.ops.iformer has the math): the inception token mixer,
the LayerScale MLP and the conv + BatchNorm downsampling with its position embedding.

Grids are channels-last ``[B, H, W, C]``. Each module has a production ``forward`` (convolutions,
pooling, scaled-dot-product attention, ``interpolate``) and a plainly written ``reference``
(explicit loops over kernel offsets, pooling windows, heads and output pixels) that the tests
compare in float64.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from archgen.mixers.base import TokenMixer
from archgen.mixers.channel import MLP
from archgen.mixers.vision import _shifted

KERNEL = 3


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / 2**0.5))


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _depthwise_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """3x3 depthwise conv (zero padding, no bias) of a ``[B, H, W, C]`` grid, offset by offset."""
    out = torch.zeros_like(x)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out = out + _shifted(x, dy, dx) * weight[:, 0, dy + 1, dx + 1]
    return out


class InceptionMixer(TokenMixer):
    """iFormer's inception mixer: conv and max-pool high-frequency paths, pooled attention.

    >>> InceptionMixer(12, height=4, width=6, heads=3, attention_heads=1)(
    ...     torch.randn(2, 4, 6, 12)).shape
    torch.Size([2, 4, 6, 12])
    """

    def __init__(
        self,
        d_model: int,
        *,
        height: int,
        width: int,
        heads: int,
        attention_heads: int,
        pool: int = 2,
        upsample: str = "nearest",
        qkv_bias: bool = True,
        layer_scale: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        # height / width are the stage's grid; the op checks the pool divides it, and forward
        # reads the grid from its input
        del height, width
        head_dim = d_model // heads
        self.low = attention_heads * head_dim
        self.high = d_model - self.low
        if d_model % heads or not 0 < self.low < d_model or self.high % 2:
            raise ValueError(
                f"inception: width {d_model}, heads {heads}, attention_heads {attention_heads} "
                "do not split into an even high-frequency part and a low-frequency part"
            )
        self.half = self.high // 2
        self.attention_heads, self.head_dim, self.pool, self.upsample = (
            attention_heads,
            head_dim,
            pool,
            upsample,
        )
        fused = 2 * self.high + self.low
        fk = {"device": device, "dtype": dtype}
        # high frequency, conv path: 1x1 widening conv, 3x3 depthwise conv (no biases)
        self.conv_in = nn.Linear(self.half, self.high, bias=False, **fk)
        self.conv_dw = nn.Conv2d(self.high, self.high, KERNEL, padding=1, groups=self.high,
                                 bias=False, **fk)  # fmt: skip
        # high frequency, max-pool path: 3x3 max pool, 1x1 widening conv
        self.pool_proj = nn.Linear(self.half, self.high, **fk)
        # low frequency: attention over the pooled grid (no output projection, as iFormer)
        self.qkv = nn.Linear(self.low, 3 * self.low, bias=qkv_bias, **fk)
        # fusion: y + dwconv3x3(y), then the 1x1 projection back to d_model
        self.fuse_dw = nn.Conv2d(fused, fused, KERNEL, padding=1, groups=fused, bias=False, **fk)
        self.proj = nn.Linear(fused, d_model, **fk)
        self.scale = (
            nn.Parameter(torch.full((d_model,), float(layer_scale), **fk))
            if layer_scale is not None
            else None
        )

    def output_projection(self) -> nn.Linear:
        return self.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, H, W, C] -> [B, H, W, C]
        conv_x, pool_x, low_x = x.split([self.half, self.half, self.low], dim=-1)
        conv_y = F.gelu(_to_nhwc(self.conv_dw(_to_nchw(self.conv_in(conv_x)))))
        pooled = _to_nhwc(F.max_pool2d(_to_nchw(pool_x), KERNEL, stride=1, padding=1))
        pool_y = F.gelu(self.pool_proj(pooled))
        y = torch.cat([conv_y, pool_y, self._low(low_x)], dim=-1)
        y = self.proj(y + _to_nhwc(self.fuse_dw(_to_nchw(y))))
        return y * self.scale if self.scale is not None else y

    def _low(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pool
        grid = _to_nchw(x)
        if p > 1:
            grid = F.avg_pool2d(grid, p, stride=p)
        b, c, h, w = grid.shape
        tokens = grid.flatten(2).transpose(1, 2)  # [B, h*w, C_l]
        q, k, v = (
            self.qkv(tokens)
            .reshape(b, h * w, 3, self.attention_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, h*w, d]
        grid = out.transpose(2, 3).reshape(b, c, h, w)  # channel = head * d + i
        if p > 1:
            align = {} if self.upsample == "nearest" else {"align_corners": False}
            grid = F.interpolate(grid, scale_factor=p, mode=self.upsample, **align)
        return _to_nhwc(grid)

    # -- reference -----------------------------------------------------------------------------
    def reference(self, x: torch.Tensor) -> torch.Tensor:
        half, low = self.half, self.low
        conv_x, pool_x, low_x = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
        conv_y = _gelu(_depthwise_reference(conv_x @ self.conv_in.weight.T, self.conv_dw.weight))
        pooled = torch.full_like(pool_x, -math.inf)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = _shifted(pool_x, dy, dx)
                inside = _shifted(torch.ones_like(pool_x), dy, dx) > 0
                pooled = torch.where(inside, torch.maximum(pooled, shifted), pooled)
        pool_y = _gelu(pooled @ self.pool_proj.weight.T + self.pool_proj.bias)
        y = torch.cat([conv_y, pool_y, self._low_reference(low_x)], dim=-1)
        assert y.shape[-1] == 2 * self.high + low
        y = y + _depthwise_reference(y, self.fuse_dw.weight)
        y = y @ self.proj.weight.T + self.proj.bias
        return y * self.scale if self.scale is not None else y

    def _low_reference(self, x: torch.Tensor) -> torch.Tensor:
        b, big_h, big_w, c = x.shape
        p = self.pool
        h, w = big_h // p, big_w // p
        pooled = x.new_zeros(b, h, w, c)
        for y in range(h):
            for xx in range(w):
                window = x[:, y * p : (y + 1) * p, xx * p : (xx + 1) * p]
                pooled[:, y, xx] = window.sum(dim=(1, 2)) / (p * p)
        tokens = pooled.reshape(b, h * w, c)
        qkv = tokens @ self.qkv.weight.T
        if self.qkv.bias is not None:
            qkv = qkv + self.qkv.bias
        d = self.head_dim
        heads = []
        for head in range(self.attention_heads):
            q = qkv[..., head * d : (head + 1) * d]
            k = qkv[..., c + head * d : c + (head + 1) * d]
            v = qkv[..., 2 * c + head * d : 2 * c + (head + 1) * d]
            scores = q @ k.transpose(1, 2) / math.sqrt(d)
            weights = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
            heads.append(weights / weights.sum(dim=-1, keepdim=True) @ v)
        small = torch.cat(heads, dim=-1).reshape(b, h, w, c)
        return self._upsample_reference(small, big_h, big_w)

    def _upsample_reference(self, small: torch.Tensor, big_h: int, big_w: int) -> torch.Tensor:
        """Nearest: output pixel (y, x) is pooled pixel (y // p, x // p). Bilinear (half-pixel
        centres, as ``align_corners=False``): source row ``(y + 0.5) / p - 0.5`` clamped at 0,
        blended between its two neighbouring rows; the same along columns."""
        p, h, w = self.pool, small.shape[1], small.shape[2]
        out = small.new_zeros(small.shape[0], big_h, big_w, small.shape[3])
        for y in range(big_h):
            for xx in range(big_w):
                if self.upsample == "nearest":
                    out[:, y, xx] = small[:, y // p, xx // p]
                    continue
                sy, sx = max((y + 0.5) / p - 0.5, 0.0), max((xx + 0.5) / p - 0.5, 0.0)
                y0, x0 = int(sy), int(sx)
                y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
                fy, fx = sy - y0, sx - x0
                out[:, y, xx] = (
                    (1 - fy) * (1 - fx) * small[:, y0, x0]
                    + (1 - fy) * fx * small[:, y0, x1]
                    + fy * (1 - fx) * small[:, y1, x0]
                    + fy * fx * small[:, y1, x1]
                )
        return out


class LayerScaleMLP(MLP):
    """``scale * down_proj(gelu(up_proj(x)))``, the scale learned per channel.

    >>> LayerScaleMLP(8, hidden=16)(torch.randn(2, 3, 5, 8)).shape
    torch.Size([2, 3, 5, 8])
    """

    def __init__(
        self,
        d_model: int,
        *,
        hidden: int | None = None,
        layer_scale: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(d_model, hidden=hidden, device=device, dtype=dtype)
        self.scale = nn.Parameter(torch.full((d_model,), float(layer_scale), device=device,
                                             dtype=dtype))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(x.shape[0], -1, x.shape[-1])  # the MLP's reference takes [B, L, D]
        return (super().reference(tokens) * self.scale).reshape(x.shape)


class ConvBNEmbed(nn.Module):
    """3x3 stride-2 conv(s) with BatchNorm (the stem: two, GELU between), plus a learned
    position embedding of the output grid."""

    def __init__(
        self,
        d_model: int,
        *,
        in_channels: int,
        height: int,
        width: int,
        stride: int = 2,
        position_embedding: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        widths = [in_channels, d_model // 2, d_model] if stride == 4 else [in_channels, d_model]
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, KERNEL, stride=2, padding=1, **fk)
            for c_in, c_out in itertools.pairwise(widths)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(c, **fk) for c in widths[1:])
        self.position = None
        if position_embedding:
            self.position = nn.Parameter(torch.zeros(height, width, d_model, **fk))
            nn.init.trunc_normal_(self.position, std=0.02)  # iFormer's (ViT's) init

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, H, W, Cin] -> [B, H/s, W/s, D]
        y = _to_nchw(x)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            y = F.gelu(y) if i else y
            y = norm(conv(y))
        y = _to_nhwc(y)
        return y + self.position if self.position is not None else y

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            y = _gelu(y) if i else y
            y = self._batch_norm_reference(self._conv_reference(y, conv), norm)
        return y + self.position if self.position is not None else y

    @staticmethod
    def _conv_reference(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        b, h, w, _ = x.shape
        out = x.new_zeros(b, (h + 1) // 2, (w + 1) // 2, conv.out_channels)
        for oy in range(out.shape[1]):
            for ox in range(out.shape[2]):
                acc = conv.bias.expand(b, -1).clone()
                for ky in range(KERNEL):
                    for kx in range(KERNEL):
                        y, xx = 2 * oy - 1 + ky, 2 * ox - 1 + kx
                        if 0 <= y < h and 0 <= xx < w:
                            acc = acc + x[:, y, xx] @ conv.weight[:, :, ky, kx].T
                out[:, oy, ox] = acc
        return out

    @staticmethod
    def _batch_norm_reference(x: torch.Tensor, norm: nn.BatchNorm2d) -> torch.Tensor:
        """Training: the batch's statistics over (B, H, W), biased variance; eval: running."""
        if norm.training:
            mean = x.mean(dim=(0, 1, 2))
            var = ((x - mean) ** 2).mean(dim=(0, 1, 2))
        else:
            assert norm.running_mean is not None and norm.running_var is not None
            mean, var = norm.running_mean, norm.running_var
        return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
