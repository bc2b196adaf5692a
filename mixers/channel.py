"""Channel mixers (position-wise MLPs) and norms.

Channel mixers have no sequence dimension to chunk, so ``forward`` and ``reference`` differ only
in how they are written: ``reference`` spells out each token's computation with explicit
matrix-vector products, which is what the tests compare against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archgen.mixers.base import ChannelMixer

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}


def _per_token(x: torch.Tensor, fn: object) -> torch.Tensor:
    """Apply ``fn`` to every token vector separately (the loop-level reference shape)."""
    b, n, _ = x.shape
    rows = [fn(x[i, t]) for i in range(b) for t in range(n)]  # type: ignore[operator]
    return torch.stack(rows).view(b, n, -1)


def _matvec(layer: nn.Linear, v: torch.Tensor) -> torch.Tensor:
    out = layer.weight @ v
    return out + layer.bias if layer.bias is not None else out


class MLP(ChannelMixer):
    """``down_proj(act(up_proj(x)))``.

    >>> MLP(16, hidden=64)(torch.randn(2, 3, 16)).shape
    torch.Size([2, 3, 16])
    """

    def __init__(
        self,
        d_model: int,
        *,
        hidden: int | None = None,
        activation: str = "gelu",
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden = hidden or 4 * d_model
        fk = {"device": device, "dtype": dtype}
        self.act = ACTIVATIONS[activation]
        self.up_proj = nn.Linear(d_model, hidden, bias=bias, **fk)
        self.down_proj = nn.Linear(hidden, d_model, bias=bias, **fk)

    def output_projection(self) -> nn.Linear:
        return self.down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return _per_token(x, lambda v: _matvec(self.down_proj, self.act(_matvec(self.up_proj, v))))


class SwiGLU(ChannelMixer):
    """``down_proj(silu(gate_proj(x)) * up_proj(x))`` with Llama's names.

    >>> SwiGLU(16, hidden=48)(torch.randn(2, 3, 16)).shape
    torch.Size([2, 3, 16])
    """

    def __init__(
        self,
        d_model: int,
        *,
        hidden: int,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.gate_proj = nn.Linear(d_model, hidden, bias=bias, **fk)
        self.up_proj = nn.Linear(d_model, hidden, bias=bias, **fk)
        self.down_proj = nn.Linear(hidden, d_model, bias=bias, **fk)

    def output_projection(self) -> nn.Linear:
        return self.down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        def one(v: torch.Tensor) -> torch.Tensor:
            gate = _matvec(self.gate_proj, v)
            gate = gate / (1 + torch.exp(-gate))
            return _matvec(self.down_proj, gate * _matvec(self.up_proj, v))

        return _per_token(x, one)


class RMSNorm(nn.RMSNorm):
    """torch's RMSNorm plus the written-out formula as ``reference``."""

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        assert self.eps is not None
        rms = torch.sqrt((x * x).mean(dim=-1, keepdim=True) + self.eps)
        return x / rms * self.weight


class LayerNorm(nn.LayerNorm):
    """torch's LayerNorm plus the written-out formula as ``reference``."""

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias
