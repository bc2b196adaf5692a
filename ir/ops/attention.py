"""Softmax-attention token mixers: full causal, sliding-window, SCOUT checkpoint attention; and
the JustDense learned mixing matrix (attention's data-independent cousin)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from archgen.ir.ops.base import (
    Constraint,
    Op,
    Role,
    Trait,
    attr,
    causal_pairs,
    linear_flops,
    linear_params,
    register_op,
)
from archgen.ir.types import TensorType, TypeRuleError


@dataclass(frozen=True)
class _SoftmaxAttentionBase(Op):
    """Shared attributes and cost of the q/k/v/o-projection mixers."""

    role: ClassVar[Role] = Role.TOKEN_MIXER
    arity: ClassVar[int] = 1

    d_model: int = attr("model width", ge=1)
    heads: int = attr("query heads", default=8, ge=1, le=4096)
    kv_heads: int | None = attr("key/value heads, GQA (default: heads)", auto=True, ge=1, le=4096)
    head_dim: int | None = attr("width of one head (default: d_model / heads)", auto=True, ge=1)
    rope_theta: float | None = attr("RoPE base; null disables RoPE", default=10000.0, gt=0)
    bias: bool = attr("biases on the q/k/v/o projections", default=False)

    def resolved(self) -> _SoftmaxAttentionBase:
        return replace(
            self,
            kv_heads=self.kv_heads or self.heads,
            head_dim=self.head_dim or max(1, self.d_model // self.heads),
        )

    def extra_problems(self) -> list[Constraint]:
        found = []
        if self.head_dim is None and self.d_model % self.heads:
            found.append(
                Constraint(
                    "heads", f"d_model {self.d_model} is not divisible by heads {self.heads}"
                )
            )
        if self.kv_heads is not None and self.heads % self.kv_heads:
            found.append(
                Constraint(
                    "kv_heads", f"heads {self.heads} is not a multiple of kv_heads {self.kv_heads}"
                )
            )
        head_dim = self.head_dim or self.d_model // self.heads
        if self.rope_theta is not None and head_dim % 2 and not found:
            found.append(Constraint("rope_theta", f"RoPE needs an even head_dim, got {head_dim}"))
        return found

    def _dims(self) -> tuple[int, int, int]:
        r = self.resolved()
        assert r.kv_heads is not None and r.head_dim is not None
        return r.heads, r.kv_heads, r.head_dim

    def params(self) -> int:
        h, hkv, dh = self._dims()
        d = self.d_model
        return (
            linear_params(d, h * dh, self.bias)
            + 2 * linear_params(d, hkv * dh, self.bias)
            + linear_params(h * dh, d, self.bias)
        )

    def key_pairs(self, seq_len: int) -> int:
        """Number of (query, key) pairs scored for a sequence of ``seq_len`` tokens."""
        raise NotImplementedError

    def cached_keys(self, context_len: int) -> int:
        """Keys held in the decode cache after ``context_len`` tokens."""
        raise NotImplementedError

    def flops(self, seq_len: int) -> int:
        h, hkv, dh = self._dims()
        d = self.d_model
        proj = linear_flops(d, (h + 2 * hkv) * dh, seq_len) + linear_flops(h * dh, d, seq_len)
        # q.k and p.v: 2 MACs-worth each per pair and head dim; softmax ~5 flops per score.
        pairs = self.key_pairs(seq_len)
        return proj + h * pairs * (4 * dh + 5)

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        h, hkv, dh = self._dims()
        return seq_len * ((2 * h + 2 * hkv) * dh + self.d_model) * dtype_bytes

    def state_bytes(self, context_len: int, dtype_bytes: int = 4) -> int:
        _, hkv, dh = self._dims()
        return 2 * self.cached_keys(context_len) * hkv * dh * dtype_bytes


@register_op
@dataclass(frozen=True)
class Attention(_SoftmaxAttentionBase):
    """``causal`` comes from the model's task, not from the spec: attention is causal in a
    causal-lm and bidirectional (no mask, every query sees every key) in a masked-diffusion-lm.
    A context field keeps causal specs, printed graphs and spec hashes as they were."""

    kind: ClassVar[str] = "attention"
    summary: ClassVar[str] = "causal multi-head attention (GQA, RoPE)"
    # decode state: a KV cache that grows by concatenation (dynamic dim 'past' in ONNX). On a
    # vision stage's grid it attends over the flattened grid (row-major), without a mask.
    traits: ClassVar[frozenset[Trait]] = frozenset(
        {Trait.CAUSAL, Trait.DECODABLE, Trait.DECODE_EXPORTABLE, Trait.GRID}
    )
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "causal")

    causal: bool = attr(
        "causal mask (from the task: false in a masked-diffusion-lm or image-classification)",
        default=True,
    )

    def key_pairs(self, seq_len: int) -> int:
        return causal_pairs(seq_len) if self.causal else seq_len * seq_len

    def cached_keys(self, context_len: int) -> int:
        return context_len if self.causal else 0


@register_op
@dataclass(frozen=True)
class SlidingWindowAttention(_SoftmaxAttentionBase):
    """Query i sees keys j with i - window < j <= i (``window`` keys including itself); in a
    masked-diffusion-lm (``causal`` from the task, as attention's) the window is symmetric:
    |i - j| < window, up to 2 * window - 1 keys, and there is no decode step."""

    kind: ClassVar[str] = "swa"
    summary: ClassVar[str] = "causal sliding-window attention"
    # decode state: a fixed-size ring buffer of the last ``window`` keys
    traits: ClassVar[frozenset[Trait]] = frozenset(
        {Trait.CAUSAL, Trait.DECODABLE, Trait.DECODE_EXPORTABLE}
    )
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "causal")

    window: int = attr("keys each query sees, itself included", default=256, ge=1)
    causal: bool = attr(
        "keys on the left only (from the task: a masked-diffusion-lm's window is symmetric)",
        default=True,
    )

    def key_pairs(self, seq_len: int) -> int:
        w = min(self.window, seq_len)
        left = causal_pairs(w) + (seq_len - w) * w  # keys j <= i, itself included
        # symmetric: the same count of keys j >= i, itself counted once
        return left if self.causal else 2 * left - seq_len

    def cached_keys(self, context_len: int) -> int:
        return min(self.window, context_len) if self.causal else 0


@register_op
@dataclass(frozen=True)
class CheckpointAttention(_SoftmaxAttentionBase):
    """SCOUT: token i attends to itself and to the checkpoints ``m*s - 1 < i`` in one softmax."""

    kind: ClassVar[str] = "checkpoint_attention"
    summary: ClassVar[str] = "SCOUT checkpoint attention over segment summaries"
    # decode state: a fixed-size checkpoint cache, ceil(max_seq_len / s) slots
    traits: ClassVar[frozenset[Trait]] = frozenset(
        {Trait.CAUSAL, Trait.DECODABLE, Trait.DECODE_EXPORTABLE}
    )

    segment_size: int = attr("tokens per segment (s); s=1 is full attention", default=10, ge=1)
    rope_theta: float | None = attr(
        "RoPE base (SCOUT's configs use 1e6); null disables RoPE", default=1_000_000.0, gt=0
    )

    def key_pairs(self, seq_len: int) -> int:
        # sum over i of (1 + floor(i / s)), in closed form.
        s, n = self.segment_size, seq_len
        full, rest = divmod(n, s)
        floors = s * full * (full - 1) // 2 + rest * full
        return n + floors

    def cached_keys(self, context_len: int) -> int:
        return context_len // self.segment_size


@register_op
@dataclass(frozen=True)
class DenseMixer(Op):
    """JustDense: ``y = x + M x / sqrt(L)`` per head with a learned ``max_seq_len^2`` matrix."""

    kind: ClassVar[str] = "dense"
    role: ClassVar[Role] = Role.TOKEN_MIXER
    arity: ClassVar[int] = 1
    # Causal and decodable only with ``causal=True`` (see :meth:`has`). Its decode state is every
    # past input, indexed by a row of the max_seq_len^2 matrix: no single exported graph.
    # On a grid only with ``causal=False``: a vision stage's grid, flattened row-major, is one
    # fixed-length sequence (max_seq_len = H * W from the stage) that every token sees whole.
    traits: ClassVar[frozenset[Trait]] = frozenset({Trait.CAUSAL, Trait.DECODABLE, Trait.GRID})
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "max_seq_len")
    summary: ClassVar[str] = "learned dense token-mixing matrix (JustDense)"

    d_model: int = attr("model width", ge=1)
    max_seq_len: int = attr("longest sequence (size of the mixing matrix)", ge=1)
    heads: int = attr("independent mixing matrices", default=1, ge=1)
    causal: bool = attr("lower-triangular mask (required in a causal LM)", default=True)

    def extra_problems(self) -> list[Constraint]:
        if self.d_model % self.heads:
            return [
                Constraint(
                    "heads", f"d_model {self.d_model} is not divisible by heads {self.heads}"
                )
            ]
        return []

    def has(self, trait: Trait) -> bool:
        if trait is Trait.GRID and self.causal:
            return False  # a causal mask over a flattened grid has no meaning for an image
        return super().has(trait)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        x = super().infer(inputs)
        if len(x.shape) == 4 and all(isinstance(d, int) for d in x.shape[1:3]):
            h, w = x.shape[1], x.shape[2]
            if h * w > self.max_seq_len:
                raise TypeRuleError(
                    f"dense: its matrix mixes {self.max_seq_len} tokens, got a {h}x{w} grid"
                )
        return x

    def params(self) -> int:
        return self.heads * self.max_seq_len**2

    def flops(self, seq_len: int) -> int:
        pairs = causal_pairs(seq_len) if self.causal else seq_len * seq_len
        return 2 * pairs * self.d_model + 2 * seq_len * self.d_model

    def state_bytes(self, context_len: int, dtype_bytes: int = 4) -> int:
        # the unmasked mixer has no incremental decode, so it keeps no state
        return context_len * self.d_model * dtype_bytes if self.causal else 0
