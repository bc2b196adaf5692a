"""The eager backend against the conformance suite, in float32 and bfloat16."""

from __future__ import annotations

from pathlib import Path

import torch

from archgen.backends.base import Artifact, LowerOptions, get_backend
from archgen.backends.validate import validate
from tests.backends.conformance import (
    BackendConformance,
    scale_block_parameter,
    tiny_graph,
)


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
