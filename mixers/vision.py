"""Torch modules of the image-classification graph's ends and the channel / token mixers of the
vision papers, over channels-last grids ``[B, H, W, C]`` (archgen.ir.ops.vision).

Each has a production ``forward`` (convolutions, reshapes) and a plainly written ``reference``
(explicit loops over kernel offsets, rows and columns) that tests compare in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archgen.mixers.base import ChannelMixer, TokenMixer


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x[:, y + dy, x + dx]`` at every ``(y, x)`` of a ``[B, H, W, C]`` grid, zero outside."""
    h, w = x.shape[1], x.shape[2]
    out = torch.zeros_like(x)
    ys, ye = max(0, -dy), min(h, h - dy)
    xs, xe = max(0, -dx), min(w, w - dx)
    if ys < ye and xs < xe:
        out[:, ys:ye, xs:xe] = x[:, ys + dy : ye + dy, xs + dx : xe + dx]
    return out


class PatchEmbed(nn.Module):
    """Strided conv (``kernel``, ``stride``; padding ``kernel // 2`` if overlapping) + LayerNorm."""

    def __init__(
        self,
        d_model: int,
        *,
        in_channels: int,
        norm_eps: float = 1e-6,
        stride: int = 4,
        kernel: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kernel = kernel or stride
        self.stride, self.kernel = stride, kernel
        self.padding = 0 if kernel == stride else kernel // 2
        fk = {"device": device, "dtype": dtype}
        self.proj = nn.Conv2d(in_channels, d_model, kernel, stride, self.padding, **fk)
        self.norm = nn.LayerNorm(d_model, eps=norm_eps, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, H, W, Cin] -> [B, H/s, W/s, D]
        y = self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.norm(y)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        s, k, p = self.stride, self.kernel, self.padding
        weight = self.proj.weight  # [D, Cin, k, k]
        out = x.new_zeros(b, h // s, w // s, weight.shape[0])
        for oy in range(h // s):
            for ox in range(w // s):
                acc = self.proj.bias.expand(b, -1).clone()
                for ky in range(k):
                    for kx in range(k):
                        y, xx = oy * s - p + ky, ox * s - p + kx
                        if 0 <= y < h and 0 <= xx < w:
                            acc = acc + x[:, y, xx] @ weight[:, :, ky, kx].T
                out[:, oy, ox] = acc
        mean = out.mean(-1, keepdim=True)
        var = ((out - mean) ** 2).mean(-1, keepdim=True)
        normed = (out - mean) / torch.sqrt(var + self.norm.eps)
        return normed * self.norm.weight + self.norm.bias


class PatchMerge(nn.Module):
    """Swin patch merging: concat each ``factor x factor`` neighbourhood, LayerNorm, linear."""

    def __init__(
        self,
        d_model: int,
        *,
        in_channels: int,
        norm_eps: float = 1e-6,
        factor: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.factor = factor
        merged = factor * factor * in_channels
        fk = {"device": device, "dtype": dtype}
        self.norm = nn.LayerNorm(merged, eps=norm_eps, **fk)
        self.reduction = nn.Linear(merged, d_model, bias=False, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        f = self.factor
        # channel order of the merged vector: (row offset, column offset, channel)
        x = x.reshape(b, h // f, f, w // f, f, c).permute(0, 1, 3, 2, 4, 5)
        return self.reduction(self.norm(x.reshape(b, h // f, w // f, f * f * c)))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1], x.shape[2]
        f = self.factor
        rows = []
        for oy in range(h // f):
            cols = []
            for ox in range(w // f):
                parts = [x[:, oy * f + dy, ox * f + dx] for dy in range(f) for dx in range(f)]
                cols.append(torch.cat(parts, dim=-1))
            rows.append(torch.stack(cols, dim=1))
        merged = torch.stack(rows, dim=1)
        return self.reduction(F.layer_norm(merged, merged.shape[-1:], self.norm.weight,
                                           self.norm.bias, self.norm.eps))  # fmt: skip


class ClassifierHead(nn.Module):
    """Mean over the grid, then a linear map to class logits."""

    def __init__(
        self,
        d_model: int,
        *,
        num_classes: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, num_classes, device=device, dtype=dtype)
        # timm's init of transformer heads: small weights, zero bias (near-uniform classes at
        # first; not all zero, so an untrained model's logits still depend on its input)
        nn.init.normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, H, W, D] -> [B, classes]
        return self.fc(x.mean(dim=(1, 2)))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1], x.shape[2]
        total = sum(x[:, y, xx] for y in range(h) for xx in range(w))
        return self.fc(total / (h * w))


class ConvGLU(ChannelMixer):
    """TransNeXt's convolutional GLU: ``fc2(gelu(dwconv(g)) * v)`` with ``[g, v] = fc1(x)``.

    >>> ConvGLU(16, hidden=10)(torch.randn(2, 5, 7, 16)).shape
    torch.Size([2, 5, 7, 16])
    """

    def __init__(
        self,
        d_model: int,
        *,
        mlp_ratio: float = 4.0,
        hidden: int | None = None,
        kernel: int = 3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden = hidden or max(1, int(2 * int(d_model * mlp_ratio) / 3))
        fk = {"device": device, "dtype": dtype}
        self.hidden, self.kernel = hidden, kernel
        self.fc1 = nn.Linear(d_model, 2 * hidden, **fk)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden, **fk)
        self.fc2 = nn.Linear(hidden, d_model, **fk)

    def output_projection(self) -> nn.Linear:
        return self.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, v = self.fc1(x).chunk(2, dim=-1)
        g = self.dwconv(g.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(F.gelu(g) * v)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden
        gv = x @ self.fc1.weight.T + self.fc1.bias
        g, v = gv[..., :h], gv[..., h:]
        r = self.kernel // 2
        conv = self.dwconv.bias.expand_as(g).clone()
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                conv = conv + _shifted(g, dy, dx) * self.dwconv.weight[:, 0, dy + r, dx + r]
        gelu = 0.5 * conv * (1 + torch.erf(conv / 2**0.5))
        return (gelu * v) @ self.fc2.weight.T + self.fc2.bias


class RaftTokenMixer(TokenMixer):
    """RaftMLP's raft token mixing along one axis (archgen.ir.ops.RaftTokenMixer has the math).

    >>> RaftTokenMixer(8, height=5, width=3, axis="vertical")(torch.randn(2, 5, 3, 8)).shape
    torch.Size([2, 5, 3, 8])
    """

    def __init__(
        self,
        d_model: int,
        *,
        height: int,
        width: int,
        axis: str = "vertical",
        raft_size: int = 2,
        expansion: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if d_model % raft_size:
            raise ValueError(f"d_model {d_model} is not divisible by raft_size {raft_size}")
        self.axis, self.r = axis, raft_size
        self.length = height if axis == "vertical" else width
        n = raft_size * self.length
        fk = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(n, expansion * n, **fk)
        self.fc2 = nn.Linear(expansion * n, n, **fk)

    def output_projection(self) -> nn.Linear:
        return self.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis == "horizontal":
            return self._mix_columns(x.transpose(1, 2)).transpose(1, 2)
        return self._mix_columns(x)

    def _mix_columns(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        r, q = self.r, c // self.r
        # channel a * q + bb: [B, H, W, r, q] -> [B, W, q, r, H] -> vectors of r * H, a major
        v = x.reshape(b, h, w, r, q).permute(0, 2, 4, 3, 1).reshape(b, w, q, r * h)
        v = self.fc2(F.gelu(self.fc1(v)))
        return v.reshape(b, w, q, r, h).permute(0, 4, 1, 3, 2).reshape(b, h, w, c)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        h, w, c = x.shape[1:]
        r, q = self.r, c // self.r
        out = torch.zeros_like(x)
        lines = w if self.axis == "vertical" else h
        for line in range(lines):
            for bb in range(q):
                # the vector v[a * length + t] of raft bb along this column (row)
                parts = []
                for a in range(r):
                    if self.axis == "vertical":
                        parts.append(x[:, :, line, a * q + bb])
                    else:
                        parts.append(x[:, line, :, a * q + bb])
                v = torch.cat(parts, dim=-1)
                hidden = v @ self.fc1.weight.T + self.fc1.bias
                hidden = 0.5 * hidden * (1 + torch.erf(hidden / 2**0.5))
                y = hidden @ self.fc2.weight.T + self.fc2.bias
                for a in range(r):
                    seg = y[:, a * self.length : (a + 1) * self.length]
                    if self.axis == "vertical":
                        out[:, :, line, a * q + bb] = seg
                    else:
                        out[:, line, :, a * q + bb] = seg
        return out
