"""Mamba-1's Triton selective scan: correctness under the Triton interpreter on the CPU (the
GPU run is in tests/gpu), and the errors where it cannot run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from archgen.mixers.mamba import Mamba
from tests.conftest import ROOT


def test_kernel_and_module_match_float64_loops_under_the_interpreter(rng_seed: int) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.mixers.triton_scan_check", str(rng_seed)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_triton_scan_on_cpu_without_the_interpreter_is_a_clear_error() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter is on: the CPU is a valid device for the kernel")
    m = Mamba(16, d_state=4, scan="triton")
    with torch.no_grad(), pytest.raises(RuntimeError, match="needs triton and a CUDA input"):
        m(torch.randn(1, 5, 16))


def test_auto_keeps_the_chunked_or_fused_scan_on_cpu() -> None:
    m = Mamba(16, d_state=4, scan="auto")
    with torch.no_grad():
        m(torch.randn(1, 5, 16))
    assert m.last_scan_impl in ("fused", "chunked")


@pytest.mark.parametrize("capability", [80, 90])
def test_kernels_compile_for_nvidia_gpus_without_one(
    capability: int, tmp_path, monkeypatch
) -> None:
    """The interpreter checks the arithmetic, not that the kernels compile: Triton's compiler
    (and ptxas, shipped with triton) lowers both to a cubin for an A100 and an H100 here."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from archgen.mixers.kernels import selective_scan_triton as scan

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # compile now, not from a cache
    for kernel, constexprs in [
        (scan._scan_fwd_kernel, {"BLOCK": scan.BLOCK_D, "BLOCK_N": 16}),
        (scan._scan_bwd_kernel, {"BLOCK": scan.BLOCK_D, "BLOCK_N": 16, "SEG": scan.SEGMENT}),
    ]:
        signature = {
            name: "constexpr" if name in constexprs else "*fp32" if name.endswith("_ptr") else "i32"
            for name in inspect.signature(kernel.fn).parameters
        }
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32))
        assert compiled.asm["cubin"], kernel.fn.__name__
