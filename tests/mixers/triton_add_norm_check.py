"""Checks of the Triton ``add_norm`` kernel, run by test_add_norm.py in a subprocess with
``TRITON_INTERPRET=1`` (the interpreter must be chosen before triton is imported):

    TRITON_INTERPRET=1 python -m tests.mixers.triton_add_norm_check SEED
"""

from __future__ import annotations

import sys

import torch

from archgen.mixers.add_norm import AddNorm
from archgen.mixers.kernels import add_norm_triton
from tests.tolerances import FLOAT32_PARAM_GRAD, assert_close

F64 = torch.float64


def check(gen: torch.Generator) -> None:
    # odd widths (not a power of two: the block is masked), one row, a 3-D and a 2-D input
    for shape, norm in [((2, 7, 37), "rmsnorm"), ((3, 5, 19), "layernorm"), ((1, 1, 33), "rmsnorm"),
                        ((11, 24), "layernorm")]:  # fmt: skip
        ref = AddNorm(shape[-1], norm=norm, eps=1e-5, dtype=F64)
        with torch.no_grad():
            ref.weight.copy_(torch.randn(shape[-1], generator=gen, dtype=F64))
            if ref.bias is not None:
                ref.bias.copy_(torch.randn(shape[-1], generator=gen, dtype=F64))
        stream = torch.randn(*shape, generator=gen, dtype=F64, requires_grad=True)
        branch = torch.randn(*shape, generator=gen, dtype=F64, requires_grad=True)
        g_sum = torch.randn(*shape, generator=gen, dtype=F64)
        g_out = torch.randn(*shape, generator=gen, dtype=F64)
        want = ref.reference(stream, branch)
        params = [p for p in (ref.weight, ref.bias) if p is not None]
        want_grads = torch.autograd.grad(want, [stream, branch, *params], (g_sum, g_out))

        leaves = [t.detach().float().requires_grad_() for t in (stream, branch, *params)]
        a, b, w, *rest = leaves
        got = add_norm_triton.add_norm(a, b, w, rest[0] if rest else None, 1e-5)
        where = f"shape={shape} norm={norm}"
        assert_close(got[0], want[0], msg=f"sum {where}")
        assert_close(got[1], want[1], msg=f"norm {where}")
        got_grads = torch.autograd.grad(got, leaves, (g_sum.float(), g_out.float()))
        names = ["stream", "branch", "weight", "bias"][: len(leaves)]
        for name, g, w_ in zip(names, got_grads, want_grads, strict=True):
            tol = FLOAT32_PARAM_GRAD if name in ("weight", "bias") else None
            if tol is None:
                assert_close(g, w_, msg=f"grad {name} {where}")
            else:
                torch.testing.assert_close(g.double(), w_, atol=tol.atol, rtol=tol.rtol)


def check_module_dispatch() -> None:
    """The module picks the kernel only on CUDA: under the interpreter on the CPU it stays on
    torch (the interpreter is for tests, not a CPU path)."""
    m = AddNorm(8)
    m(torch.randn(1, 2, 8), torch.randn(1, 2, 8))
    assert m.last_impl == "torch", m.last_impl


if __name__ == "__main__":
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    check(torch.Generator().manual_seed(seed))
    check_module_dispatch()
    print("ok")
