"""JustDense: a learned dense token-mixing matrix (arXiv 2508.09153; research/mixers.md §10).

Per head ``n`` (``heads`` heads of ``p = D / heads`` contiguous channels) a learned matrix
``M_n`` of shape ``[L_max, L_max]`` mixes the tokens, with an internal residual:

    y[:, :, n] = x[:, :, n] + c * M_n[:L, :L] @ x[:, :, n]

There are no input/output projections: JustDense's Transformer-family models apply this module
directly to the block input (its Mamba-family models wrap it in Hydra's in_proj/out_proj, which
belong to the surrounding block, not to the mixer). ``M`` is initialised with
``nn.init.xavier_normal_`` on the whole ``[heads, L_max, L_max]`` tensor, as the Hydra ``Dense``
module that JustDense builds on does. Sequences shorter than ``L_max`` use the leading ``L x L``
block; longer ones are an error. ``causal=True`` masks ``M`` to its lower triangle (the published
mixer is non-causal). In a vision stage (``causal=False`` only) the grid ``[B, H, W, D]`` is mixed
flattened row-major, with ``max_seq_len = H * W`` from the stage: a fixed image size.

The scale ``c``. Hydra's ``Dense`` (goombalab/hydra, ``hydra/modules/matrix_mixers/dense.py``)
multiplies by the constant ``1 / sqrt(max_seq_len)``; it only accepts ``L == max_seq_len``, so
"``1/sqrt(L)``" and "``1/sqrt(L_max)``" agree there. For ``L < L_max`` we default to the constant
(``scale_by_length=False``), which keeps the causal variant truly causal: output ``i`` depends on
tokens ``<= i`` only, never on how long the sequence turns out to be, so decoding equals
``forward``. ``scale_by_length=True`` uses ``1/sqrt(L)`` of the actual length; then output ``i``
depends on the final ``L``, which a decoder cannot know at step ``i``, and ``step`` raises.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from archgen.mixers.base import DecodeState, TokenMixer


class DenseMixer(TokenMixer):
    """Learned ``[heads, L_max, L_max]`` token mixing with an internal residual (JustDense).

    >>> m = DenseMixer(24, max_seq_len=40, heads=2)
    >>> x = torch.randn(2, 37, 24)
    >>> m(x).shape
    torch.Size([2, 37, 24])
    >>> y0, state = m.step(x[:, 0], m.init_state(2), torch.tensor(0))
    >>> torch.allclose(y0, m(x)[:, 0], atol=1e-6)
    True
    """

    def __init__(
        self,
        d_model: int,
        *,
        max_seq_len: int,
        heads: int = 1,
        causal: bool = True,
        scale_by_length: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of heads ({heads})")
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        self.d_model, self.heads, self.head_dim = d_model, heads, d_model // heads
        self.max_seq_len, self.causal, self.scale_by_length = max_seq_len, causal, scale_by_length
        self.mixing = nn.Parameter(
            torch.empty(heads, max_seq_len, max_seq_len, device=device, dtype=dtype)
        )
        nn.init.xavier_normal_(self.mixing)

    def _check_length(self, n: int) -> None:
        if n > self.max_seq_len:
            raise ValueError(
                f"DenseMixer was built for sequences of at most max_seq_len={self.max_seq_len} "
                f"tokens (its mixing matrix is {self.max_seq_len}x{self.max_seq_len}), got {n}"
            )

    def _scale(self, n: int) -> float:
        if self.scale_by_length:
            # sym_float keeps a traced length symbolic (math.sqrt would bake it into an export)
            return torch.sym_float(n) ** -0.5
        return 1.0 / math.sqrt(self.max_seq_len)

    def matrix(self, n: int) -> torch.Tensor:
        """The ``[heads, n, n]`` mixing matrix used for length ``n`` (masked if causal)."""
        m = self.mixing[:, :n, :n]
        return m.tril() if self.causal else m

    # -- production ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # a vision stage's grid [B, H, W, D]: mixed flattened row-major
            return self.forward(x.flatten(1, 2)).view(x.shape)
        b, n, _ = x.shape
        self._check_length(n)
        xh = x.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # [B, H, L, p]
        y = (self.matrix(n) @ xh) * self._scale(n)  # [H, L, L] broadcast over B
        return x + y.transpose(1, 2).reshape(b, n, self.d_model)

    # -- reference -----------------------------------------------------------------------------
    def reference(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # row-major flattening of a grid, as forward
            return self.reference(x.flatten(1, 2)).view(x.shape)
        b, n, _ = x.shape
        self._check_length(n)
        scale = self._scale(n)
        xh = x.view(b, n, self.heads, self.head_dim)
        rows = []
        for i in range(n):
            acc = torch.zeros_like(xh[:, 0])  # [B, H, p]
            for j in range(i + 1 if self.causal else n):
                acc = acc + self.mixing[:, i, j, None] * xh[:, j]
            rows.append(xh[:, i] + scale * acc)
        return torch.stack(rows, dim=1).reshape(b, n, self.d_model)

    # -- decoding: the state is every past input --------------------------------------------
    def _check_decodable(self) -> None:
        if not self.causal:
            raise NotImplementedError("a non-causal DenseMixer (causal=False) cannot decode")
        if self.scale_by_length:
            raise NotImplementedError(
                "DenseMixer(scale_by_length=True) cannot decode: forward scales every output by "
                "1/sqrt(L) of the final length L, which is unknown while decoding token t "
                "(use scale_by_length=False, the constant 1/sqrt(max_seq_len) of the reference)"
            )

    def init_state(
        self,
        batch: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_len: int | None = None,
    ) -> DecodeState:
        self._check_decodable()
        dtype = dtype or self.mixing.dtype
        return (torch.zeros(batch, 0, self.d_model, device=device, dtype=dtype),)

    def step(
        self,
        x: torch.Tensor,
        state: DecodeState,
        pos: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DecodeState]:
        """Appends ``x`` to the past inputs and applies row ``pos`` of ``M``; the cache length
        is ``pos + 1`` by construction (one entry per step)."""
        self._check_decodable()
        if mask is not None or pos.dim() > 0:
            # M mixes absolute positions 0..pos of one shared cache: padding would shift them.
            raise NotImplementedError(
                "DenseMixer cannot decode padded batches (per-sequence positions or a mask): "
                "decode one sequence at a time"
            )
        past = torch.cat([state[0], x[:, None]], dim=1)  # [B, t+1, D]
        b, n, _ = past.shape
        self._check_length(n)
        row = self.mixing.index_select(1, pos.reshape(1))[:, :, :n]  # [H, 1, t+1]
        ph = past.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # [B, H, t+1, p]
        y = (row @ ph)[:, :, 0] * self._scale(n)  # [B, H, p]
        return x + y.reshape(b, self.d_model), (past,)
