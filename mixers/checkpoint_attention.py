"""SCOUT checkpoint attention (arXiv 2509.00935; formulation in research/mixers.md §1).

Each token attends, in ONE softmax, to itself and to the *checkpoints* of strictly earlier
segments. With segment size ``s`` the checkpoint of segment ``m`` is position ``(m + 1) * s - 1``
(the last token of the segment), so

    allowed(i, j) = (j == i) or (j % s == s - 1 and j < i).

With ``s = 1`` this is exactly causal attention. Projections, names and RoPE follow
:class:`~archgen.mixers.attention.Attention`; SCOUT uses RoPE with theta = 1e6 and no bias.

Production path (:func:`checkpoint_attention`). Query ``i = g * s + r`` (segment ``g``, offset
``r``) sees the checkpoints ``0 .. g - 1``, which depends on ``g`` only. Folding the offset ``r``
into the batch turns the checkpoint part into plain *causal* attention of ``G = ceil(L / s)``
queries over ``G`` keys ``[self, ckpt_0, .., ckpt_{G-2}]`` where the first key slot is a
per-query "self" slot: the head dimension is extended by one so that

    q' = [q_i, q_i . k_i],   k'_self = [0, 1],   k'_ckpt = [k_c, 0]
    v'_self = [0, 1],        v'_ckpt = [v_c, 0]

gives the self slot the exact logit ``q_i . k_i / sqrt(Dh)`` and returns its softmax weight in
the last output channel, so ``y_i = o'[:Dh] + o'[Dh] * v_i`` is the joint softmax over
``{self} U {earlier checkpoints}``. One causal ``F.scaled_dot_product_attention`` call does the
``L x L/s`` work (skipping the masked half), memory is ``O(L * Dh)``, autograd is exact, and the
graph exports with a dynamic ``L`` (no ``L x L`` mask, no loop over ``L``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from archgen.mixers.attention import Attention, repeat_kv
from archgen.mixers.base import DecodeState, exporting, is_real, step_positions


def checkpoint_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, segment_size: int
) -> torch.Tensor:
    """SCOUT checkpoint attention core (see the module docstring for the folding).

    ``q, k, v: [B, H, L, Dh]`` (kv heads already repeated) -> ``[B, H, L, Dh]``.

    >>> q, k, v = torch.randn(3, 1, 2, 23, 8).unbind(0)
    >>> checkpoint_attention(q, k, v, segment_size=4).shape
    torch.Size([1, 2, 23, 8])
    """
    b, h, n, d = q.shape
    s = segment_size
    n_seg = (n + s - 1) // s  # G; the last segment may be partial (it has no checkpoint yet)
    bh = b * h

    self_logit = (q * k).sum(dim=-1, keepdim=True)  # unscaled; SDPA applies 1/sqrt(Dh)
    q_ext = F.pad(torch.cat([q, self_logit], dim=-1), (0, 0, 0, n_seg * s - n))
    # [B*H, G, s, Dh+1] -> [s, B*H, G, Dh+1]: offset r in SDPA's batch dim, segment g as the query
    # index, so "segment g sees checkpoints < g" becomes a causal mask.
    q_ext = q_ext.reshape(bh, n_seg, s, d + 1).permute(2, 0, 1, 3)

    def keys(x: torch.Tensor) -> torch.Tensor:  # [B, H, L, Dh] -> [B*H, G, Dh+1]
        ckpt = x[:, :, s - 1 :: s][:, :, : n_seg - 1]  # segments 0..G-2: all that any query sees
        ckpt = F.pad(ckpt.flatten(0, 1), (0, 1))
        self_slot = F.pad(ckpt.new_ones(bh, 1, 1), (d, 0))  # [0, .., 0, 1]
        return torch.cat([self_slot, ckpt], dim=1)

    # Checkpoint K/V are shared by all offsets: expand (stride 0) instead of copying s times.
    k_ext = keys(k).expand(s, bh, n_seg, d + 1)
    v_ext = keys(v).expand(s, bh, n_seg, d + 1)
    o = F.scaled_dot_product_attention(
        q_ext, k_ext, v_ext, is_causal=True, scale=1.0 / math.sqrt(d)
    )  # [s, B*H, G, Dh+1]
    o = o.permute(1, 2, 0, 3).reshape(b, h, n_seg * s, d + 1)[:, :, :n]
    return torch.addcmul(o[..., :d], o[..., d:], v)  # + weight of the self slot * v_i


class CheckpointAttention(Attention):
    """SCOUT checkpoint attention: self + checkpoints of strictly earlier segments, one softmax.

    ``segment_size=1`` is causal attention. Decoding caches only the checkpoint keys/values
    (one entry every ``segment_size`` tokens), so the cache grows as ``L / s``.

    >>> m = CheckpointAttention(64, heads=4, segment_size=10)
    >>> m(torch.randn(2, 203, 64)).shape
    torch.Size([2, 203, 64])
    """

    def __init__(
        self,
        d_model: int,
        *,
        heads: int,
        segment_size: int,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        rope_theta: float | None = 1_000_000.0,  # SCOUT's configs (research/mixers.md §1c)
        bias: bool = False,
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
            device=device,
            dtype=dtype,
        )
        if segment_size < 1:
            raise ValueError(f"segment_size must be >= 1, got {segment_size}")
        self.segment_size = segment_size

    # -- production ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        q, k, v = self.project(x, positions)
        groups = self.heads // self.kv_heads
        y = checkpoint_attention(
            q, repeat_kv(k, groups), repeat_kv(v, groups), segment_size=self.segment_size
        )
        return self.merge_heads(y)

    # -- reference -----------------------------------------------------------------------------
    def reference(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        q, k, v = self.project(x, positions)
        groups = self.heads // self.kv_heads
        s = self.segment_size
        outputs = []
        for i in range(x.shape[1]):
            # self first, then every checkpoint strictly before i
            keys_at = [i, *(j for j in range(s - 1, i, s))]
            k_i = repeat_kv(k[:, :, keys_at], groups)
            v_i = repeat_kv(v[:, :, keys_at], groups)
            scores = (q[:, :, i : i + 1] @ k_i.transpose(-1, -2)) / math.sqrt(self.head_dim)
            outputs.append(scores.softmax(dim=-1) @ v_i)
        return self.merge_heads(torch.cat(outputs, dim=2))

    # -- decoding: a cache of checkpoint keys/values only --------------------------------------
    def init_state(
        self,
        batch: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_len: int | None = None,
    ) -> DecodeState:
        """``(k_ckpt, v_ckpt)``, each ``[B, kv_heads, ceil(max_len / s), head_dim]``: one slot per
        segment that can complete within ``max_len`` tokens, filled as segments complete. The
        size is fixed (like the sliding window's ring buffer), so one exported step graph serves
        every position; the cache is still ``s`` times smaller than an attention KV cache."""
        if max_len is None or max_len < 1:
            raise ValueError(
                "CheckpointAttention.init_state needs max_len (the longest sequence to decode; "
                f"ArchModel passes the model's max_seq_len), got {max_len!r}"
            )
        dtype = dtype or self.q_proj.weight.dtype
        slots = -(-max_len // self.segment_size)
        shape = (batch, self.kv_heads, slots, self.head_dim)
        empty = torch.zeros(shape, device=device, dtype=dtype)
        return (empty, empty.clone())

    def step(
        self,
        x: torch.Tensor,
        state: DecodeState,
        pos: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DecodeState]:
        """One token: attention over ``[checkpoints before pos ; current token]``, then the
        token's key/value go to slot ``pos // s`` when it closes its segment (``pos % s == s - 1``).

        Checkpoints strictly before ``pos`` are those of segments ``0 .. pos // s - 1``: the slots
        below ``pos // s``. Eager decoding slices them off the cache (a host-side read of ``pos``,
        as in the SCOUT reference); a traced step (ONNX export, torch.compile) masks the whole
        fixed-size cache instead, with tensor ops only, so the graph takes ``pos`` as an input.
        Masking all ``max_len / s`` slots at every position cost ~25 % of eager decode
        throughput on the SCOUT examples (benchmarks/results/decode_cpu.md), hence two paths.

        A padded batch (``pos [B]``, ``mask``) takes the masked path: the slots are indexed by
        each sequence's own position, and a padded token writes none, so its state is unchanged.
        """
        k_cache, v_cache = state
        s = self.segment_size
        p = step_positions(pos)  # [1 or B, 1]
        q, k, v = self.project(x[:, None], p)  # keys stored already rotated
        groups = self.heads // self.kv_heads
        padded = mask is not None or pos.dim() > 0
        if padded or exporting() or torch.compiler.is_compiling():
            slots = torch.arange(k_cache.shape[2], device=x.device)
            segment = torch.div(p, s, rounding_mode="floor")  # [1 or B, 1]
            seen = torch.cat([slots < segment, torch.ones_like(segment, dtype=torch.bool)], 1)
            y = F.scaled_dot_product_attention(
                q,
                repeat_kv(torch.cat([k_cache, k], dim=2), groups),
                repeat_kv(torch.cat([v_cache, v], dim=2), groups),
                attn_mask=seen.view(seen.shape[0], 1, 1, -1),
            )
            write = (slots == segment) & (p % s == s - 1)  # [1 or B, slots]
            real = is_real(mask)
            if real is not None:
                write = write & real[:, None]
            write = write.view(write.shape[0], 1, -1, 1)
            k_cache = torch.where(write, k, k_cache)
            v_cache = torch.where(write, v, v_cache)
            return self.merge_heads(y)[:, 0], (k_cache, v_cache)
        position = int(pos)
        segment_index = position // s
        if segment_index >= k_cache.shape[2]:
            raise ValueError(
                f"position {position} is beyond the checkpoint cache of {k_cache.shape[2]} slots "
                f"(max_len {k_cache.shape[2] * s} at segment size {s})"
            )
        keys = torch.cat([k_cache[:, :, :segment_index], k], dim=2)
        values = torch.cat([v_cache[:, :, :segment_index], v], dim=2)
        y = F.scaled_dot_product_attention(q, repeat_kv(keys, groups), repeat_kv(values, groups))
        if position % s == s - 1:
            index = torch.tensor([segment_index], device=x.device)
            k_cache = k_cache.index_copy(2, index, k)
            v_cache = v_cache.index_copy(2, index, v)
        return self.merge_heads(y)[:, 0], (k_cache, v_cache)
