"""Mamba-1's selective scan on the GPU: Triton kernels for the forward and the backward.

The chunked torch scan (``mixers/mamba.py``) launches a dozen kernels per chunk of 8 tokens: on
an H200 that made the hybrid example 30x slower than the Mamba-2 one (benchmarks/results/
cuda.md). Here one program owns a block of channels of one sequence and walks the sequence
once, keeping the state ``h [BLOCK_D, N]`` in registers -- the loop mamba-ssm's CUDA kernel
runs. The loads of token ``t + 1`` are issued before token ``t``'s arithmetic, so their latency
overlaps the work.

Backward (the scheme of the C++ kernel, ``selective_scan.cpp``): the reverse scan
``g_t = gy_t C_t + exp(Δ_{t+1} A) g_{t+1}`` needs the forward state ``h_{t-1}`` at every step,
and recovering it by dividing out the decay is unstable (decays underflow). So a program first
walks forward storing the state every ``SEGMENT`` tokens, then, segment by segment from the
end, recomputes the segment's states into a scratch buffer and walks them backwards. Memory:
``B * D * N * (L / SEGMENT + SEGMENT)`` floats beside the gradients. Gradients of ``B`` and
``C`` sum over channels, so each block of channels writes its partial sums and torch adds them.

Both kernels are ``torch.library.triton_op`` s, the backward registered as the forward's
autograd formula, so ``torch.compile(fullgraph=True)`` keeps them in the graph, for training
too. Correctness is checked on the CPU with ``TRITON_INTERPRET=1`` (tests/mixers/
test_mamba_triton.py) and on the GPU (tests/gpu).

Importing this module needs ``triton``: :func:`archgen.mixers.kernels.triton_available` says
whether it can run, before anything imports it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from archgen.mixers.kernels import register_scan_backward

BLOCK_D = 32  # channels per program: B * D / 32 programs; 32 x N fp32 state in registers
SEGMENT = 64  # backward: the forward state is stored every SEGMENT tokens and recomputed between


@triton.jit
def _scan_fwd_kernel(
    x_ptr,
    dt_ptr,
    a_ptr,
    b_ptr,
    c_ptr,
    d_ptr,
    y_ptr,
    seq_len,
    dim,
    n_state,
    BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # x, dt, y: [B, L, D]; b, c: [B, L, N]; a: [D, N]; d: [D]; all contiguous float32.
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < n_state
    a = tl.load(
        a_ptr + offs_d[:, None] * n_state + offs_n[None, :],
        mask=mask_d[:, None] & mask_n[None, :],
        other=0.0,
    )
    d_skip = tl.load(d_ptr + offs_d, mask=mask_d, other=0.0)
    row = pid_b.to(tl.int64) * seq_len  # int64: B * L * D may exceed 2**31
    h = tl.zeros((BLOCK, BLOCK_N), dtype=tl.float32)
    # token 0's inputs; afterwards each iteration loads token t + 1 before computing token t
    x_next = tl.load(x_ptr + row * dim + offs_d, mask=mask_d, other=0.0)
    dt_next = tl.load(dt_ptr + row * dim + offs_d, mask=mask_d, other=0.0)
    b_next = tl.load(b_ptr + row * n_state + offs_n, mask=mask_n, other=0.0)
    c_next = tl.load(c_ptr + row * n_state + offs_n, mask=mask_n, other=0.0)
    for t in range(seq_len):
        x_t, dt_t, b_t, c_t = x_next, dt_next, b_next, c_next
        nxt = row + tl.minimum(t + 1, seq_len - 1)  # the last iteration reloads its own token
        x_next = tl.load(x_ptr + nxt * dim + offs_d, mask=mask_d, other=0.0)
        dt_next = tl.load(dt_ptr + nxt * dim + offs_d, mask=mask_d, other=0.0)
        b_next = tl.load(b_ptr + nxt * n_state + offs_n, mask=mask_n, other=0.0)
        c_next = tl.load(c_ptr + nxt * n_state + offs_n, mask=mask_n, other=0.0)
        h = tl.exp(dt_t[:, None] * a) * h + (dt_t * x_t)[:, None] * b_t[None, :]
        y_t = tl.sum(h * c_t[None, :], axis=1) + d_skip * x_t
        tl.store(y_ptr + (row + t) * dim + offs_d, y_t, mask=mask_d)


@triton.jit
def _advance(h, a, x_ptr, dt_ptr, b_ptr, token, dim, n_state, offs_d, offs_n):
    """The state after flat token ``token`` (batch row * L + t), from the state before it."""
    x_t = tl.load(x_ptr + token * dim + offs_d, mask=offs_d < dim, other=0.0)
    dt_t = tl.load(dt_ptr + token * dim + offs_d, mask=offs_d < dim, other=0.0)
    b_t = tl.load(b_ptr + token * n_state + offs_n, mask=offs_n < n_state, other=0.0)
    return tl.exp(dt_t[:, None] * a) * h + (dt_t * x_t)[:, None] * b_t[None, :]


@triton.jit
def _scan_bwd_kernel(
    x_ptr,
    dt_ptr,
    a_ptr,
    b_ptr,
    c_ptr,
    d_ptr,
    gy_ptr,
    gx_ptr,
    gdt_ptr,
    ga_ptr,
    gb_ptr,
    gc_ptr,
    gd_ptr,
    ckpt_ptr,
    hs_ptr,
    seq_len,
    dim,
    n_state,
    BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SEG: tl.constexpr,
):
    # Inputs as in the forward, gy [B, L, D]. Outputs: gx, gdt [B, L, D]; ga [B, D, N] and
    # gd [B, D] per batch element; gb, gc [B, n_blocks, L, N] per block of channels.
    # Scratch: ckpt [B, n_blocks, n_seg, BLOCK, BLOCK_N], hs [B, n_blocks, SEG, BLOCK, BLOCK_N].
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    n_blocks = tl.num_programs(1)
    offs_d = pid_d * BLOCK + tl.arange(0, BLOCK)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < n_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    a = tl.load(a_ptr + offs_d[:, None] * n_state + offs_n[None, :], mask=mask_dn, other=0.0)
    d_skip = tl.load(d_ptr + offs_d, mask=mask_d, other=0.0)
    row = pid_b.to(tl.int64) * seq_len
    program = pid_b.to(tl.int64) * n_blocks + pid_d
    n_seg = tl.cdiv(seq_len, SEG)
    tile = tl.arange(0, BLOCK)[:, None] * BLOCK_N + offs_n[None, :]
    tile_size = BLOCK * BLOCK_N
    ckpt = ckpt_ptr + program * n_seg * tile_size
    hs = hs_ptr + program * SEG * tile_size
    part = program * seq_len  # row of this block's gb/gc partials

    # Forward: the state entering each segment.
    h = tl.zeros((BLOCK, BLOCK_N), dtype=tl.float32)
    for s in range(0, n_seg):
        tl.store(ckpt + s * tile_size + tile, h)
        for t in range(s * SEG, tl.minimum(s * SEG + SEG, seq_len)):
            h = _advance(h, a, x_ptr, dt_ptr, b_ptr, row + t, dim, n_state, offs_d, offs_n)

    # The scratch is read back by the same program, maybe by other threads than wrote it (the
    # compiler picks each tensor's thread layout): a block-wide barrier orders the two.
    tl.debug_barrier()
    # Backward, segment by segment from the end; g = dLoss/dh_t carried from the future.
    g = tl.zeros((BLOCK, BLOCK_N), dtype=tl.float32)
    ga = tl.zeros((BLOCK, BLOCK_N), dtype=tl.float32)
    gd = tl.zeros((BLOCK,), dtype=tl.float32)
    for j in range(0, n_seg):
        start = (n_seg - 1 - j) * SEG
        stop = tl.minimum(start + SEG, seq_len)
        h = tl.load(ckpt + (n_seg - 1 - j) * tile_size + tile)
        for t in range(start, stop):  # hs[t - start] = h_{t-1}
            tl.store(hs + (t - start) * tile_size + tile, h)
            h = _advance(h, a, x_ptr, dt_ptr, b_ptr, row + t, dim, n_state, offs_d, offs_n)
        tl.debug_barrier()
        for i in range(0, stop - start):
            t = stop - 1 - i
            h_prev = tl.load(hs + (t - start) * tile_size + tile)
            x_t = tl.load(x_ptr + (row + t) * dim + offs_d, mask=mask_d, other=0.0)
            dt_t = tl.load(dt_ptr + (row + t) * dim + offs_d, mask=mask_d, other=0.0)
            gy_t = tl.load(gy_ptr + (row + t) * dim + offs_d, mask=mask_d, other=0.0)
            b_t = tl.load(b_ptr + (row + t) * n_state + offs_n, mask=mask_n, other=0.0)
            c_t = tl.load(c_ptr + (row + t) * n_state + offs_n, mask=mask_n, other=0.0)
            decay = tl.exp(dt_t[:, None] * a)
            xb = x_t[:, None] * b_t[None, :]
            h_t = decay * h_prev + dt_t[:, None] * xb
            g += gy_t[:, None] * c_t[None, :]
            decayed_prev = decay * h_prev
            gx_t = d_skip * gy_t + dt_t * tl.sum(g * b_t[None, :], axis=1)
            gdt_t = tl.sum(g * (a * decayed_prev + xb), axis=1)
            ga += g * dt_t[:, None] * decayed_prev
            gd += gy_t * x_t
            tl.store(gx_ptr + (row + t) * dim + offs_d, gx_t, mask=mask_d)
            tl.store(gdt_ptr + (row + t) * dim + offs_d, gdt_t, mask=mask_d)
            gb_t = tl.sum(g * (dt_t * x_t)[:, None], axis=0)
            gc_t = tl.sum(gy_t[:, None] * h_t, axis=0)
            tl.store(gb_ptr + (part + t) * n_state + offs_n, gb_t, mask=mask_n)
            tl.store(gc_ptr + (part + t) * n_state + offs_n, gc_t, mask=mask_n)
            g = g * decay
        tl.debug_barrier()  # the next segment overwrites the scratch
    ga_offs = (pid_b.to(tl.int64) * dim + offs_d[:, None]) * n_state + offs_n[None, :]
    tl.store(ga_ptr + ga_offs, ga, mask=mask_dn)
    tl.store(gd_ptr + pid_b.to(tl.int64) * dim + offs_d, gd, mask=mask_d)


@torch.library.triton_op("archgen::selective_scan_triton", mutates_args=())
def _scan_op(
    x: torch.Tensor,
    dt: torch.Tensor,
    a_mat: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d_skip: torch.Tensor,
) -> torch.Tensor:
    bsz, seq, dim = x.shape
    n = a_mat.shape[1]
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if bsz == 0 or seq == 0:
        return y
    # wrap_triton: torch.compile sees the kernel call and keeps it in the graph
    torch.library.wrap_triton(_scan_fwd_kernel)[(bsz, triton.cdiv(dim, BLOCK_D))](
        *(t.contiguous() for t in (x, dt, a_mat, b, c, d_skip)),
        y,
        seq,
        dim,
        n,
        BLOCK=BLOCK_D,
        BLOCK_N=max(2, triton.next_power_of_2(n)),
    )
    return y


@torch.library.triton_op("archgen::selective_scan_triton_backward", mutates_args=())
def _scan_backward_op(
    x: torch.Tensor,
    dt: torch.Tensor,
    a_mat: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d_skip: torch.Tensor,
    grad_y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    bsz, seq, dim = x.shape
    n = a_mat.shape[1]
    blocks, block_n = triton.cdiv(dim, BLOCK_D), max(2, triton.next_power_of_2(n))
    grad_x, grad_dt = x.new_zeros(x.shape), x.new_zeros(x.shape)  # contiguous, whatever x is
    grad_a = x.new_zeros(bsz, dim, n)
    grad_d = x.new_zeros(bsz, dim)
    grad_b, grad_c = x.new_zeros(bsz, blocks, seq, n), x.new_zeros(bsz, blocks, seq, n)
    if bsz > 0 and seq > 0:
        tile = BLOCK_D * block_n
        checkpoints = x.new_empty(bsz * blocks * triton.cdiv(seq, SEGMENT) * tile)
        segment_states = x.new_empty(bsz * blocks * SEGMENT * tile)
        torch.library.wrap_triton(_scan_bwd_kernel)[(bsz, blocks)](
            *(t.contiguous() for t in (x, dt, a_mat, b, c, d_skip, grad_y)),
            grad_x,
            grad_dt,
            grad_a,
            grad_b,
            grad_c,
            grad_d,
            checkpoints,
            segment_states,
            seq,
            dim,
            n,
            BLOCK=BLOCK_D,
            BLOCK_N=block_n,
            SEG=SEGMENT,
        )
    return grad_x, grad_dt, grad_a.sum(0), grad_b.sum(1), grad_c.sum(1), grad_d.sum(0)


register_scan_backward(_scan_op, _scan_backward_op)


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    a_mat: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d_skip: torch.Tensor,
) -> torch.Tensor:
    """``y_t = C_t · h_t + D x_t`` with ``h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_t``.

    ``x, dt [B, L, D]``, ``a_mat [D, N]``, ``b, c [B, L, N]``, ``d_skip [D]``, float32, on a
    CUDA device (or CPU under ``TRITON_INTERPRET=1``). Differentiable in all inputs (Triton
    reverse scan)."""
    if any(t.dtype != torch.float32 for t in (x, dt, a_mat, b, c, d_skip)):
        raise TypeError("the Triton selective scan takes float32 inputs")
    return _scan_op(x, dt, a_mat, b, c, d_skip)
