"""The fused ``add_norm`` (mixers/add_norm.py): torch path vs the float64 formula and vs the
unfused modules, the Triton kernel under the interpreter (forward and backward), and the
kernel compiled to cubins for NVIDIA GPUs on this machine."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from archgen.mixers.add_norm import AddNorm
from archgen.mixers.channel import LayerNorm, RMSNorm
from tests.conftest import ROOT
from tests.tolerances import assert_close

F64 = torch.float64


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_torch_path_matches_the_formula_and_the_unfused_modules(norm: str, rng_seed: int) -> None:
    gen = torch.Generator().manual_seed(rng_seed)
    d = 37
    fused = AddNorm(d, norm=norm, eps=1e-6, dtype=F64)
    unfused: nn.Module = (
        RMSNorm(d, eps=1e-6, dtype=F64) if norm == "rmsnorm" else LayerNorm(d, eps=1e-6, dtype=F64)
    )
    with torch.no_grad():
        for p in fused.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64))
    unfused.load_state_dict(fused.state_dict())  # the same parameter names
    stream, branch = (torch.randn(3, 11, d, generator=gen, dtype=F64) for _ in range(2))
    s, n = fused(stream, branch)
    assert fused.last_impl == "torch"
    want_s, want_n = fused.reference(stream, branch)
    assert_close(s, want_s, msg="sum")
    assert_close(n, want_n, msg="norm")
    assert torch.equal(n, unfused(stream + branch)), "the torch path is the unfused calls"


def test_unknown_norm_is_refused() -> None:
    with pytest.raises(ValueError, match="norm must be one of"):
        AddNorm(8, norm="batchnorm")


def test_kernel_matches_float64_under_the_interpreter(rng_seed: int) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.mixers.triton_add_norm_check", str(rng_seed)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@pytest.mark.parametrize("capability", [80, 90])
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_kernel_compiles_for_nvidia_gpus_without_one(
    capability: int, norm: str, tmp_path, monkeypatch
) -> None:
    """The interpreter checks the arithmetic, not that the kernel compiles: Triton's compiler
    (and ptxas, shipped with triton) lowers it to a cubin for an A100 and an H100 here."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from archgen.mixers.kernels import add_norm_triton

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # compile now, not from a cache
    kernel = add_norm_triton._add_norm_fwd_kernel
    constexprs = {"BLOCK": 256, "RMS": norm == "rmsnorm", "HAS_BIAS": norm == "layernorm"}
    signature = {
        name: "constexpr"
        if name in constexprs
        else "*fp32"
        if name.endswith("_ptr")
        else "fp32"
        if name == "eps"
        else "i32"
        for name in inspect.signature(kernel.fn).parameters
    }
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32))
    assert compiled.asm["cubin"]
