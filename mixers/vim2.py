"""Torch modules of ViM2 (MambaMixer for images; ``archgen.ir.ops.vim2``, research/mixers.md §8)
over channels-last grids ``[B, H, W, C]``.

The selective scans are Mamba-1's (:mod:`archgen.mixers.mamba`): the same implementations
(``chunked`` / ``fused`` / ``triton``, chosen by :func:`~archgen.mixers.mamba.resolve_scan_impl`
and recorded in ``last_scan_impl``), so ViM2 exports through Mamba's ONNX path (the chunked
scan as an ONNX ``Scan``; a grid has a fixed size, so its length is static). Each module's
``reference`` is a plain per-token loop of the S6 recurrence over each scan order.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from archgen.ir.ops.vim2 import CROSS_SCAN_ORDERS
from archgen.mixers.base import TokenMixer, exporting
from archgen.mixers.kernels import selective_scan as fused_kernel
from archgen.mixers.mamba import (
    SCAN_IMPLS,
    Mamba,
    _run_scan,
    _run_scan_outside_graph,
    _scan_dtype,
    resolve_scan_impl,
)


class S6Parameters(nn.Module):
    """One S6 parameter set (Mamba-1's names and initialisation): ``x_proj`` (Δ rank, B, C),
    ``dt_proj``, ``A_log``, ``D``."""

    def __init__(
        self,
        d_inner: int,
        *,
        d_state: int,
        dt_rank: int,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.d_state, self.dt_rank = d_state, dt_rank
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False, **fk)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True, **fk)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state, **fk))
        self.D = nn.Parameter(torch.empty(d_inner, **fk))
        with torch.no_grad():  # mamba-ssm's: softplus(dt bias) log-uniform, A = -(1..N), D = 1
            std = dt_rank**-0.5
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            lo, hi = math.log(dt_min), math.log(dt_max)
            dt = torch.exp(torch.rand(d_inner, device=device) * (hi - lo) + lo)
            dt = dt.clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            n = torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
            self.A_log.copy_(torch.log(n).expand(d_inner, -1))
            self.D.fill_(1.0)
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D._no_weight_decay = True  # type: ignore[attr-defined]

    def inputs(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Post-conv ``x [..., Di]`` -> ``Δ [..., Di]``, ``B, C [..., N]`` and ``A [Di, N]``,
        in the scan dtype (float32 at least)."""
        work = _scan_dtype(x.dtype)
        delta, b, c = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(delta).to(work))
        return dt, b.to(work), c.to(work), -torch.exp(self.A_log.to(work))

    def scan(self, x: torch.Tensor, impl: str, chunk_size: int) -> torch.Tensor:
        """S6 over the sequence ``x [B, L, Di]`` in order, with Mamba's scan ``impl``."""
        if impl == "fused" and exporting():  # the onnx backend's custom op folds softplus in
            delta, b, c = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
            dt_raw = F.linear(delta, self.dt_proj.weight).float()
            a_mat = -torch.exp(self.A_log.float())
            args = (x.float(), dt_raw, a_mat, b.float(), c.float(), self.D.float())
            return fused_kernel.selective_scan_softplus(*args, self.dt_proj.bias.float())
        dt, b, c, a_mat = self.inputs(x)
        compiling = torch.compiler.is_compiling() and not exporting()
        run = _run_scan_outside_graph if compiling and impl == "chunked" else _run_scan
        return run(impl, x.to(dt.dtype), dt, a_mat, b, c, self.D.to(dt.dtype), chunk_size)

    def reference(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The recurrence token by token over ``xs`` (each ``[B, Di]``, in scan order):
        ``h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_t``, ``y_t = C_t · h_t + D x_t``."""
        h: torch.Tensor | None = None
        ys = []
        for x in xs:
            dt, b, c, a_mat = self.inputs(x)
            x = x.to(dt.dtype)
            u = (dt * x)[..., None] * b[:, None, :]
            h = u if h is None else torch.exp(dt[..., None] * a_mat) * h + u
            ys.append((h * c[:, None, :]).sum(-1) + self.D.to(x.dtype) * x)
        return ys


def _cross_scan_positions(h: int, w: int) -> list[list[tuple[int, int]]]:
    """The grid positions in each of VMamba's cross-scan orders (:data:`CROSS_SCAN_ORDERS`)."""
    rows = [(i, j) for i in range(h) for j in range(w)]
    cols = [(i, j) for j in range(w) for i in range(h)]
    return [rows, cols, rows[::-1], cols[::-1]]


class SelectiveTokenMixer(TokenMixer):
    """ViM2's selective token mixer (``selective_token`` in ``archgen.ir.ops.vim2``).

    >>> m = SelectiveTokenMixer(8, d_state=4, scan="chunked")
    >>> m(torch.randn(2, 3, 5, 8)).shape
    torch.Size([2, 3, 5, 8])
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        expand: int = 1,
        dt_rank: int | None = None,
        kernel: int = 3,
        scan: str = "auto",
        chunk_size: int = 8,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if scan not in SCAN_IMPLS:
            raise ValueError(f"scan must be one of {SCAN_IMPLS}, got {scan!r}")
        fk = {"device": device, "dtype": dtype}
        di = expand * d_model
        self.d_inner, self.kernel = di, kernel
        self.scan_impl, self.chunk_size = scan, chunk_size
        self.last_scan_impl: str | None = None
        rank = dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * di, bias=False, **fk)
        self.conv2d = nn.Conv2d(di, di, kernel, padding=kernel // 2, groups=di, **fk)
        self.scans = nn.ModuleList(
            S6Parameters(di, d_state=d_state, dt_rank=rank, **fk) for _ in CROSS_SCAN_ORDERS
        )
        self.out_proj = nn.Linear(di, d_model, bias=False, **fk)

    def output_projection(self) -> nn.Linear:
        return self.out_proj

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # [B, H, W, D] -> [B, H, W, D]
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        impl = resolve_scan_impl(self.scan_impl, u)
        self.last_scan_impl = impl
        bsz, h, w, di = x.shape
        rows = x.reshape(bsz, h * w, di)  # row-major order
        cols = x.transpose(1, 2).reshape(bsz, h * w, di)  # column-major order
        row_scan, col_scan, row_back, col_back = self.scans

        def run(p: nn.Module, seq: torch.Tensor) -> torch.Tensor:
            assert isinstance(p, S6Parameters)
            return p.scan(seq, impl, self.chunk_size)

        # each reversed scan's output flipped back: every output sits where its token was read
        y_rows = run(row_scan, rows) + run(row_back, rows.flip(1)).flip(1)
        y_cols = run(col_scan, cols) + run(col_back, cols.flip(1)).flip(1)
        y = y_rows.reshape(bsz, h, w, di) + y_cols.reshape(bsz, w, h, di).transpose(1, 2)
        return self.out_proj(y.to(z.dtype) * F.silu(z))

    def reference(self, u: torch.Tensor) -> torch.Tensor:
        """Explicit conv taps, then for each scan order a token-by-token S6 loop over the grid
        positions in that order, each output written back to its position."""
        x, z = self.in_proj(u).chunk(2, dim=-1)
        bsz, h, w, di = x.shape
        k, r = self.kernel, self.kernel // 2
        weight = self.conv2d.weight[:, 0]  # [Di, k, k]
        conv = torch.zeros_like(x) + self.conv2d.bias
        for i in range(h):
            for j in range(w):
                for dy in range(k):
                    for dx in range(k):
                        y_src, x_src = i + dy - r, j + dx - r
                        if 0 <= y_src < h and 0 <= x_src < w:
                            conv[:, i, j] = conv[:, i, j] + weight[:, dy, dx] * x[:, y_src, x_src]
        x = F.silu(conv)
        y = torch.zeros(bsz, h, w, di, dtype=_scan_dtype(x.dtype), device=x.device)
        for params, order in zip(self.scans, _cross_scan_positions(h, w), strict=True):
            assert isinstance(params, S6Parameters)
            outs = params.reference([x[:, i, j] for i, j in order])
            for (i, j), out in zip(order, outs, strict=True):
                y[:, i, j] = y[:, i, j] + out
        return self.out_proj(y.to(z.dtype) * F.silu(z))


class SelectiveChannelMixer(Mamba):
    """MambaMixer's selective channel mixer (``selective_channel`` in ``archgen.ir.ops.vim2``):
    the bidirectional Mamba block (``causal=False``: a forward and a flipped scan, each with
    its own conv and S6 parameters, one gate) run on the transposed grid ``x^T [B, D, H*W]``,
    so the scans run along the channels and the projections act on the tokens. The parameters
    are the bidirectional Mamba's, with ``d_model = height * width``.

    >>> m = SelectiveChannelMixer(6, height=3, width=5, d_state=4, scan="chunked")
    >>> m(torch.randn(2, 3, 5, 6)).shape
    torch.Size([2, 3, 5, 6])
    """

    def __init__(
        self,
        d_model: int,
        *,
        height: int,
        width: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 1,
        dt_rank: int | None = None,
        scan: str = "auto",
        chunk_size: int = 8,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            height * width,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            dt_rank=dt_rank,
            scan=scan,
            chunk_size=chunk_size,
            causal=False,
            device=device,
            dtype=dtype,
        )
        self.channels, self.height, self.width = d_model, height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, H, W, D] -> [B, H, W, D]
        return self._over_channels(x, super().forward)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Mamba's loop-level reference (a forward and a backward token loop) on ``x^T``."""
        return self._over_channels(x, super().reference)

    def _over_channels(
        self, x: torch.Tensor, mix: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        bsz, h, w, d = x.shape
        transposed = x.reshape(bsz, h * w, d).transpose(1, 2)  # [B, D, L]: channels in order
        return mix(transposed).transpose(1, 2).reshape(bsz, h, w, d)


class WeightedSum(nn.Module):
    """``sum_i weight[i] * x_i`` (``weighted_sum`` in ``archgen.ir.ops.vim2``): DenseFormer's /
    MambaMixer's weighted average of earlier outputs, one learned scalar per input, initialised
    to the newest input alone (``weight = (0, ..., 0, 1)``: the plain residual chain)."""

    def __init__(
        self,
        d_model: int,
        *,
        inputs: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        weight = torch.zeros(inputs, device=device, dtype=dtype)
        weight[-1] = 1.0
        self.weight = nn.Parameter(weight)
        self.weight._no_weight_decay = True  # type: ignore[attr-defined]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return (torch.stack(xs, dim=-1) @ self.weight.to(xs[0].dtype)).contiguous()

    def reference(self, *xs: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(xs[0])
        for w, x in zip(self.weight, xs, strict=True):
            out = out + w * x
        return out
