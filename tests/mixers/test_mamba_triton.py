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
