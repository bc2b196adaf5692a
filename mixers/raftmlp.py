"""RaftMLP's cross-scale embedding (archgen.ir.ops.CrossScaleEmbed has the math and sources).

The production ``forward`` is a sum of strided convolutions, one per kernel size, plus one bias;
the ``reference`` is the paper's formulation written out: unfold each kernel's zero-padded patch
at every output position, concatenate them, apply one linear map.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class CrossScaleEmbed(nn.Module):
    """``[B, H, W, in_channels] -> [B, H/stride, W/stride, d_model]``.

    >>> CrossScaleEmbed(8, in_channels=3, stride=2, kernels=(2, 4))(torch.randn(1, 6, 10, 3)).shape
    torch.Size([1, 3, 5, 8])
    """

    def __init__(
        self,
        d_model: int,
        *,
        in_channels: int,
        stride: int = 4,
        kernels: tuple[int, ...] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kernels = tuple(kernels) if kernels is not None else (stride, 2 * stride)
        for k in kernels:
            if k % stride or (k - stride) % 2:
                raise ValueError(f"kernel {k} is not stride {stride} times n with k - s even")
        self.stride, self.kernels = stride, kernels
        fk = {"device": device, "dtype": dtype}
        # one linear map over the concatenated patches, split by kernel: the conv weights
        # together are its weight, so they share its fan-in (nn.Linear's default init)
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, d_model, k, stride, (k - stride) // 2, bias=False, **fk)
            for k in kernels
        )
        self.bias = nn.Parameter(torch.empty(d_model, **fk))
        bound = 1.0 / math.sqrt(sum(k * k for k in kernels) * in_channels)
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, H, W, Cin] -> [B, H/s, W/s, D]
        image = x.permute(0, 3, 1, 2)
        out = self.convs[0](image)
        for conv in self.convs[1:]:
            out = out + conv(image)
        return out.permute(0, 2, 3, 1) + self.bias

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, cin = x.shape
        s = self.stride
        # the linear map's weight [D, sum k^2 Cin]: each kernel's block ordered (ky, kx, c)
        weight = torch.cat([c.weight.permute(0, 2, 3, 1).reshape(c.weight.shape[0], -1)
                            for c in self.convs], dim=1)  # fmt: skip
        rows = []
        for oy in range(h // s):
            cols = []
            for ox in range(w // s):
                patches = []
                for k in self.kernels:
                    pad = (k - s) // 2
                    patch = x.new_zeros(b, k, k, cin)
                    for ky in range(k):
                        for kx in range(k):
                            y, xx = oy * s - pad + ky, ox * s - pad + kx
                            if 0 <= y < h and 0 <= xx < w:
                                patch[:, ky, kx] = x[:, y, xx]
                    patches.append(patch.reshape(b, -1))
                cols.append(torch.cat(patches, dim=-1) @ weight.T + self.bias)
            rows.append(torch.stack(cols, dim=1))
        return torch.stack(rows, dim=1)
