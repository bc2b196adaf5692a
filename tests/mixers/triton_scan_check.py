"""Checks of the Triton selective scan, run by test_mamba_triton.py in a subprocess with
``TRITON_INTERPRET=1`` (the interpreter must be chosen before triton is imported):

    TRITON_INTERPRET=1 python -m tests.mixers.triton_scan_check SEED
"""

from __future__ import annotations

import copy
import sys

import torch

from archgen.mixers.kernels import selective_scan_triton
from archgen.mixers.mamba import Mamba
from tests.tolerances import assert_close

F64 = torch.float64


def loop_scan(x, dt, a_mat, b, c, d_skip) -> torch.Tensor:
    """The recurrence token by token, in the inputs' dtype (float64 here)."""
    h = x.new_zeros(x.shape[0], x.shape[2], a_mat.shape[1])
    ys = []
    for t in range(x.shape[1]):
        h = (
            torch.exp(dt[:, t, :, None] * a_mat) * h
            + (dt[:, t] * x[:, t])[..., None] * b[:, t, None]
        )
        ys.append(torch.einsum("bdn,bn->bd", h, c[:, t]) + d_skip * x[:, t])
    return torch.stack(ys, 1)


def check_kernel(gen: torch.Generator) -> None:
    # channels not a multiple of the block (37, 70), a state size not a power of two (5), L = 1,
    # and a long sequence (600: rounding must not accumulate)
    for bsz, seq, dim, n in [(2, 13, 37, 5), (1, 40, 70, 16), (3, 1, 33, 4), (1, 600, 40, 16)]:
        x = torch.randn(bsz, seq, dim, generator=gen, dtype=F64)
        dt = torch.rand(bsz, seq, dim, generator=gen, dtype=F64) * 1.5 + 0.01
        a_mat = -torch.rand(dim, n, generator=gen, dtype=F64) * 4
        b = torch.randn(bsz, seq, n, generator=gen, dtype=F64)
        c = torch.randn(bsz, seq, n, generator=gen, dtype=F64)
        d_skip = torch.randn(dim, generator=gen, dtype=F64)
        inputs = (x, dt, a_mat, b, c, d_skip)
        got = selective_scan_triton.selective_scan(*(t.float() for t in inputs))
        assert_close(got, loop_scan(*inputs), torch.float32, msg=f"B={bsz} L={seq} D={dim} N={n}")


def check_module(gen: torch.Generator) -> None:
    ref = Mamba(24, d_state=6, scan="chunked", dtype=F64)
    with torch.no_grad():
        ref.D.normal_(generator=gen)
    fast = copy.deepcopy(ref).float()
    fast.scan = "triton"
    u = torch.randn(2, 19, 24, generator=gen, dtype=F64)
    with torch.no_grad():
        y = fast(u.float())
        assert fast.last_scan_impl == "triton"
        assert_close(y, ref.reference(u), torch.float32)
    try:
        fast(u.float())  # parameters require grad: no backward here, so a clear error
    except RuntimeError as exc:
        assert "has no backward" in str(exc), exc
    else:
        raise AssertionError("scan='triton' with gradients did not raise")


if __name__ == "__main__":
    generator = torch.Generator().manual_seed(int(sys.argv[1]))
    check_kernel(generator)
    check_module(generator)
    print("ok")
