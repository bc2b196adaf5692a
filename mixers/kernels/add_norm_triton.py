"""``add_norm`` on the GPU: one Triton program per row reads ``stream`` and ``branch`` once and
writes both the sum and its RMS / layer norm (unfused: the add writes the sum, the norm reads it
back, and torch's norm reads it twice more for the statistics).

The row (``d_model`` values) fits one block, so the statistics are one reduction in registers,
in float32 whatever the storage dtype. Backward is torch arithmetic (the norm's closed-form
gradient, recomputed from the saved sum), registered as the op's autograd formula; both are
``torch.library`` ops, so ``torch.compile`` keeps the kernel in its graph.

Checked on the CPU under ``TRITON_INTERPRET=1`` (tests/mixers/test_add_norm.py) and compiled for
sm_80 / sm_90 there; importing this module needs ``triton``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_norm_fwd_kernel(
    stream_ptr,
    branch_ptr,
    weight_ptr,
    bias_ptr,
    sum_ptr,
    out_ptr,
    dim,
    eps,
    BLOCK: tl.constexpr,
    RMS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    # stream, branch, sum, out: [rows, dim] contiguous; weight, bias: [dim]
    row = tl.program_id(0).to(tl.int64) * dim  # int64: rows * dim may exceed 2**31
    offs = tl.arange(0, BLOCK)
    mask = offs < dim
    a = tl.load(stream_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(branch_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
    s = a + b
    tl.store(sum_ptr + row + offs, s.to(sum_ptr.dtype.element_ty), mask=mask)
    if RMS:  # noqa: SIM108 (a constexpr branch: one of the two is compiled)
        centred = s
    else:
        centred = tl.where(mask, s - tl.sum(s, axis=0) / dim, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / dim + eps)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = centred * rstd * w
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@torch.library.triton_op("archgen::add_norm_triton", mutates_args=())
def _add_norm_op(
    stream: torch.Tensor,
    branch: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    dim = stream.shape[-1]
    a, b = stream.contiguous(), branch.contiguous()
    total, out = torch.empty_like(a), torch.empty_like(a)
    rows = a.numel() // dim if dim else 0
    if rows == 0:
        return total, out
    torch.library.wrap_triton(_add_norm_fwd_kernel)[(rows,)](
        a,
        b,
        weight.contiguous(),
        weight if bias is None else bias.contiguous(),  # unread without HAS_BIAS
        total,
        out,
        dim,
        eps,
        BLOCK=triton.next_power_of_2(dim),
        RMS=bias is None,
        HAS_BIAS=bias is not None,
    )
    return total, out


def _setup_context(ctx: object, inputs: tuple, output: tuple) -> None:
    _, _, weight, bias, eps = inputs
    ctx.eps = eps  # type: ignore[attr-defined]
    ctx.has_bias = bias is not None  # type: ignore[attr-defined]
    ctx.save_for_backward(output[0], weight)  # type: ignore[attr-defined]


def _backward(ctx: object, grad_sum: torch.Tensor | None, grad_out: torch.Tensor | None) -> tuple:
    total, weight = ctx.saved_tensors  # type: ignore[attr-defined]
    dim = total.shape[-1]
    s = total.float()
    g = torch.zeros_like(s) if grad_out is None else grad_out.float()
    centred = s if not ctx.has_bias else s - s.mean(-1, keepdim=True)  # type: ignore[attr-defined]
    rstd = torch.rsqrt((centred * centred).mean(-1, keepdim=True) + ctx.eps)  # type: ignore[attr-defined]
    xhat = centred * rstd
    gx = g * weight.float()
    inner = gx - xhat * (gx * xhat).mean(-1, keepdim=True)
    if ctx.has_bias:  # type: ignore[attr-defined]
        inner = inner - gx.mean(-1, keepdim=True)
    grad_s = rstd * inner
    if grad_sum is not None:
        grad_s = grad_s + grad_sum.float()
    grad_s = grad_s.to(total.dtype)
    grad_w = (g * xhat).reshape(-1, dim).sum(0).to(weight.dtype)
    grad_b = g.reshape(-1, dim).sum(0).to(weight.dtype) if ctx.has_bias else None  # type: ignore[attr-defined]
    return grad_s, grad_s, grad_w, grad_b, None


_add_norm_op.register_autograd(_backward, setup_context=_setup_context)


def add_norm(
    stream: torch.Tensor,
    branch: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, norm(s))`` with ``s = stream + branch``: RMS norm, or layer norm when ``bias`` is
    given. Inputs ``[..., D]`` on a CUDA device (or the CPU under ``TRITON_INTERPRET=1``)."""
    if stream.shape != branch.shape:
        raise ValueError(f"add_norm: shapes differ: {tuple(stream.shape)} vs {tuple(branch.shape)}")
    return _add_norm_op(stream, branch, weight, bias, eps)
