"""The Dynamic Spectrum Mixer, reconstructed (see archgen.ir.ops.DynamicSpectrumMixer for what
is the paper's and what is not): a content-routed filter on the 2-D DCT spectrum of a grid.

``forward`` applies the orthonormal DCT-II as two matmuls with cosine matrices (exportable: no
DFT op); ``reference`` writes the DCT as its cosine sums, frequency by frequency.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archgen.mixers.base import TokenMixer


def dct_matrix(n: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Orthonormal DCT-II: ``D[k, i] = a_k cos(pi (2i + 1) k / 2n)``; its inverse is ``D.T``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.to(dtype or torch.get_default_dtype())


class DynamicSpectrumMixer(TokenMixer):
    """``[B, H, W, C] -> [B, H, W, C]`` on a fixed ``height x width`` grid.

    >>> DynamicSpectrumMixer(8, height=5, width=3)(torch.randn(2, 5, 3, 8)).shape
    torch.Size([2, 5, 3, 8])
    """

    def __init__(
        self,
        d_model: int,
        *,
        height: int,
        width: int,
        expansion: int = 2,
        filters: int = 4,
        reweight: float = 0.25,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        inner, hidden = expansion * d_model, max(1, int(d_model * reweight))
        self.inner, self.filters = inner, filters
        self.in_proj = nn.Linear(d_model, inner, bias=False, **fk)
        self.route_in = nn.Linear(d_model, hidden, **fk)
        self.route_out = nn.Linear(hidden, filters * inner, **fk)
        # start near the identity filter (every band passed), as a residual branch should
        self.bases = nn.Parameter(1 + 0.02 * torch.randn(filters, height, width, **fk))
        self.out_proj = nn.Linear(inner, d_model, bias=False, **fk)

    def output_projection(self) -> nn.Linear:
        return self.out_proj

    def _routing(self, x: torch.Tensor) -> torch.Tensor:  # [B, K, C']
        a = self.route_out(F.gelu(self.route_in(x.mean(dim=(1, 2)))))
        return a.view(x.shape[0], self.filters, self.inner).softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self._routing(x)
        v = F.gelu(self.in_proj(x))  # [B, H, W, C']
        # built per call in the input's dtype (exact in float64; not state, not a checkpoint
        # entry); an exported graph holds them as constants
        dh = dct_matrix(x.shape[1], v.dtype).to(v.device)
        dw = dct_matrix(x.shape[2], v.dtype).to(v.device)
        spectrum = torch.einsum("uh,bhwc,vw->buvc", dh, v, dw)
        gain = torch.einsum("bkc,kuv->buvc", a, self.bases)
        y = torch.einsum("uh,buvc,vw->bhwc", dh, spectrum * gain, dw)
        return self.out_proj(y)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1], x.shape[2]
        a = self._routing(x)
        v = F.gelu(self.in_proj(x))
        ys, xs = torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype)

        def basis(u: int, n: int, pos: torch.Tensor) -> torch.Tensor:
            scale = math.sqrt((1 if u == 0 else 2) / n)
            return scale * torch.cos(math.pi * (2 * pos + 1) * u / (2 * n))

        out = torch.zeros_like(v)
        for u in range(h):
            for f in range(w):
                wave = basis(u, h, ys)[:, None] * basis(f, w, xs)[None, :]  # [H, W]
                coefficient = (v * wave[None, :, :, None]).sum(dim=(1, 2))  # [B, C']
                gain = sum(a[:, k] * self.bases[k, u, f] for k in range(self.filters))
                out = out + (coefficient * gain)[:, None, None, :] * wave[None, :, :, None]
        return self.out_proj(out)
