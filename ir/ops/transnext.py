"""TransNeXt's token mixers (Shi, CVPR 2024, arXiv 2311.17132): aggregated attention and the
last stage's length-scaled cosine attention, over a static ``height x width`` grid.

Both score with *length-scaled cosine* logits: L2-normalised queries plus a learned per-head
query embedding, times ``softplus(temperature) * log(n)`` where ``n`` is the number of keys the
query sees, against L2-normalised keys. Both add a continuous position bias (CPB): an MLP
``2 -> cpb_hidden -> heads`` (ReLU) of log-spaced relative coordinates between the query and the
key (a pooled cell's centre). The coordinates depend on the grid only, so they are constants of
the node (:func:`cpb_axis_table`), tied to its grid like RaftMLP's and the spectrum mixer's
weights; the official code likewise supports one input size per model.

The coordinate tables are plain Python here (no torch) so the IR can count the CPB MLP's FLOPs
and the torch modules (archgen.mixers.transnext) build their constants from the same function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from archgen.ir.ops.base import (
    Constraint,
    Op,
    Role,
    Trait,
    _expect_arity,
    attr,
    linear_flops,
    linear_params,
    register_op,
)
from archgen.ir.ops.vision import GRID_OP, expect_grid
from archgen.ir.types import TensorType, TypeRuleError

# Relative coordinates are scaled so the grid spans [-8, 8] before the log spacing (TransNeXt's
# choice, from Swin-v2): log2(1 + 8) / log2(8) keeps the MLP's inputs within about [-1.06, 1.06].
CPB_SPAN = 8.0
# flops per element of the elementwise pieces (the same rough weights as the other vision ops)
GELU_FLOPS, NORM_FLOPS, SOFTMAX_FLOPS = 8, 7, 5


@dataclass(frozen=True)
class CpbAxis:
    """The CPB coordinates along one axis of the grid. ``doubled`` are the distinct offsets
    (query position minus key-cell centre) times two, exact integers; ``index[q][p]`` is the one
    of query row ``q`` and pooled row ``p``; an offset's coordinate is
    ``log_spaced(doubled * half_scale)``. The 2-D table is every (row, column) pair, row-major."""

    doubled: tuple[int, ...]
    index: tuple[tuple[int, ...], ...]
    half_scale: float

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(log_spaced(d * self.half_scale) for d in self.doubled)


def log_spaced(offset: float) -> float:
    """``sign(r) * log2(1 + |r|) / log2(8)``: fine steps near the query, coarse far away."""
    return math.copysign(math.log2(1.0 + abs(offset)) / math.log2(CPB_SPAN), offset)


def cpb_axis_table(size: int, sr: int) -> CpbAxis:
    """The CPB coordinates of a ``size``-long axis pooled by ``sr`` (``sr = 1``: every key).

    A pooled cell ``p`` covers rows ``p*sr .. p*sr + sr - 1``; its centre is their mean.
    Offsets are scaled by ``8 / (size - 1)`` (the official code's ``pretrain_size`` is the
    training grid, which is this grid; a 1-long axis has only the offset 0). Offsets are kept
    doubled, as integers, so equal offsets are found exactly and a module can compute the
    coordinates in its own dtype."""
    doubled = [[2 * q - (2 * p * sr + sr - 1) for p in range(size // sr)] for q in range(size)]
    distinct = sorted({d for row in doubled for d in row})
    position = {d: i for i, d in enumerate(distinct)}
    return CpbAxis(
        doubled=tuple(distinct),
        index=tuple(tuple(position[d] for d in row) for row in doubled),
        half_scale=CPB_SPAN / max(size - 1, 1) / 2,
    )


def window_counts(size: int, window: int) -> list[int]:
    """How many of the ``window`` positions centred on each of ``size`` rows lie inside."""
    r = window // 2
    return [min(size - 1, q + r) - max(0, q - r) + 1 for q in range(size)]


@dataclass(frozen=True)
class _CosineAttentionBase(Op):
    """Shared attributes of TransNeXt's two attentions (see the module docstring)."""

    role: ClassVar[Role] = Role.TOKEN_MIXER
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = GRID_OP
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "height", "width")

    d_model: int = attr("model width", ge=1)
    height: int = attr("grid height (from the stage)", ge=1)
    width: int = attr("grid width (from the stage)", ge=1)
    heads: int = attr("attention heads (d_model must be divisible by it)", default=2, ge=1)
    qkv_bias: bool = attr("biases on the query/key/value projections", default=True)
    cpb_hidden: int = attr("hidden width of the position-bias MLP", default=512, ge=1, le=65536)

    @property
    def pool_stride(self) -> int:
        return 1

    def extra_problems(self) -> list[Constraint]:
        if self.d_model % self.heads:
            return [
                Constraint(
                    "heads",
                    f"the stage width {self.d_model} is not divisible by heads {self.heads}",
                )
            ]
        return []

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        h, w = expect_grid(self, x, self.d_model)
        if (h, w) != (self.height, self.width):
            raise TypeRuleError(
                f"{self.kind}: built for a {self.height}x{self.width} grid (position tables), "
                f"got {h}x{w}"
            )
        return x

    @property
    def pooled_tokens(self) -> int:
        s = self.pool_stride
        return (self.height // s) * (self.width // s)

    def cpb_coordinates(self) -> int:
        """Distinct (row, column) offsets the CPB MLP is evaluated at."""
        rows = cpb_axis_table(self.height, self.pool_stride).doubled
        cols = cpb_axis_table(self.width, self.pool_stride).doubled
        return len(rows) * len(cols)

    def _cpb_params(self) -> int:
        return linear_params(2, self.cpb_hidden, True) + linear_params(
            self.cpb_hidden, self.heads, True
        )

    def _cpb_flops(self) -> int:
        t = self.cpb_coordinates()
        return (
            linear_flops(2, self.cpb_hidden, t)
            + self.cpb_hidden * t
            + linear_flops(self.cpb_hidden, self.heads, t)
        )

    def _query_params(self) -> int:
        """Temperature (one per head) and query embedding (one head_dim vector per head)."""
        return self.heads + self.d_model


@register_op
@dataclass(frozen=True)
class AggregatedAttention(_CosineAttentionBase):
    """TransNeXt's aggregated attention on a ``height x width`` grid: each query attends, in one
    softmax, to its ``window x window`` neighbourhood (zero padded; positions outside the grid
    masked) and to ``(H/sr) x (W/sr)`` pooled tokens::

        q = l2norm(W_q x_i);  q~ = (q + e_q) * softplus(tau) * log(n_i)
        local_ij = q~ . l2norm(k_j) + b_loc[j]      j in the window (inside the grid)
        pool_ip  = q~ . l2norm(k_p) + cpb(i, p)     k_p, v_p = W_kv LN(avgpool(gelu(conv1x1 x)))
        a = softmax([local_i, pool_i])
        o_i = sum_j (a_ij + q . T[:, j] + beta_j) v_j + sum_p a_ip v_p;  out = W_o o

    ``n_i`` is the number of window positions inside the grid plus the pooled tokens; the
    learnable tokens ``T`` and bias ``beta`` are added *after* the softmax (the local weights
    need not sum to one)."""

    kind: ClassVar[str] = "aggregated_attention"
    summary: ClassVar[str] = "TransNeXt aggregated attention (window + pooled tokens, one softmax)"

    window: int = attr("side of the local window (odd; 3 in TransNeXt)", default=3, ge=1, le=31)
    sr: int = attr(
        "pooling stride: the pooled grid is (H/sr) x (W/sr) (must divide the grid)",
        default=2,
        ge=1,
        le=1024,
    )

    @property
    def pool_stride(self) -> int:
        return self.sr

    @property
    def window_len(self) -> int:
        return self.window * self.window

    def extra_problems(self) -> list[Constraint]:
        found = super().extra_problems()
        h, w, k = self.height, self.width, self.window
        if k % 2 == 0:
            found.append(Constraint("window", f"must be odd (centred on the query), got {k}"))
        elif k > min(h, w):
            found.append(
                Constraint(
                    "window",
                    f"the {k}x{k} window is larger than the stage's {h}x{w} grid (use at most "
                    f"{min(h, w) if min(h, w) % 2 else min(h, w) - 1})",
                )
            )
        if h % self.sr or w % self.sr:
            divisors = [s for s in range(1, min(h, w) + 1) if h % s == 0 and w % s == 0]
            found.append(
                Constraint(
                    "sr",
                    f"{self.sr} does not divide the stage's {h}x{w} grid, so the pooled grid "
                    f"would not be whole (use one of {', '.join(map(str, divisors))})",
                )
            )
        return found

    def params(self) -> int:
        d, k2 = self.d_model, self.window_len
        return (
            linear_params(d, d, self.qkv_bias)  # q
            + linear_params(d, 2 * d, self.qkv_bias)  # kv, shared by the window and the pool
            + linear_params(d, d, True)  # proj
            + linear_params(d, d, True)  # sr: the 1x1 conv before the pool
            + 2 * d  # LayerNorm of the pooled tokens
            + self._query_params()
            + self._cpb_params()
            + self.heads * k2  # relative_pos_bias_local
            + d * k2  # learnable_tokens
            + self.heads * k2  # learnable_bias
        )

    def flops(self, seq_len: int) -> int:
        d, k2, p, h = self.d_model, self.window_len, self.pooled_tokens, self.heads
        keys = k2 + p
        return (
            linear_flops(d, d, seq_len)
            + linear_flops(d, 2 * d, seq_len + p)
            + linear_flops(d, d, seq_len) * 2  # the 1x1 conv and proj
            + GELU_FLOPS * seq_len * d
            + seq_len * d  # the average pool
            + NORM_FLOPS * p * d
            + 3 * (2 * seq_len + p) * d  # l2 norms of q, local and pooled k
            + 3 * seq_len * d  # query embedding, temperature, length scale
            + 2 * 2 * seq_len * d * keys  # logits and the weighted sum of values
            + (SOFTMAX_FLOPS + 1) * h * seq_len * keys  # softmax and the biases
            + 2 * seq_len * d * k2
            + 2 * h * seq_len * k2  # learnable tokens, bias
            + self._cpb_flops()
            + h * seq_len * p  # gathering the CPB bias
        )

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        d, k2, p = self.d_model, self.window_len, self.pooled_tokens
        # q, k, v and the gathered windows of k and v; the logits/weights; conv, pooled, out
        per_token = 3 * d + 2 * k2 * d + 2 * self.heads * (k2 + p) + 2 * d
        return (seq_len * per_token + 3 * p * d) * dtype_bytes


@register_op
@dataclass(frozen=True)
class CosineAttention(_CosineAttentionBase):
    """TransNeXt's last-stage attention: full (non-causal) attention over the grid with
    length-scaled cosine logits (``n = H * W``), the query embedding and the CPB bias::

        logits_ij = ((l2norm(q_i) + e_q) * softplus(tau) * log(H W)) . l2norm(k_j) + cpb(i, j)
    """

    kind: ClassVar[str] = "cosine_attention"
    summary: ClassVar[str] = "TransNeXt full attention (length-scaled cosine, CPB bias)"

    def params(self) -> int:
        d = self.d_model
        return (
            linear_params(d, 3 * d, self.qkv_bias)
            + linear_params(d, d, True)
            + self._query_params()
            + self._cpb_params()
        )

    def flops(self, seq_len: int) -> int:
        d, h = self.d_model, self.heads
        return (
            linear_flops(d, 3 * d, seq_len)
            + linear_flops(d, d, seq_len)
            + 3 * 3 * seq_len * d  # l2 norms of q and k; embedding, temperature, length scale
            + 2 * 2 * seq_len * seq_len * d  # logits and the weighted sum of values
            + (SOFTMAX_FLOPS + 2) * h * seq_len * seq_len  # softmax, bias add and gather
            + self._cpb_flops()
        )

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        d = self.d_model
        return (seq_len * 5 * d + 2 * self.heads * seq_len * seq_len) * dtype_bytes
