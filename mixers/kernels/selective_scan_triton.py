"""Mamba-1's selective scan on the GPU: one Triton kernel, forward only (inference).

The chunked torch scan (``mixers/mamba.py``) launches a dozen kernels per chunk of 8 tokens: on
an H200 that made the hybrid example 30x slower than the Mamba-2 one (benchmarks/results/
cuda.md). Here one program owns a block of channels of one sequence and walks the sequence
once, keeping the state ``h [BLOCK_D, N]`` in registers -- the loop mamba-ssm's CUDA kernel
runs, without its backward. The loads of token ``t + 1`` are issued before token ``t``'s
arithmetic, so their latency overlaps the work.

Gradients are not implemented here: ``Mamba(scan='auto')`` uses this kernel only where no
gradient is needed and the chunked scan otherwise. Registered with ``torch.library.triton_op``
so ``torch.compile(fullgraph=True)`` keeps it in the graph. Correctness is checked on the CPU
with ``TRITON_INTERPRET=1`` (tests/mixers/test_mamba_triton.py) and on the GPU (tests/gpu).

Importing this module needs ``triton``: :func:`archgen.mixers.kernels.triton_available` says
whether it can run, before anything imports it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_D = 32  # channels per program: B * D / 32 programs; 32 x N fp32 state in registers


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
    CUDA device (or CPU under ``TRITON_INTERPRET=1``). Not differentiable."""
    if any(t.dtype != torch.float32 for t in (x, dt, a_mat, b, c, d_skip)):
        raise TypeError("the Triton selective scan takes float32 inputs")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, a_mat, b, c, d_skip)):
        raise RuntimeError(
            "the Triton selective scan has no backward; use Mamba(scan='chunked') for training"
        )
    return _scan_op(x, dt, a_mat, b, c, d_skip)
