"""Mamba-1 token mixer (S6 selective scan), parameter-compatible with mamba-ssm's ``Mamba``.

Math (research/mixers.md §R.1): ``[x, z] = in_proj(u)``; ``x = SiLU(causal depthwise conv(x))``;
``[δ, B, C] = x_proj(x)``; ``Δ = softplus(dt_proj(δ))``; per channel ``d`` and state ``n``:
``h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_t`` and ``y_t = C_t · h_t + D x_t``;
``out = out_proj(y * SiLU(z))``.

Three implementations of the scan, picked by ``scan=``:

* ``"chunked"`` (pure torch, exportable). The sequence is cut into chunks of ``chunk_size`` tokens.
  Inside a chunk the recurrence ``h_t = a_t h_{t-1} + u_t`` is solved by a Hillis-Steele doubling
  scan (``log2(chunk_size)`` levels of ``u_t += a_t u_{t-k}``, ``a_t *= a_{t-k}``). It composes
  *decays* multiplicatively, never exponentiates a cumulative log-decay, so it cannot overflow
  and is exact for any ``Δ`` and ``A`` (the log-space ``exp(S_t - S_s)`` factorisation overflows
  once a chunk's total log-decay passes ~170; trained models do reach that). The state is carried
  across chunks by a loop over the ``L / chunk_size`` chunks: in eager mode a Python loop, under
  ``torch.export`` the ``scan`` higher-order op, which the ONNX exporter lowers to one ONNX
  ``Scan`` node whose body is the fixed-size chunk graph. The exported graph therefore has the
  same nodes for every ``L`` and takes a dynamic sequence length. Under ``torch.compile`` this
  scan is a graph break (it runs eagerly; the projections are compiled).
  Numerical limits: none beyond rounding; a decay product below ~1e-38 underflows to 0 exactly
  as in the sequential loop. Cost: ~5 elementwise passes over ``[B, Q, D_in, N]`` per doubling
  level; ``chunk_size=8`` was fastest on the 2-core CPU (hidden 768, L=4096: Q=4/8/16/32 took
  489/462/546/688 ms for the whole mixer).
* ``"fused"``: a C++ kernel (``archgen.mixers.kernels.selective_scan``), one pass over
  ``(channels, L)`` with the state in registers, plus a C++ reverse scan for backward. Built on
  first use; CPU only; a torch custom op, so ``torch.compile(fullgraph=True)`` keeps it in the
  graph. Requesting it where it cannot build is an error.
* ``"triton"``: Triton kernels (``archgen.mixers.kernels.selective_scan_triton``), one pass
  over the sequence per block of channels with the state in registers, plus a reverse scan
  over checkpointed states for backward; CUDA, float32; ``triton_op`` s, so they stay in
  ``torch.compile`` graphs.
* ``"auto"``: ``"fused"`` on CPU when the kernel builds (else ``"chunked"`` with a warning,
  once); on CUDA ``"triton"`` when triton is installed (float32 and bf16 modules; the scan runs
  in float32); otherwise, and while exporting, ``"chunked"`` -- except inside
  ``selective_scan.exported_as_custom_op()`` (the onnx backend's default), where a float32
  scan exports as the kernel's custom op ``archgen::selective_scan_softplus`` (Δ's softplus and
  dt bias folded in, mamba-ssm's ``delta_softplus``), one node that onnxruntime runs with
  archgen's custom-op library (``archgen.backends.onnx_scan``). Under any export the causal
  conv is written as one grouped ``conv1d`` (an ONNX ``Conv``), not eager's in-place taps.

The implementation actually used by the last ``forward`` is recorded in ``last_scan_impl``.

**Bidirectional form** (``causal=False``, a masked-diffusion denoiser): Vision Mamba's
"bimamba" / MambaMixer's bidirectional mixer (research/mixers.md §8), in that formulation
``y = SSM_f(x) ⊗ g + Flip(SSM_b(Flip(x))) ⊗ g``: one shared ``in_proj`` gives ``x`` and the gate
``z``; the forward direction runs the block above (``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``,
``D``); the backward direction runs the same block with its own parameters (Vim's names
``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b``, initialised alike) on the
time-flipped ``x`` -- a causal conv and scan over the flipped sequence, i.e. anti-causal ones --
and its output is flipped back; ``out = out_proj((y_f + y_b) * SiLU(z))`` (summed, not halved:
mixers.md writes the sum; Vim's optional ``if_divide_out`` is not used). Any scan
implementation serves both directions. There is no one-token ``step``.
The scan always runs in float32 (float64 when the inputs are float64), also for bf16 modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from archgen.mixers.base import DecodeState, TokenMixer, exporting, keep_unless_real
from archgen.mixers.kernels import HAS_TRITON, triton_available
from archgen.mixers.kernels import selective_scan as fused_kernel

SCAN_IMPLS = ("auto", "chunked", "fused", "triton")


def _scan_dtype(dtype: torch.dtype) -> torch.dtype:
    """Decays are computed in float32 at least: bf16 rounds a decay of 0.999 to 1.0."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# -- chunked scan ------------------------------------------------------------------------------
def _scan_chunk(
    h: torch.Tensor,
    dt: torch.Tensor,
    dtx: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    a_mat: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: carry ``h [B, D, N]``, ``dt, dtx [B, Q, D]``, ``b, c [B, Q, N]``, ``A [D, N]``
    -> (state after the chunk ``[B, D, N]``, outputs ``C_t · h_t`` ``[B, Q, D]``)."""
    q = dt.shape[1]
    decay = torch.exp(dt[..., None] * a_mat)  # [B, Q, D, N], in (0, 1]
    u = dtx[..., None] * b[:, :, None, :]  # [B, Q, D, N]
    # The carried state enters as part of the first token's input: h_0 = a_0 h + u_0.
    u = torch.cat([torch.addcmul(u[:, :1], decay[:, :1], h[:, None]), u[:, 1:]], dim=1)
    k = 1
    while k < q:  # log2(Q) doubling levels; Q is a constant of the graph
        u = torch.cat([u[:, :k], torch.addcmul(u[:, k:], decay[:, k:], u[:, :-k])], dim=1)
        if 2 * k < q:
            decay = torch.cat([decay[:, :k], decay[:, k:] * decay[:, :-k]], dim=1)
        k *= 2
    y = (u @ c[..., None]).squeeze(-1)  # [B, Q, D]
    # contiguous_format: the carry must have the same strides as the initial state under
    # torch.export (a preserved slice stride would depend on the symbolic length)
    return u[:, -1].clone(memory_format=torch.contiguous_format), y


def _scan_chunk_no_grad(
    h: torch.Tensor,
    dt: torch.Tensor,
    dtx: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    a_mat: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_scan_chunk`` without autograd: the same operations in the same order (bitwise equal
    results), writing each doubling level into a second buffer instead of concatenating, which
    saves a full copy per level (~25% of the chunked scan's time)."""
    q = dt.shape[1]
    decay = torch.mul(dt[..., None], a_mat).exp_()
    u = torch.mul(dtx[..., None], b[:, :, None, :])
    u[:, 0].addcmul_(decay[:, 0], h)
    u_next, decay_next = torch.empty_like(u), torch.empty_like(decay)
    k = 1
    while k < q:
        u_next[:, :k] = u[:, :k]
        torch.addcmul(u[:, k:], decay[:, k:], u[:, :-k], out=u_next[:, k:])
        u, u_next = u_next, u
        if 2 * k < q:
            decay_next[:, :k] = decay[:, :k]
            torch.mul(decay[:, k:], decay[:, :-k], out=decay_next[:, k:])
            decay, decay_next = decay_next, decay
        k *= 2
    return u[:, -1].clone(), (u @ c[..., None]).squeeze(-1)


def selective_scan_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    a_mat: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d_skip: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """``y_t = C_t · h_t + D x_t`` for ``x, dt [B, L, D]``, ``b, c [B, L, N]``, ``A [D, N]``,
    ``D [D]``, all in the scan dtype; no Python loop over ``L`` (see the module docstring)."""
    bsz, seq, dim = x.shape
    n = a_mat.shape[1]
    q = chunk_size
    # Zero padding is inert: dt = 0 means decay 1 and input 0; padded outputs are dropped.
    pad = (-seq) % q
    dt_p, dtx_p = F.pad(dt, (0, 0, 0, pad)), F.pad(dt * x, (0, 0, 0, pad))
    b_p, c_p = F.pad(b, (0, 0, 0, pad)), F.pad(c, (0, 0, 0, pad))
    n_chunks = dt_p.shape[1] // q
    h0 = x.new_zeros(bsz, dim, n)
    if exporting():
        from torch._higher_order_ops.scan import scan

        def chunks(t: torch.Tensor) -> torch.Tensor:  # [B, L', K] -> [L'/Q, B, Q, K]
            return t.reshape(bsz, n_chunks, q, t.shape[-1]).transpose(0, 1)

        # Exports are for inference, and torch 2.13's scan autograd fails on a symbolic batch
        # size when the ONNX exporter re-traces the graph with grad enabled: detach.
        xs = tuple(chunks(t).detach() for t in (dt_p, dtx_p, b_p, c_p))
        a_scan = a_mat.detach()

        def body(
            h: torch.Tensor, xs: tuple[torch.Tensor, ...]
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return _scan_chunk(h, *xs, a_scan)

        _, ys = scan(body, h0, xs)
        y = ys.transpose(0, 1).reshape(bsz, n_chunks * q, dim)
    else:
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, a_mat, b, c))
        step = _scan_chunk if grad else _scan_chunk_no_grad
        h, outs = h0, []
        for i in range(n_chunks):  # L/Q iterations, each a fixed-size parallel chunk
            sl = slice(i * q, (i + 1) * q)
            h, y_chunk = step(h, dt_p[:, sl], dtx_p[:, sl], b_p[:, sl], c_p[:, sl], a_mat)
            outs.append(y_chunk)
        y = torch.cat(outs, dim=1)
    return y[:, :seq] + x * d_skip


def _run_scan(
    impl: str,
    x: torch.Tensor,
    dt: torch.Tensor,
    a_mat: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d_skip: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    if impl == "fused":
        return fused_kernel.selective_scan(x, dt, a_mat, b, c, d_skip)
    if impl == "triton":
        from archgen.mixers.kernels import selective_scan_triton

        return selective_scan_triton.selective_scan(x, dt, a_mat, b, c, d_skip)
    return selective_scan_chunked(x, dt, a_mat, b, c, d_skip, chunk_size)


# Under torch.compile the chunked scan is a graph break and runs eagerly: Inductor (torch 2.13)
# fails to lower the scan higher-order op, and tracing the chunk loop would unroll it into an
# L-sized graph. (The fused kernel is a custom op and stays in the compiled graph.)
# torch._disable_dynamo is torch.compiler.disable with a lazy import: importing torch._dynamo
# here would add ~2 s to `import archgen.mixers.mamba`.
_run_scan_outside_graph = torch._disable_dynamo(_run_scan)


def resolve_scan_impl(scan: str, x: torch.Tensor) -> str:
    """The scan implementation a ``scan=`` choice runs for input ``x`` (see the module
    docstring); shared with the other S6 users (ViM2's mixers, ``archgen.mixers.vim2``)."""
    export = exporting()
    if scan == "chunked":
        return "chunked"
    if scan == "triton":
        if export:
            raise RuntimeError(
                "Mamba(scan='triton') cannot be exported; use scan='chunked' or 'auto'"
            )
        if not triton_available(x.device.type):
            raise RuntimeError(
                f"Mamba(scan='triton') needs triton and a CUDA input, got a {x.device} "
                f"input{'' if HAS_TRITON else ' and no triton installed'}"
            )
        return "triton"
    # the ONNX backend's fused export: the scan becomes the kernel's custom op, one node
    as_op = export and fused_kernel.exports_as_custom_op()
    as_op = as_op and _scan_dtype(x.dtype) == torch.float32
    if scan == "fused":
        if as_op:
            return "fused"
        if export:
            raise RuntimeError(
                "Mamba(scan='fused') cannot be exported but as the onnx backend's custom "
                "op (the C++ kernel is opaque to torch.export); use scan='chunked' or 'auto'"
            )
        if x.device.type != "cpu":
            raise RuntimeError(f"Mamba(scan='fused') is CPU-only, got a {x.device} input")
        fused_kernel.load(required=True)
        return "fused"
    if export:
        return "fused" if as_op else "chunked"
    if x.device.type == "cuda":
        return "triton" if HAS_TRITON and x.dtype != torch.float64 else "chunked"
    if x.device.type != "cpu" or not fused_kernel.available():
        return "chunked"
    return "fused"


# -- the module --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Direction:
    """One scan direction's own parameters (the forward ones, or the flipped scan's ``*_b``)."""

    conv1d: nn.Conv1d
    x_proj: nn.Linear
    dt_proj: nn.Linear
    A_log: nn.Parameter
    D: nn.Parameter


class Mamba(TokenMixer):
    """Mamba-1 mixer with mamba-ssm's parameter names, shapes and initialisation.

    >>> m = Mamba(d_model=32, d_state=8, scan="chunked")
    >>> u = torch.randn(2, 13, 32)
    >>> m(u).shape
    torch.Size([2, 13, 32])
    >>> m.last_scan_impl
    'chunked'
    >>> torch.allclose(m(u), m.reference(u), atol=1e-5)
    True
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan: str = "auto",
        chunk_size: int = 8,
        causal: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if scan not in SCAN_IMPLS:
            raise ValueError(f"scan must be one of {SCAN_IMPLS}, got {scan!r}")
        if chunk_size < 1 or chunk_size & (chunk_size - 1):
            raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.scan, self.chunk_size = scan, chunk_size
        self.last_scan_impl: str | None = None
        di, n, r = self.d_inner, d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * di, bias=bias, **fk)
        self.conv1d = nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1, bias=conv_bias, **fk)
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False, **fk)
        self.dt_proj = nn.Linear(r, di, bias=True, **fk)
        self.A_log = nn.Parameter(torch.empty(di, n, **fk))
        self.D = nn.Parameter(torch.empty(di, **fk))
        self.out_proj = nn.Linear(di, d_model, bias=bias, **fk)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.causal = causal
        if not causal:  # the flipped scan's own conv and SSM parameters (Vim's names)
            self.conv1d_b = nn.Conv1d(
                di, di, d_conv, groups=di, padding=d_conv - 1, bias=conv_bias, **fk
            )
            self.x_proj_b = nn.Linear(di, r + 2 * n, bias=False, **fk)
            self.dt_proj_b = nn.Linear(r, di, bias=True, **fk)
            self.A_b_log = nn.Parameter(torch.empty(di, n, **fk))
            self.D_b = nn.Parameter(torch.empty(di, **fk))
        for direction in self._directions():
            self._init_ssm_parameters(direction)

    def output_projection(self) -> nn.Linear:
        return self.out_proj

    def _directions(self) -> list[_Direction]:
        """The scan directions' parameters: forward only, or forward and flipped."""
        forward = _Direction(self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        if self.causal:
            return [forward]
        backward = _Direction(self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)
        return [forward, backward]

    def _init_ssm_parameters(self, p: _Direction) -> None:
        """mamba-ssm's init: dt bias = softplus⁻¹ of log-uniform dt, A = -(1..N), D = 1."""
        with torch.no_grad():
            std = self.dt_rank**-0.5
            nn.init.uniform_(p.dt_proj.weight, -std, std)
            bias = p.dt_proj.bias
            lo, hi = math.log(self.dt_min), math.log(self.dt_max)
            dt = torch.exp(torch.rand(bias.shape, device=bias.device) * (hi - lo) + lo)
            dt = dt.clamp(min=self.dt_init_floor)
            bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) == dt
            n = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=p.A_log.device)
            p.A_log.copy_(torch.log(n).expand(self.d_inner, -1))
            p.D.fill_(1.0)
        # Same markers as mamba-ssm, read by optimisers that skip weight decay / re-init.
        p.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]
        p.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        p.D._no_weight_decay = True  # type: ignore[attr-defined]

    # -- shared pieces -------------------------------------------------------------------------
    def _ssm_inputs(
        self, x: torch.Tensor, p: _Direction | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Post-conv ``x [..., Din]`` -> ``Δ [..., Din]``, ``B, C [..., N]`` (scan dtype), ``A``,
        with the parameters of direction ``p`` (default: the forward one)."""
        p = p or self._directions()[0]
        work = _scan_dtype(x.dtype)
        delta, b, c = p.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(p.dt_proj(delta).to(work))
        a_mat = -torch.exp(p.A_log.to(work))
        return dt, b.to(work), c.to(work), a_mat

    def _causal_conv(self, x: torch.Tensor, conv: nn.Conv1d | None = None) -> torch.Tensor:
        """Depthwise causal conv over time on ``[B, L, Din]``, kept time-major: ``nn.Conv1d``
        wants ``[B, Din, L]`` and the two transposing copies cost more than the conv itself."""
        conv = conv or self.conv1d
        k = self.d_conv
        if exporting():
            # One ONNX Conv (group = channels, left padding K-1): the in-place tap updates below
            # export as ScatterND/Slice chains, 17 % of onnxruntime's time at L=512. Same sum.
            out = F.conv1d(
                F.pad(x.transpose(1, 2), (k - 1, 0)), conv.weight, conv.bias, groups=x.shape[-1]
            )
            return out.transpose(1, 2)
        weight = conv.weight[:, 0]  # [Din, K]; tap K-1 multiplies the current token
        bias = conv.bias
        out = x * weight[:, k - 1] if bias is None else torch.addcmul(bias, x, weight[:, k - 1])
        for s in range(1, k):  # tap K-1-s sees the token s steps back; K is a graph constant
            out[:, s:].addcmul_(x[:, :-s], weight[:, k - 1 - s])
        return out

    def _gate_out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out_proj(y.to(z.dtype) * F.silu(z))

    def _resolve_impl(self, x: torch.Tensor) -> str:
        return resolve_scan_impl(self.scan, x)

    # -- production ----------------------------------------------------------------------------
    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(u).chunk(2, dim=-1)
        impl = self._resolve_impl(u)
        self.last_scan_impl = impl
        forward, *backward = self._directions()
        y = self._scan_direction(x, forward, impl)
        if backward:  # the flipped sequence's causal scan, flipped back: an anti-causal scan
            y = y + self._scan_direction(x.flip(1), backward[0], impl).flip(1)
        return self._gate_out(y, z)

    def _scan_direction(self, x: torch.Tensor, p: _Direction, impl: str) -> torch.Tensor:
        """Conv, SiLU and selective scan of pre-conv ``x [B, L, Din]`` with direction ``p``'s
        parameters, in time order: ``y [B, L, Din]`` in the scan dtype."""
        x = F.silu(self._causal_conv(x, p.conv1d))
        if impl == "fused" and exporting():  # the custom op computes softplus(dt + bias) itself
            return self._exported_fused_scan(x, p)
        dt, b, c, a_mat = self._ssm_inputs(x, p)
        xs, d_skip = x.to(dt.dtype), p.D.to(dt.dtype)
        compiling = torch.compiler.is_compiling() and not exporting()
        run = _run_scan_outside_graph if compiling and impl == "chunked" else _run_scan
        return run(impl, xs, dt, a_mat, b, c, d_skip, self.chunk_size)

    def _exported_fused_scan(self, x: torch.Tensor, p: _Direction) -> torch.Tensor:
        """The scan of post-conv ``x`` as ``archgen::selective_scan_softplus`` (export only, float32
        scans): the raw dt projection and its bias go in separately, so onnxruntime's node folds
        ``Δ = softplus(dt + bias)`` into the scan (mamba-ssm's ``delta_softplus``)."""
        delta, b, c = p.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt_raw = F.linear(delta, p.dt_proj.weight).float()
        a_mat = -torch.exp(p.A_log.float())
        args = (x.float(), dt_raw, a_mat, b.float(), c.float(), p.D.float())
        return fused_kernel.selective_scan_softplus(*args, p.dt_proj.bias.float())

    # -- reference -----------------------------------------------------------------------------
    def reference(self, u: torch.Tensor) -> torch.Tensor:
        """Token-by-token loops: explicit conv taps and the sequential recurrence; when
        bidirectional, the backward direction is written out as its own loop running from the
        last token down (taps on the tokens after ``t``), not as a flip of the forward one."""
        x, z = self.in_proj(u).chunk(2, dim=-1)
        directions = self._directions()
        y = self._reference_direction(x, directions[0], reverse=False)
        if len(directions) == 2:
            y = y + self._reference_direction(x, directions[1], reverse=True)
        return self._gate_out(y, z)

    def _reference_direction(self, x: torch.Tensor, p: _Direction, reverse: bool) -> torch.Tensor:
        bsz, seq, _ = x.shape
        step = -1 if reverse else 1  # the direction time runs in: t-1 is "before" t, or t+1
        weight = p.conv1d.weight[:, 0]  # [Din, K]; tap K-1 multiplies the current token
        conv = []
        for t in range(seq):
            acc = p.conv1d.bias if p.conv1d.bias is not None else torch.zeros_like(x[:, t])
            for j in range(self.d_conv):
                src = t - step * (self.d_conv - 1 - j)
                if 0 <= src < seq:
                    acc = acc + weight[:, j] * x[:, src]
            conv.append(acc)
        x = F.silu(torch.stack(conv, dim=1))
        dt, b, c, a_mat = self._ssm_inputs(x, p)
        xs = x.to(dt.dtype)
        h = xs.new_zeros(bsz, self.d_inner, self.d_state)
        ys: list[torch.Tensor] = [xs[:, 0]] * seq
        for t in range(seq - 1, -1, -1) if reverse else range(seq):
            h = (
                torch.exp(dt[:, t, :, None] * a_mat) * h
                + (dt[:, t] * xs[:, t])[..., None] * b[:, t, None, :]
            )
            ys[t] = (h * c[:, t, None, :]).sum(-1) + p.D.to(xs.dtype) * xs[:, t]
        return torch.stack(ys, dim=1)

    # -- decoding: conv window + SSM state, O(1) per token -------------------------------------
    def init_state(
        self,
        batch: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_len: int | None = None,
    ) -> DecodeState:
        """``(conv_state [B, Din, d_conv-1], ssm_state [B, Din, N])``; the SSM state is float32
        at least, like the decays of ``forward``."""
        if not self.causal:
            # the flipped scan starts at the last token: no one-token-at-a-time form
            raise NotImplementedError("bidirectional Mamba (causal=False) cannot decode")
        dtype = dtype or self.in_proj.weight.dtype
        conv = torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device, dtype=dtype)
        ssm = torch.zeros(
            batch, self.d_inner, self.d_state, device=device, dtype=_scan_dtype(dtype)
        )
        return (conv, ssm)

    def step(
        self,
        x: torch.Tensor,
        state: DecodeState,
        pos: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DecodeState]:
        if not self.causal:
            raise NotImplementedError("bidirectional Mamba (causal=False) cannot decode")
        conv_state, ssm_state = state  # pos is unused: Mamba has no positional terms
        xi, z = self.in_proj(x).chunk(2, dim=-1)  # [B, Din]
        window = torch.cat([conv_state, xi[..., None].to(conv_state.dtype)], dim=-1)
        xc = (window * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            xc = xc + self.conv1d.bias
        xc = F.silu(xc)
        dt, b, c, a_mat = self._ssm_inputs(xc)
        xs = xc.to(dt.dtype)
        h = torch.exp(dt[..., None] * a_mat) * ssm_state + (dt * xs)[..., None] * b[:, None, :]
        y = (h @ c[..., None]).squeeze(-1) + self.D.to(xs.dtype) * xs
        return self._gate_out(y, z), keep_unless_real(mask, (window[..., 1:], h), state)
