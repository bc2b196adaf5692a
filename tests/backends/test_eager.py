"""The eager backend against the conformance suite, in float32 and bfloat16."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from archgen.backends.base import Artifact, LowerOptions, get_backend
from archgen.backends.validate import validate
from archgen.errors import UnavailableError
from tests.backends.conformance import (
    BackendConformance,
    scale_block_parameter,
    tiny_graph,
)
from tests.conftest import ROOT


class TestEagerFloat32(BackendConformance):
    backend_name = "eager"

    def inject_fault(self, artifact: Artifact, block: str, tmp_path: Path) -> Artifact:
        scale_block_parameter(artifact.model, block)  # type: ignore[attr-defined]
        return artifact


class TestEagerBfloat16(TestEagerFloat32):
    dtype = "bfloat16"


def test_float64_eager_is_the_reference_bit_for_bit(tmp_path: Path) -> None:
    graph = tiny_graph(tmp_path)
    report = validate(get_backend("eager").lower(graph, LowerOptions(dtype="float64")), seed=0)
    assert report.passed and report.worst()["max_abs"] == 0.0


def test_measure_reports_median_p90_threads_and_versions(tmp_path: Path) -> None:
    graph = tiny_graph(tmp_path)
    artifact = get_backend("eager").lower(graph, LowerOptions(threads=1))
    m = artifact.measure(torch.zeros(1, 16, dtype=torch.long), warmup=1, repeats=5)
    assert len(m.times_s) == 5 and min(m.times_s) <= m.median_s <= m.p90_s <= max(m.times_s)
    assert m.threads == 1 and m.device.startswith("cpu") and "torch" in m.versions
    assert not m.predicted and m.to_json()["median_s"] == m.median_s


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the error a missing GPU gives")
@pytest.mark.parametrize("backend", ["eager", "compile"])
def test_cuda_device_without_a_gpu_is_a_clear_error_before_any_work(
    tmp_path: Path, backend: str
) -> None:
    with pytest.raises(UnavailableError, match="device 'cuda' requested but torch sees no CUDA"):
        get_backend(backend).lower(tiny_graph(tmp_path), LowerOptions(device="cuda"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the error a missing GPU gives")
def test_cli_validate_on_cuda_without_a_gpu_exits_3_without_traceback() -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "archgen.cli.main", "validate"),
            *(str(ROOT / "examples/transformer.yaml"), "--backend", "eager", "--device", "cuda"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 3, result.stderr
    assert "device 'cuda' requested but torch sees no CUDA GPU" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_validate_rejects_an_unknown_device() -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "archgen.cli.main", "validate"),
            *(str(ROOT / "examples/transformer.yaml"), "--backend", "eager", "--device", "tpu"),
        ],
        capture_output=True,
        text=True,
    )
    # a fixed choice: typer refuses it (exit 2) and names the choices; the message may wrap
    words = " ".join(result.stderr.replace("│", " ").split())
    assert result.returncode == 2 and "'tpu' is not one of 'cpu', 'cuda'" in words
    assert "Traceback" not in result.stderr
