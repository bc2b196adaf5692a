"""Sliding-window attention (SWA) with grouped-query heads and RoPE.

Window convention: query ``i`` sees keys ``j`` with ``i - w < j <= i`` -- exactly ``w`` keys
including itself (fewer at the start). This is flash-attn's ``window_size=(w - 1, 0)``; note that
Hugging Face's ``sliding_window=w`` admits ``w + 1`` keys. Without causality (``causal=False``,
a masked-diffusion denoiser) the window is symmetric, the same reach on both sides:
``|i - j| < w``, up to ``2w - 1`` keys (flash-attn's ``window_size=(w - 1, w - 1)``).

The production path is blocked local attention: queries are cut into blocks of ``block_size``
(``Bq``) and each block attends to a fixed band of keys -- the ``ceil((w - 1) / Bq)`` previous
blocks plus its own (plus as many following blocks when symmetric) -- through one
``F.scaled_dot_product_attention`` call with an additive band mask of shape ``[blocks, 1, Bq,
band]``. The key/value bands are overlapping strided views (``unfold``), not copies. Time and
memory are ``O(L * (w + Bq))``; there is no ``L x L`` tensor and no Python loop over blocks, so
the graph exports with a dynamic ``L`` (the sequence is padded up to a multiple of ``Bq`` inside
the graph).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from archgen.mixers.attention import Attention, repeat_kv
from archgen.mixers.base import DecodeState, is_real, step_positions


def _key_band(
    x: torch.Tensor, block: int, prev_blocks: int, n_blocks: int, next_blocks: int = 0
) -> torch.Tensor:
    """``[B, H, L, Dh] -> [n_blocks, B*H, (prev_blocks + 1 + next_blocks) * block, Dh]``: for
    each query block, the keys (or values) of the ``prev_blocks`` blocks before it, of the block
    itself and of the ``next_blocks`` after it."""
    b, h, n, d = x.shape
    # Left padding gives the first blocks their (masked-out) "previous" keys; right padding
    # completes the last block and gives the last blocks their (masked-out) "next" keys.
    right = (n_blocks + next_blocks) * block - n
    padded = F.pad(x, (0, 0, prev_blocks * block, right)).reshape(b * h, -1, d)
    # Overlapping windows as a strided view (no copy of the band; SDPA reads the strides).
    # It exports as Range + Gather, keeping n_blocks dynamic.
    width = (prev_blocks + 1 + next_blocks) * block
    band = padded.unfold(1, width, block)  # [B*H, n_blocks, Dh, band]
    return band.permute(1, 0, 3, 2)


def _band_mask(
    n_blocks: int,
    block: int,
    prev_blocks: int,
    window: int,
    dtype: torch.dtype,
    device: torch.device,
    next_blocks: int = 0,
    length: int | None = None,
) -> torch.Tensor:
    """Additive mask ``[n_blocks, 1, block, band]`` (0 = allowed, -inf = not), built from
    ``arange`` comparisons so the exported graph keeps ``n_blocks`` dynamic. With
    ``next_blocks`` the window is symmetric and ``length`` (the real sequence length) masks the
    right-padding keys."""
    band = (prev_blocks + 1 + next_blocks) * block

    def additive(allowed: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))

    # The window pattern is the same for every block: key offset minus query offset.
    rel = torch.arange(band, device=device) - prev_blocks * block
    rel = rel - torch.arange(block, device=device).view(block, 1)  # [block, band]
    if not next_blocks:
        pattern = additive((rel <= 0) & (rel > -window))
        # Only the first blocks differ: their left-padding keys (position < 0) are masked.
        # Padded queries past L still see themselves, so no row is fully masked (no NaN); they
        # are sliced off afterwards.
        first_key = (torch.arange(n_blocks, device=device) - prev_blocks) * block
        real_key = additive(first_key.view(n_blocks, 1) + torch.arange(band, device=device) >= 0)
        return pattern + real_key.view(n_blocks, 1, 1, band)  # the one full-size op
    # Symmetric: the first and the last blocks have padding keys (position < 0 or >= L). A
    # padded query past L may have no real key in reach: it sees itself (rel == 0, a zero key),
    # so no row is fully masked (no NaN, also in backward).
    assert length is not None
    first_key = (torch.arange(n_blocks, device=device) - prev_blocks) * block
    key_pos = first_key.view(n_blocks, 1) + torch.arange(band, device=device)  # [n_blocks, band]
    real_key = ((key_pos >= 0) & (key_pos < length)).view(n_blocks, 1, band)
    allowed = ((rel > -window) & (rel < window) & real_key) | (rel == 0)
    return additive(allowed).view(n_blocks, 1, block, band)


def default_block_size(window: int) -> int:
    """``max(min(32, w), w // 4)``: the fastest query block on the 2-core CPU benchmark
    (``benchmarks/results/attention_family_cpu.md``) for w = 64 .. 1024. Smaller blocks waste
    fewer masked scores (the band is ``w + Bq`` keys wide); below ~32 queries SDPA's tiles get
    too small to pay off."""
    return max(min(32, window), window // 4)


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int,
    block_size: int,
    causal: bool = True,
) -> torch.Tensor:
    """Blocked sliding-window attention core.

    ``q, k, v: [B, H, L, Dh]`` (kv heads already repeated) -> ``[B, H, L, Dh]``; query ``i`` sees
    keys ``i - window < j <= i`` (``causal``), else ``|i - j| < window``.

    >>> q, k, v = torch.randn(3, 1, 2, 11, 8).unbind(0)
    >>> sliding_window_attention(q, k, v, window=4, block_size=3).shape
    torch.Size([1, 2, 11, 8])
    """
    b, h, n, d = q.shape
    prev_blocks = -(-(window - 1) // block_size)  # blocks needed to cover w - 1 earlier keys
    next_blocks = 0 if causal else prev_blocks  # ... and w - 1 later ones, when symmetric
    n_blocks = (n + block_size - 1) // block_size
    q_blocks = F.pad(q, (0, 0, 0, n_blocks * block_size - n))
    q_blocks = q_blocks.reshape(b * h, n_blocks, block_size, d).transpose(0, 1)
    mask = _band_mask(n_blocks, block_size, prev_blocks, window, q.dtype, q.device, next_blocks, n)
    # Blocks go in SDPA's batch dim and (B*H) in its head dim, so the per-block mask broadcasts
    # over batch and heads without a copy. An additive float mask: a bool one is converted to
    # float inside SDPA anyway.
    y = F.scaled_dot_product_attention(
        q_blocks,
        _key_band(k, block_size, prev_blocks, n_blocks, next_blocks),
        _key_band(v, block_size, prev_blocks, n_blocks, next_blocks),
        attn_mask=mask,
    )  # [n_blocks, B*H, Bq, Dh]
    return y.transpose(0, 1).reshape(b, h, n_blocks * block_size, d)[:, :, :n]


class SlidingWindowAttention(Attention):
    """Sliding-window attention: query ``i`` attends to keys ``i - window < j <= i``, or with
    ``causal=False`` to ``|i - j| < window`` (symmetric; no decode step).

    Same projections and parameter names as :class:`~archgen.mixers.attention.Attention`
    (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``), RoPE at absolute positions.
    ``block_size`` (default :func:`default_block_size`) only changes speed and memory, not the
    result. Decoding keeps a ring buffer of ``window`` keys/values, so the state has a constant
    size.

    >>> m = SlidingWindowAttention(64, heads=4, kv_heads=2, window=8)
    >>> x = torch.randn(2, 19, 64)
    >>> m(x).shape
    torch.Size([2, 19, 64])
    >>> state = m.init_state(2)
    >>> y0, state = m.step(x[:, 0], state, torch.tensor(0))
    >>> [tuple(t.shape) for t in state]
    [(2, 2, 8, 16), (2, 2, 8, 16)]
    """

    def __init__(
        self,
        d_model: int,
        *,
        heads: int,
        window: int,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        rope_theta: float | None = 10000.0,
        bias: bool = False,
        block_size: int | None = None,
        causal: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            d_model,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            rope_theta=rope_theta,
            bias=bias,
            causal=causal,
            device=device,
            dtype=dtype,
        )
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        block_size = block_size or default_block_size(window)
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.window, self.block_size = window, block_size

    # -- production ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        q, k, v = self.project(x, positions)
        groups = self.heads // self.kv_heads
        y = sliding_window_attention(
            q,
            repeat_kv(k, groups),
            repeat_kv(v, groups),
            window=self.window,
            block_size=self.block_size,
            causal=self.causal,
        )
        return self.merge_heads(y)

    # -- reference -----------------------------------------------------------------------------
    def reference(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        q, k, v = self.project(x, positions)
        groups = self.heads // self.kv_heads
        outputs = []
        for i in range(x.shape[1]):  # query i sees keys max(0, i - w + 1) .. i (.. i + w - 1)
            lo = max(0, i - self.window + 1)
            hi = i + 1 if self.causal else min(x.shape[1], i + self.window)
            k_i = repeat_kv(k[:, :, lo:hi], groups)
            v_i = repeat_kv(v[:, :, lo:hi], groups)
            scores = (q[:, :, i : i + 1] @ k_i.transpose(-1, -2)) / math.sqrt(self.head_dim)
            outputs.append(scores.softmax(dim=-1) @ v_i)
        return self.merge_heads(torch.cat(outputs, dim=2))

    # -- decoding: a ring buffer of the last `window` keys/values ------------------------------
    def init_state(
        self,
        batch: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_len: int | None = None,
    ) -> DecodeState:
        if not self.causal:
            # a symmetric window reads tokens after the current one: no one-token form
            raise NotImplementedError("bidirectional SWA (causal=False) cannot decode")
        dtype = dtype or self.q_proj.weight.dtype
        shape = (batch, self.kv_heads, self.window, self.head_dim)
        empty = torch.zeros(shape, device=device, dtype=dtype)
        return (empty, empty.clone())

    def step(
        self,
        x: torch.Tensor,
        state: DecodeState,
        pos: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DecodeState]:
        """The ring is indexed by each sequence's own position, so a padded token (which
        writes nothing) leaves it as it was; only ``mask[:, -1]`` is read."""
        if not self.causal:
            raise NotImplementedError("bidirectional SWA (causal=False) cannot decode")
        k_buf, v_buf = state
        p = step_positions(pos)  # [1 or B, 1]
        q, k, v = self.project(x[:, None], p)  # keys stored already rotated
        slots = torch.arange(self.window, device=x.device)
        # Token `pos` overwrites the oldest slot, pos mod w; tensor ops only, so the exported
        # step graph takes `pos` as an input.
        write = slots == p % self.window  # [1 or B, w]
        real = is_real(mask)
        if real is not None:
            write = write & real[:, None]
        write = write.view(-1, 1, self.window, 1)
        k_buf = torch.where(write, k, k_buf)
        v_buf = torch.where(write, v, v_buf)
        # Slot j has been written iff j <= pos; after the first wrap every slot is in the window.
        valid = (slots <= p).view(-1, 1, 1, self.window)
        groups = self.heads // self.kv_heads
        y = F.scaled_dot_product_attention(
            q, repeat_kv(k_buf, groups), repeat_kv(v_buf, groups), attn_mask=valid
        )
        return self.merge_heads(y)[:, 0], (k_buf, v_buf)
