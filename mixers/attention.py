"""Causal multi-head attention with grouped-query heads (GQA) and RoPE.

Parameter names follow Hugging Face Llama (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archgen.mixers.base import DecodeState, TokenMixer, history_mask, step_positions
from archgen.mixers.rope import apply_rope, rope_angles


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, Hkv, L, Dh] -> [B, Hkv*groups, L, Dh]`` (each kv head serves ``groups`` q heads)."""
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


class Attention(TokenMixer):
    """Softmax attention; causal unless ``causal=False`` (a masked-diffusion denoiser).

    >>> m = Attention(d_model=64, heads=4, kv_heads=2)
    >>> m(torch.randn(2, 7, 64)).shape
    torch.Size([2, 7, 64])
    """

    def __init__(
        self,
        d_model: int,
        *,
        heads: int,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        rope_theta: float | None = 10000.0,
        bias: bool = False,
        causal: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kv_heads = kv_heads or heads
        head_dim = head_dim or d_model // heads
        if heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
        self.d_model, self.heads, self.kv_heads, self.head_dim = d_model, heads, kv_heads, head_dim
        self.rope_theta = rope_theta
        self.causal = causal
        fk = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(d_model, heads * head_dim, bias=bias, **fk)
        self.k_proj = nn.Linear(d_model, kv_heads * head_dim, bias=bias, **fk)
        self.v_proj = nn.Linear(d_model, kv_heads * head_dim, bias=bias, **fk)
        self.o_proj = nn.Linear(heads * head_dim, d_model, bias=bias, **fk)

    def output_projection(self) -> nn.Linear:
        return self.o_proj

    # -- shared pieces -------------------------------------------------------------------------
    def project(
        self, x: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x: [B, L, D]`` -> q ``[B, H, L, Dh]``, k, v ``[B, Hkv, L, Dh]`` with RoPE applied.
        ``positions``: ``[L]``, or ``[B, L]`` (a padded decode step: a position per sequence)."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.rope_theta is not None:
            cos, sin = rope_angles(positions, self.head_dim, self.rope_theta)
            if positions.dim() == 2:  # [B, L, Dh] -> [B, 1, L, Dh]: broadcast over heads
                cos, sin = cos[:, None], sin[:, None]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:  # [B, H, L, Dh] -> [B, L, D]
        b, _, n, _ = y.shape
        return self.o_proj(y.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))

    # -- production ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # a vision stage's grid [B, H, W, D]: attend over it flattened
            return self.forward(x.flatten(1, 2)).view(x.shape)
        positions = torch.arange(x.shape[1], device=x.device)
        q, k, v = self.project(x, positions)
        # enable_gqa instead of repeat_kv: as fast in torch, and an exported graph keeps the
        # kv heads unrepeated for a fused grouped-query kernel (backends/onnx_attention.py).
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, enable_gqa=True)
        return self.merge_heads(y)

    # -- reference -----------------------------------------------------------------------------
    def reference(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # row-major flattening of a grid, as forward
            return self.reference(x.flatten(1, 2)).view(x.shape)
        positions = torch.arange(x.shape[1], device=x.device)
        q, k, v = self.project(x, positions)
        groups = self.heads // self.kv_heads
        outputs = []
        for i in range(x.shape[1]):  # query i sees keys 0..i (every key when bidirectional)
            end = i + 1 if self.causal else x.shape[1]
            k_i = repeat_kv(k[:, :, :end], groups)
            v_i = repeat_kv(v[:, :, :end], groups)
            scores = (q[:, :, i : i + 1] @ k_i.transpose(-1, -2)) / math.sqrt(self.head_dim)
            outputs.append(scores.softmax(dim=-1) @ v_i)
        return self.merge_heads(torch.cat(outputs, dim=2))

    # -- decoding: a KV cache that grows by one entry per token --------------------------------
    def init_state(
        self,
        batch: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_len: int | None = None,
    ) -> DecodeState:
        if not self.causal:
            # every output depends on every token: there is no one-token-at-a-time form
            raise NotImplementedError("bidirectional attention (causal=False) cannot decode")
        dtype = dtype or self.q_proj.weight.dtype
        empty = torch.zeros(batch, self.kv_heads, 0, self.head_dim, device=device, dtype=dtype)
        return (empty, empty.clone())

    def step(
        self,
        x: torch.Tensor,
        state: DecodeState,
        pos: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DecodeState]:
        """A padded token still gets a cache slot (the cache is one tensor for the batch);
        ``mask`` hides that slot from every later step."""
        k_cache, v_cache = state
        q, k, v = self.project(x[:, None], step_positions(pos))
        k_cache = torch.cat([k_cache, k], dim=2)
        v_cache = torch.cat([v_cache, v], dim=2)
        groups = self.heads // self.kv_heads
        y = F.scaled_dot_product_attention(
            q,
            repeat_kv(k_cache, groups),
            repeat_kv(v_cache, groups),
            attn_mask=history_mask(mask),
        )
        return self.merge_heads(y)[:, 0], (k_cache, v_cache)
