"""TransNeXt's aggregated attention and its last-stage cosine attention over channels-last grids
``[B, H, W, C]`` (the math is in archgen.ir.ops.AggregatedAttention / CosineAttention).

Parameter names and shapes follow the official code (``q``, ``kv``, ``proj``, ``sr``, ``norm``,
``temperature``, ``query_embedding``, ``cpb_fc1``/``cpb_fc2``, ``relative_pos_bias_local``,
``learnable_tokens``, ``learnable_bias``; ``qkv`` in the full attention), and so does the
initialisation. The grid-dependent constants (window padding mask, length scale, CPB coordinate
table and index) are non-persistent buffers built from the node's static grid: derived, never in
a checkpoint, and constants of an exported graph.

``forward`` gathers each window with ``window**2`` static shifts of the zero-padded grid (Pad +
Slice in ONNX, no Unfold/Col2Im) and runs the CPB MLP on the distinct coordinates only, then
gathers; ``reference`` loops over positions, heads and keys and evaluates the CPB MLP at every
(query, key) pair from the coordinate formula, independently of the tables.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archgen.ir.ops.transnext import CPB_SPAN, cpb_axis_table, window_counts
from archgen.mixers.base import TokenMixer

# softplus(temperature) starts at 1 / 0.24 (the official initialisation)
INITIAL_SCALE = 1 / 0.24
# F.normalize's floor on the norm, repeated in the references
NORM_EPS = 1e-12
# the official pooled-token LayerNorm is nn.LayerNorm(dim): torch's default epsilon, not the
# model's 1e-6
POOL_NORM_EPS = 1e-5


def cpb_constants(height: int, width: int, sr: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPB offsets ``[T, 2]`` (doubled, int64: exact in any dtype) and the index ``[H*W, P]``
    of every (query, pooled key) pair into them, for a ``height x width`` grid pooled by ``sr``."""
    rows, cols = cpb_axis_table(height, sr), cpb_axis_table(width, sr)
    ry, rx = torch.tensor(rows.doubled), torch.tensor(cols.doubled)
    offsets = torch.stack(torch.meshgrid(ry, rx, indexing="ij"), dim=-1).reshape(-1, 2)
    iy = torch.tensor(rows.index)  # [H, H/sr]
    ix = torch.tensor(cols.index)  # [W, W/sr]
    # query (y, x), key (py, px) -> iy[y, py] * len(cols) + ix[x, px]
    index = iy[:, None, :, None] * len(cols.doubled) + ix[None, :, None, :]
    return offsets, index.reshape(height * width, -1)


def _trunc_normal(*shape: int, std: float, **fk: object) -> nn.Parameter:
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(*shape, **fk), std=std))  # type: ignore[arg-type]


def _init_linears(module: nn.Module) -> None:
    """The official initialisation of TransNeXt's linear maps and 1x1 convs."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class _CosineAttentionBase(TokenMixer):
    """Length-scaled cosine queries and the CPB MLP, shared by both attentions."""

    def __init__(
        self,
        d_model: int,
        *,
        height: int,
        width: int,
        heads: int,
        cpb_hidden: int,
        sr: int,
        fk: dict,
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        if height % sr or width % sr:
            raise ValueError(f"sr {sr} does not divide the {height}x{width} grid")
        self.d_model, self.heads, self.head_dim = d_model, heads, d_model // heads
        self.height, self.width, self.pool_stride = height, width, sr
        self.pooled = (height // sr) * (width // sr)
        self.temperature = nn.Parameter(
            torch.full((heads, 1, 1), math.log(math.expm1(INITIAL_SCALE)), **fk)
        )
        self.query_embedding = _trunc_normal(heads, 1, self.head_dim, std=0.02, **fk)
        self.cpb_fc1 = nn.Linear(2, cpb_hidden, **fk)
        self.cpb_fc2 = nn.Linear(cpb_hidden, heads, **fk)
        # integer constants (a float buffer made in float32 and then cast to float64 would keep
        # float32's rounding); the coordinates are computed from them in the weights' dtype
        offsets, index = cpb_constants(height, width, sr)
        self.cpb_half_scale = (cpb_axis_table(height, sr).half_scale,
                               cpb_axis_table(width, sr).half_scale)  # fmt: skip
        self.register_buffer("cpb_offsets", offsets.to(device=fk.get("device")), persistent=False)
        self.register_buffer("cpb_index", index.to(device=fk.get("device")), persistent=False)

    def output_projection(self) -> nn.Linear:
        return self.proj  # type: ignore[return-value]

    def scaled_queries(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q: [B, heads, L, head_dim]`` -> (L2-normalised ``q``, the scaled query ``q~``)."""
        q = F.normalize(q, dim=-1, eps=NORM_EPS)
        # log(n): n the keys each query sees, an integer buffer ([L, 1] or a scalar)
        length_scale = torch.log(self.keys_seen.to(q.dtype))
        scaled = (q + self.query_embedding) * F.softplus(self.temperature) * length_scale
        return q, scaled

    def position_bias(self) -> torch.Tensor:
        """The CPB bias of every (query, key) pair: ``[heads, L, keys]``."""
        offsets = self.cpb_offsets.to(self.cpb_fc1.weight.dtype)
        r = torch.stack(
            [offsets[:, 0] * self.cpb_half_scale[0], offsets[:, 1] * self.cpb_half_scale[1]], -1
        )
        coords = torch.sign(r) * torch.log2(1 + r.abs()) / math.log2(CPB_SPAN)  # [T, 2]
        per_coordinate = self.cpb_fc2(F.relu(self.cpb_fc1(coords)))  # [T, heads]
        # index_select: one ONNX Gather along the table's rows (tensor indexing exports as
        # GatherND)
        bias = per_coordinate.index_select(0, self.cpb_index.reshape(-1))  # [L * keys, heads]
        return bias.view(*self.cpb_index.shape, -1).permute(2, 0, 1)

    # -- reference pieces: written from the formulas, not from the tables ------------------------
    def _ref_cpb(self, y: int, x: int, py: int, px: int) -> torch.Tensor:
        """The CPB MLP at query ``(y, x)`` and the key cell ``(py, px)``: ``[heads]``."""
        s = self.pool_stride

        def axis(q: int, p: int, size: int) -> float:
            offset = (q - (p * s + (s - 1) / 2)) * CPB_SPAN / max(size - 1, 1)
            return math.copysign(math.log2(1 + abs(offset)) / 3, offset)

        c = torch.tensor(
            [axis(y, py, self.height), axis(x, px, self.width)],
            dtype=self.cpb_fc1.weight.dtype,
        )
        hidden = torch.clamp(c @ self.cpb_fc1.weight.T + self.cpb_fc1.bias, min=0)
        return hidden @ self.cpb_fc2.weight.T + self.cpb_fc2.bias

    def _ref_unit(self, v: torch.Tensor) -> torch.Tensor:
        return v / torch.clamp(torch.sqrt((v * v).sum(-1, keepdim=True)), min=NORM_EPS)

    def _ref_scaled(self, q: torch.Tensor, head: int, keys: int) -> torch.Tensor:
        scale = torch.log1p(torch.exp(self.temperature[head, 0, 0])) * math.log(keys)
        return (q + self.query_embedding[head, 0]) * scale


def _window_neighbours(x: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, H, W, C] -> [B, H, W, window**2, C]``: each position's window, row-major offsets
    (as ``nn.Unfold``), zeros outside the grid."""
    h, w = x.shape[1], x.shape[2]
    r = window // 2
    padded = F.pad(x, (0, 0, r, r, r, r))
    shifts = [padded[:, dy : dy + h, dx : dx + w] for dy in range(window) for dx in range(window)]
    return torch.stack(shifts, dim=3)


class AggregatedAttention(_CosineAttentionBase):
    """TransNeXt's aggregated attention on a fixed ``height x width`` grid.

    >>> m = AggregatedAttention(8, height=6, width=4, heads=2, sr=2)
    >>> m(torch.randn(2, 6, 4, 8)).shape
    torch.Size([2, 6, 4, 8])
    """

    def __init__(
        self,
        d_model: int,
        *,
        height: int,
        width: int,
        heads: int = 2,
        window: int = 3,
        sr: int = 2,
        qkv_bias: bool = True,
        cpb_hidden: int = 512,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        fk = {"device": device, "dtype": dtype}
        super().__init__(
            d_model, height=height, width=width, heads=heads, cpb_hidden=cpb_hidden, sr=sr, fk=fk
        )
        if window % 2 == 0 or window > min(height, width):
            raise ValueError(f"window {window} must be odd and fit the {height}x{width} grid")
        self.window, self.window_len = window, window * window
        self.q = nn.Linear(d_model, d_model, bias=qkv_bias, **fk)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=qkv_bias, **fk)
        self.proj = nn.Linear(d_model, d_model, **fk)
        self.sr = nn.Conv2d(d_model, d_model, 1, **fk)  # official name: spatial reduction
        self.norm = nn.LayerNorm(d_model, eps=POOL_NORM_EPS, **fk)
        k2 = self.window_len
        self.relative_pos_bias_local = _trunc_normal(heads, k2, std=0.0004, **fk)
        self.learnable_tokens = _trunc_normal(heads, self.head_dim, k2, std=0.02, **fk)
        self.learnable_bias = nn.Parameter(torch.zeros(heads, 1, k2, **fk))
        _init_linears(self)
        # which window positions lie inside the grid, and n_i = inside + pooled
        rows = torch.tensor(window_counts(height, window))
        cols = torch.tensor(window_counts(width, window))
        inside = torch.ones(1, 1, height, width)
        inside = _window_neighbours(inside.permute(0, 2, 3, 1), window)[0, ..., 0] > 0
        outside = ~inside.reshape(height * width, k2)
        self.register_buffer("padding_mask", outside.to(device=device), persistent=False)
        n = (rows[:, None] * cols[None, :]).reshape(-1, 1) + self.pooled
        self.register_buffer("keys_seen", n.to(device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, H, W, D] -> [B, H, W, D]
        b, h, w, d = x.shape
        nh, hd, k2, s = self.heads, self.head_dim, self.window_len, self.pool_stride
        n = h * w
        q, q_scaled = self.scaled_queries(self.q(x).view(b, n, nh, hd).transpose(1, 2))
        k, v = self.kv(x).chunk(2, dim=-1)
        k = F.normalize(k.view(b, h, w, nh, hd), dim=-1, eps=NORM_EPS).view(b, h, w, d)
        # [B, H, W, k2, D] -> [B, nh, L, k2, hd]
        k_win = _window_neighbours(k, self.window).view(b, n, k2, nh, hd).permute(0, 3, 1, 2, 4)
        v_win = _window_neighbours(v, self.window).view(b, n, k2, nh, hd).permute(0, 3, 1, 2, 4)
        local = (q_scaled.unsqueeze(-2) @ k_win.transpose(-2, -1)).squeeze(-2)  # [B, nh, L, k2]
        local = (local + self.relative_pos_bias_local.unsqueeze(1)).masked_fill(
            self.padding_mask, float("-inf")
        )
        # pooled tokens: 1x1 conv, GELU, mean over each s x s cell, LayerNorm
        cells = F.gelu(F.linear(x, self.sr.weight.flatten(1), self.sr.bias))
        cells = cells.reshape(b, h // s, s, w // s, s, d).mean(dim=(2, 4)).reshape(b, -1, d)
        kv_pool = self.kv(self.norm(cells)).view(b, -1, 2 * nh, hd).transpose(1, 2)
        k_pool, v_pool = kv_pool.chunk(2, dim=1)  # [B, nh, P, hd]
        pool = q_scaled @ F.normalize(k_pool, dim=-1, eps=NORM_EPS).transpose(-2, -1)
        pool = pool + self.position_bias()
        weights = torch.cat([local, pool], dim=-1).softmax(dim=-1)
        w_local, w_pool = weights.split([k2, self.pooled], dim=-1)
        # the learnable tokens and bias join the local weights after the softmax
        w_local = w_local + q @ self.learnable_tokens + self.learnable_bias
        out = (w_local.unsqueeze(-2) @ v_win).squeeze(-2) + w_pool @ v_pool  # [B, nh, L, hd]
        return self.proj(out.transpose(1, 2).reshape(b, h, w, d))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        nh, hd, k, s = self.heads, self.head_dim, self.window, self.pool_stride
        r, ph, pw = k // 2, h // s, w // s
        q_all = x @ self.q.weight.T + (self.q.bias if self.q.bias is not None else 0)
        kv_bias = self.kv.bias if self.kv.bias is not None else 0
        kv_all = x @ self.kv.weight.T + kv_bias
        k_all, v_all = kv_all[..., :d], kv_all[..., d:]
        conv = x @ self.sr.weight[:, :, 0, 0].T + self.sr.bias
        conv = 0.5 * conv * (1 + torch.erf(conv / math.sqrt(2)))
        pooled = []  # [B, D] per cell, row-major
        for py in range(ph):
            for px in range(pw):
                total = sum(conv[:, py * s + i, px * s + j] for i in range(s) for j in range(s))
                cell = total / (s * s)
                mean = cell.mean(-1, keepdim=True)
                var = ((cell - mean) ** 2).mean(-1, keepdim=True)
                cell = (cell - mean) / torch.sqrt(var + self.norm.eps)
                pooled.append(cell * self.norm.weight + self.norm.bias)
        kv_pool = [p @ self.kv.weight.T + kv_bias for p in pooled]
        cells = [(py, px) for py in range(ph) for px in range(pw)]
        out = x.new_zeros(b, h, w, d)
        for y in range(h):
            for xx in range(w):
                cpb = [self._ref_cpb(y, xx, py, px) for py, px in cells]
                window = [  # (offset index j, row, column) of the positions inside the grid
                    (j, y + dy - r, xx + dx - r)
                    for j, (dy, dx) in enumerate((a, c) for a in range(k) for c in range(k))
                    if 0 <= y + dy - r < h and 0 <= xx + dx - r < w
                ]
                for head in range(nh):
                    part = slice(head * hd, (head + 1) * hd)
                    q = self._ref_unit(q_all[:, y, xx, part])
                    qs = self._ref_scaled(q, head, len(window) + len(cells))
                    logits, values = [], []
                    for j, yy, xj in window:
                        key = self._ref_unit(k_all[:, yy, xj, part])
                        bias = self.relative_pos_bias_local[head, j]
                        logits.append((qs * key).sum(-1) + bias)
                        values.append(v_all[:, yy, xj, part])
                    for c, kvp in enumerate(kv_pool):
                        key = self._ref_unit(kvp[:, part])
                        logits.append((qs * key).sum(-1) + cpb[c][head])
                        values.append(kvp[:, d:][:, part])
                    scores = torch.stack(logits, dim=-1)
                    e = torch.exp(scores - scores.max(-1, keepdim=True).values)
                    a = e / e.sum(-1, keepdim=True)  # [B, keys]
                    acc = torch.zeros_like(q)
                    for i, value in enumerate(values):
                        weight = a[:, i]
                        if i < len(window):  # a local key: the learnable token and bias
                            j = window[i][0]
                            weight = weight + (q * self.learnable_tokens[head, :, j]).sum(-1)
                            weight = weight + self.learnable_bias[head, 0, j]
                        acc = acc + weight[:, None] * value
                    out[:, y, xx, part] = acc
        return out @ self.proj.weight.T + self.proj.bias


class CosineAttention(_CosineAttentionBase):
    """TransNeXt's last-stage full attention on a fixed ``height x width`` grid.

    >>> CosineAttention(8, height=3, width=5, heads=2)(torch.randn(2, 3, 5, 8)).shape
    torch.Size([2, 3, 5, 8])
    """

    def __init__(
        self,
        d_model: int,
        *,
        height: int,
        width: int,
        heads: int = 2,
        qkv_bias: bool = True,
        cpb_hidden: int = 512,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        fk = {"device": device, "dtype": dtype}
        super().__init__(
            d_model, height=height, width=width, heads=heads, cpb_hidden=cpb_hidden, sr=1, fk=fk
        )
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=qkv_bias, **fk)
        self.proj = nn.Linear(d_model, d_model, **fk)
        _init_linears(self)
        self.register_buffer(
            "keys_seen", torch.tensor(height * width, device=device), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, H, W, D] -> [B, H, W, D]
        b, h, w, d = x.shape
        n, nh, hd = h * w, self.heads, self.head_dim
        q, k, v = self.qkv(x).view(b, n, 3, nh, hd).permute(2, 0, 3, 1, 4)  # [B, nh, L, hd]
        _, q_scaled = self.scaled_queries(q)
        k = F.normalize(k, dim=-1, eps=NORM_EPS)
        logits = q_scaled @ k.transpose(-2, -1) + self.position_bias()
        out = logits.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, h, w, d))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        nh, hd = self.heads, self.head_dim
        qkv = x @ self.qkv.weight.T + (self.qkv.bias if self.qkv.bias is not None else 0)
        positions = [(y, xx) for y in range(h) for xx in range(w)]
        out = x.new_zeros(b, h, w, d)
        for y, xx in positions:
            cpb = [self._ref_cpb(y, xx, ky, kx) for ky, kx in positions]
            for head in range(nh):
                qpart = slice(head * hd, (head + 1) * hd)
                kpart = slice(d + head * hd, d + (head + 1) * hd)
                vpart = slice(2 * d + head * hd, 2 * d + (head + 1) * hd)
                qs = self._ref_scaled(self._ref_unit(qkv[:, y, xx, qpart]), head, h * w)
                scores = torch.stack(
                    [
                        (qs * self._ref_unit(qkv[:, ky, kx, kpart])).sum(-1) + cpb[i][head]
                        for i, (ky, kx) in enumerate(positions)
                    ],
                    dim=-1,
                )
                e = torch.exp(scores - scores.max(-1, keepdim=True).values)
                a = e / e.sum(-1, keepdim=True)
                out[:, y, xx, qpart] = sum(
                    a[:, i, None] * qkv[:, ky, kx, vpart] for i, (ky, kx) in enumerate(positions)
                )
        return out @ self.proj.weight.T + self.proj.bias
