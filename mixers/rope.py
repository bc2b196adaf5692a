"""Rotary position embedding (RoPE), rotate-half convention as in Llama / GPT-NeoX."""

from __future__ import annotations

import torch


def rope_angles(
    positions: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for integer ``positions`` (any shape) -> ``[*positions.shape, head_dim]``.

    Angles are computed in float32 (float64 if asked for by the caller's positions dtype) because
    bf16 angles at positions in the thousands are wrong in the first digit.
    """
    work = torch.float64 if positions.dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=work) / head_dim)
    )
    angles = positions.to(work)[..., None] * inv_freq  # [..., head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x: [B, H, L, Dh]`` by the tables ``cos, sin: [L, Dh]`` (broadcast over B, H)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos.to(x.dtype) + rotated * sin.to(x.dtype)).to(x.dtype)
