"""Interleaved measurement (Measurer.measure_graphs) under a machine whose speed drifts.

A fake backend stands in for the machine: its artifacts report, for each timed call, the
graph's true cost times a slowdown that grows with every call made on the machine so far.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from archgen import api
from archgen.backends.base import LowerOptions, Measurement
from archgen.ir.graph import Graph
from archgen.ir.slicing import only_block, stem
from archgen.search.measure import BLOCK_REPEAT_FACTOR, Measurer
from archgen.search.timing import Workload
from tests.backends.conformance import TINY_SPEC


class DriftingMachine:
    """Each timed call costs ``len(graph.nodes) ms x (1 + drift x calls so far)``."""

    def __init__(self, drift: float) -> None:
        self.drift, self.calls, self.order = drift, 0, []

    def lower(self, graph: Graph, options: LowerOptions) -> object:
        machine = self

        class Artifact:
            def measure(
                self, tokens: torch.Tensor, warmup: int = 3, repeats: int = 20
            ) -> Measurement:
                times = []
                for _ in range(repeats):
                    machine.calls += 1
                    machine.order.append(id(graph))
                    times.append(1e-3 * len(graph.nodes) * (1 + machine.drift * machine.calls))
                return Measurement(tuple(times), 1, tokens.shape[1], 1, "fake", {})

        return Artifact()


@pytest.fixture
def graph(tmp_path: Path) -> Graph:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPEC)
    return api.compile_spec(path)


def measurer(machine: DriftingMachine, repeats: int = 10) -> Measurer:
    m = Measurer(Workload(seq_len=8, repeats=repeats, threads=1))
    m.backend = machine  # type: ignore[assignment]
    return m


def test_equal_graphs_measure_equal_despite_drift(graph: Graph) -> None:
    machine = DriftingMachine(drift=0.01)
    first, second = measurer(machine).measure_graphs([graph, graph], repeats=10)
    interleaved_gap = abs(first - second) / first
    sequential = [measurer(machine).measure_graph(graph, repeats=10) for _ in range(2)]
    sequential_gap = abs(sequential[0] - sequential[1]) / sequential[0]
    # One graph after the other, the second takes the whole first measurement's drift; in
    # rounds, only the drift between neighbours within a round.
    assert interleaved_gap < 0.25 * sequential_gap, (interleaved_gap, sequential_gap)


def test_rounds_alternate_between_graphs(graph: Graph) -> None:
    machine = DriftingMachine(drift=0.0)
    measurer(machine).measure_graphs([graph, stem(graph)], repeats=10)
    runs = [machine.order[0]]
    for g in machine.order[1:]:
        if g != runs[-1]:
            runs.append(g)
    assert len(runs) == 2 + 2 * 10  # the warm-up pass, then 10 rounds of one call each


def test_block_is_its_difference_to_the_stem_timed_alongside(graph: Graph) -> None:
    block = graph.blocks()[0]
    seconds = measurer(DriftingMachine(drift=0.0)).measure_block(graph, block)
    expected = 1e-3 * (len(only_block(graph, block).nodes) - len(stem(graph).nodes))
    assert seconds == pytest.approx(expected)


def test_blocks_are_measured_together_against_one_stem_under_drift(graph: Graph) -> None:
    # Two blocks of different sizes, measured in one interleaved run on a drifting machine:
    # each difference is its own size (the stem is timed alongside both), and the machine saw
    # the stem and both block graphs alternate call by call.
    blocks = graph.blocks()[:2]
    calls = 3 * (1 + 10 * BLOCK_REPEAT_FACTOR)  # warm-up, then the rounds, of 3 graphs
    machine = DriftingMachine(drift=0.05 / calls)  # the last calls run 5 % slower than the first
    timings = measurer(machine).measure_blocks([(graph, b) for b in blocks])
    for b, s in zip(blocks, [t.seconds for t in timings], strict=True):
        expected = 1e-3 * (len(only_block(graph, b).nodes) - len(stem(graph).nodes))
        assert s == pytest.approx(expected, rel=0.05)
    assert len(set(machine.order[:3])) == 3  # stem, block 1, block 2: one warm-up each
    rounds = [machine.order[i : i + 3] for i in range(3, len(machine.order), 3)]
    assert all(r == machine.order[:3] for r in rounds)
    assert len(rounds) == 10 * BLOCK_REPEAT_FACTOR
