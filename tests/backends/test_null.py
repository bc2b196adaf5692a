"""The null backend: checks support and predicts latency; it runs nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from archgen import api
from archgen.backends.base import LowerOptions, get_backend
from archgen.backends.null import NullBackend, Roofline
from archgen.errors import ArchgenError
from tests.backends.conformance import BackendConformance, tiny_graph


class TestNull(BackendConformance):
    backend_name = "null"

    # The null backend has no numerics: its "match" is that it lowers every example and
    # predicts a positive latency that grows with the sequence length.
    def test_example_matches_reference(self, spec_path: Path, rng_seed: int) -> None:
        artifact = self.lower(api.compile_spec(spec_path))
        short, long = (
            artifact.measure(torch.zeros(1, n, dtype=torch.long)).median_s for n in self.seq_lens
        )
        assert 0 < short < long
        with pytest.raises(ArchgenError, match="runs nothing"):
            artifact.boundaries(torch.zeros(1, 5, dtype=torch.long))

    def test_save_load_round_trip(self, tmp_path: Path) -> None:
        graph = tiny_graph(tmp_path)
        artifact = NullBackend(Roofline(bandwidth=1e9)).lower(graph, self.options())
        artifact.save(tmp_path / "saved")
        loaded = self.backend.load(tmp_path / "saved", graph, artifact.meta.options)
        tokens = torch.zeros(1, 17, dtype=torch.long)
        assert loaded.measure(tokens).median_s == artifact.measure(tokens).median_s

    def test_injected_fault_is_reported_at_its_block(self, tmp_path: Path, rng_seed: int) -> None:
        pytest.skip("the null backend computes no values, so there is no fault to localise")


def test_measure_is_marked_predicted_and_the_meta_says_so(tmp_path: Path) -> None:
    artifact = get_backend("null").lower(tiny_graph(tmp_path), LowerOptions())
    m = artifact.measure(torch.zeros(1, 32, dtype=torch.long))
    assert m.predicted and m.device.startswith("predicted")
    assert any("PREDICTED" in note for note in artifact.meta.notes)


def test_roofline_is_compute_bound_for_big_matmuls_and_memory_bound_for_small(
    tmp_path: Path,
) -> None:
    graph = tiny_graph(tmp_path)
    fast_memory = NullBackend(Roofline(bandwidth=1e15, node_overhead_s=0)).lower(
        graph, LowerOptions()
    )
    slow_memory = NullBackend(Roofline(bandwidth=1e6, node_overhead_s=0)).lower(
        graph, LowerOptions()
    )
    tokens = torch.zeros(1, 64, dtype=torch.long)
    flops = sum(n.op.flops(64) for n in graph.nodes)
    predicted = fast_memory.measure(tokens).median_s
    assert predicted == pytest.approx(flops / Roofline().peak("float32"), rel=1e-3)
    assert slow_memory.measure(tokens).median_s > 100 * fast_memory.measure(tokens).median_s
