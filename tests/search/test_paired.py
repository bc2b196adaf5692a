"""Paired measurement, the reference's calibration and the judge's rules, on a fake machine
whose clock we control: load spikes, drift and contended cores are injected deterministically.

Every test here fails on the measurement of archgen before paired measurement (the median of
back-to-back calls of one model, believed at once)."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
import torch

from archgen import api
from archgen.backends.base import LowerOptions, Measurement
from archgen.ir.graph import Graph
from archgen.search.budget import Budget
from archgen.search.evaluate import LatencyJudge, LatencyPolicy
from archgen.search.latency import fit_correction, select_correction
from archgen.search.measure import Measurer
from archgen.search.paired import (
    PairedResult,
    PairingPolicy,
    ReferenceCalibration,
    measure_paired,
    robust_ratio,
)
from archgen.search.timing import Workload
from tests.backends.conformance import TINY_SPEC
from tests.search.fake_worker import fake_space


class FakeMachine:
    """A clock and the calls that advance it.

    A call of true cost ``c`` takes ``c x speed(now)`` seconds, times ``spike`` on the calls
    listed in ``spikes`` (by global call number); CPU time advances by ``wall x threads x
    utilisation(threads)``."""

    def __init__(
        self,
        *,
        drift: float = 0.0,
        spikes: frozenset[int] = frozenset(),
        spike: float = 15.0,
        noise: float = 0.0,
        utilisation: dict[int, float] | None = None,
        seed: int = 0,
    ) -> None:
        self.now = self.cpu_s = 0.0
        self.calls = 0
        self.drift, self.spikes, self.spike, self.noise = drift, spikes, spike, noise
        self.utilisation = utilisation or {}
        self.rng = random.Random(seed)

    def wall(self) -> float:
        return self.now

    def cpu(self) -> float:
        return self.cpu_s

    def call(self, cost: float, threads: int = 1) -> float:
        self.calls += 1
        seconds = cost * (1 + self.drift * self.now) * (1 + self.noise * self.rng.gauss(0, 1))
        if self.calls in self.spikes:
            seconds *= self.spike
        self.now += seconds
        self.cpu_s += seconds * threads * self.utilisation.get(threads, 1.0)
        return seconds


def test_spikes_are_rejected_and_drift_cancels_in_pairs() -> None:
    # 20 % slower by the end, and three calls 15x slower: the median of back-to-back calls of
    # one model, then of the other, would be off by the drift; the spikes would be believed.
    machine = FakeMachine(drift=0.02, spikes=frozenset({5, 12, 20}))
    (result,) = measure_paired(
        lambda: machine.call(0.100),
        [lambda: machine.call(0.085)],
        threads=1,
        policy=PairingPolicy(rounds=12),
        clock=machine,
    )
    assert result.ratio == pytest.approx(0.85, rel=0.01)
    assert result.rejected >= 2  # a spiked reference call spoils the ratio next to it too
    assert result.stable and not result.contended and result.attempts == 1


def test_a_noisy_measurement_is_repeated_with_more_rounds_then_flagged() -> None:
    settles = FakeMachine(noise=0.03, seed=1)
    said: list[str] = []
    (a,) = measure_paired(
        lambda: settles.call(0.1), [lambda: settles.call(0.09)], threads=1,
        policy=PairingPolicy(rounds=6, max_rel_error=0.01, max_attempts=3), clock=settles,
        log=said.append,
    )  # fmt: skip
    assert a.attempts > 1 and a.rounds == 6 * (2**a.attempts - 1)
    assert said[0] == "  1 measurement(s) not settled yet: 12 more rounds"  # said, not silent
    assert a.ratio == pytest.approx(0.9, rel=0.03)
    never = FakeMachine(noise=0.4, seed=2)
    (b,) = measure_paired(
        lambda: never.call(0.1), [lambda: never.call(0.09)], threads=1,
        policy=PairingPolicy(rounds=4, max_rel_error=0.12, max_attempts=3), clock=never,
    )  # fmt: skip
    # within reach after 4 rounds (0.25 x sqrt(4 / 28) < 0.12), out of it after all 28
    assert b.attempts == 3 and b.rounds == 4 + 8 + 16 and not b.stable
    # so noisy that even all 28 rounds could not reach the bound: flagged after the first
    # attempt instead of spending 7x its time (the rounds a busy machine can least afford)
    hopeless = FakeMachine(noise=0.4, seed=2)
    (c,) = measure_paired(
        lambda: hopeless.call(0.1), [lambda: hopeless.call(0.09)], threads=1,
        policy=PairingPolicy(rounds=4, max_rel_error=0.001, max_attempts=3), clock=hopeless,
    )  # fmt: skip
    assert c.attempts == 1 and c.rounds == 4 and not c.stable


def test_robust_ratio_ignores_a_minority_of_wild_values() -> None:
    values = [0.80, 0.81, 0.79, 0.80, 0.805, 12.0, 0.795, 0.01, 0.80]
    r = robust_ratio(values, PairingPolicy())
    assert r.value == pytest.approx(0.80, abs=0.006) and r.rejected == 2


@pytest.fixture
def graph(tmp_path: Path) -> Graph:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPEC)
    return api.compile_spec(path)


def fake_measurer(graph: Graph, machine: FakeMachine, threads: int = 2) -> Measurer:
    """A Measurer on ``machine``: a graph's true cost is 1 ms per node."""

    class Backend:
        def lower(self, g: Graph, options: LowerOptions) -> object:
            class Artifact:
                def measure(self, tokens: torch.Tensor, warmup: int = 3, repeats: int = 20):
                    times = tuple(
                        machine.call(1e-3 * len(g.nodes), options.threads or 1)
                        for _ in range(warmup + repeats)
                    )[warmup:]
                    return Measurement(times, 1, tokens.shape[1], 1, "fake", {})

            return Artifact()

    m = Measurer(Workload(seq_len=8, repeats=8, threads=threads), reference=graph, clock=machine)
    m.backend = Backend()  # type: ignore[assignment]
    return m


def test_contended_cores_are_measured_again_with_fewer_threads(graph: Graph) -> None:
    # one busy process on a 2-core machine: 2 threads get 62 % of their CPU time, 1 thread all
    machine = FakeMachine(utilisation={2: 0.62, 1: 0.99})
    m = fake_measurer(graph, machine)
    smaller = graph.with_nodes(graph.nodes[:-2] + graph.nodes[-1:])  # not a valid model: cost
    results = m.measure_against_reference([graph, smaller])
    assert [r.threads for r in results] == [1, 1]
    assert not any(r.contended for r in results) and m.fewer_thread_measurements == 2
    assert results[0].ratio == pytest.approx(1.0)
    assert results[1].ratio == pytest.approx((len(graph.nodes) - 1) / len(graph.nodes))
    quiet = fake_measurer(graph, FakeMachine(utilisation={2: 0.98}))
    assert [r.threads for r in quiet.measure_against_reference([graph])] == [2]
    assert quiet.fewer_thread_measurements == 0


def test_block_timings_carry_the_reference_timed_alongside_and_the_load(graph: Graph) -> None:
    machine = FakeMachine(utilisation={2: 0.6, 1: 0.97})
    m = fake_measurer(graph, machine)
    block = graph.blocks()[0]
    (timing,) = m.measure_blocks([(graph, block)])
    assert timing.threads == 1 and not timing.contended
    assert timing.reference_s == pytest.approx(1e-3 * len(graph.nodes))


def test_the_calibration_follows_lasting_drift_not_spikes_or_contention() -> None:
    cal = ReferenceCalibration(threads=2)
    assert cal.observe(0.100, 2, False) and cal.seconds == 0.100
    cal.observe(0.150, 2, False)  # one spike
    cal.observe(0.101, 2, False)
    cal.observe(0.400, 2, True)  # contended: not an observation of the workload
    cal.observe(0.140, 1, False)  # fallback threads: neither
    assert cal.seconds == 0.100 and cal.recalibrations == 0 and cal.contended == 2
    cal.observe(0.121, 2, False)  # the machine got 20 % slower and stays so
    assert cal.observe(0.119, 2, False) and cal.seconds == pytest.approx(0.120)
    drift = cal.drift()
    assert drift["recalibrations"] == 1 and drift["drift_max"] == pytest.approx(1.5)


def _result(ratio: float, *, stable: bool = True, threads: int = 2) -> PairedResult:
    return PairedResult(
        ratio=ratio, rel_error=0.004, reference_s=0.1, model_s=0.1 * ratio, rounds=8, rejected=0,
        attempts=1, utilisation=0.98, threads=threads, stable=stable, contended=False,
    )  # fmt: skip


class _Predictor:
    def __init__(self, value: float) -> None:
        self.value, self.observed = value, []

    def predict(self, graph: Graph) -> float:
        return self.value

    def observe(self, graph: Graph, measured: float) -> None:
        self.observed.append(measured)


def _judge(script: list[PairedResult], budget: Budget, predicted: float = 0.8):
    space = fake_space(3)
    queue = iter(script)
    taken: list[PairedResult] = []

    def measure(graphs):
        taken.append(next(queue))
        return [taken[-1]]

    judge = LatencyJudge(
        space=space, predictor=_Predictor(predicted),  # type: ignore[arg-type]
        measure_paired=measure, budget=budget, calibration=ReferenceCalibration(threads=2),
        workload_threads=2, policy=LatencyPolicy(),
    )  # fmt: skip
    candidates = (
        {s.node: label for s, label in zip(space.slots, combo, strict=True)}
        for combo in itertools.product(*[[c.label for c in s.choices] for s in space.slots])
    )
    return judge, candidates, taken


def test_a_measurement_far_from_a_good_prediction_is_measured_again() -> None:
    # four candidates where prediction and measurement agree, then one spiked measurement
    script = [_result(0.8)] * 4 + [_result(3.1), _result(0.81), _result(0.805)]
    judge, candidates, taken = _judge(script, Budget())
    for _ in range(4):
        judge.measure(next(candidates))
    check = judge.measure(next(candidates))
    assert len(taken) == 7 and len(check.measurements) == 3
    assert check.measured == pytest.approx(0.81)  # the median, not the spike
    assert judge.predictor.observed[-1] == pytest.approx(0.81)  # type: ignore[attr-defined]


def test_over_budget_is_recorded_only_after_a_confirming_measurement() -> None:
    # 0.96 once (a slow spell), then 0.86 twice: within the 90 % budget
    judge, candidates, taken = _judge(
        [_result(0.96), _result(0.86), _result(0.862)], Budget(fraction=0.9)
    )
    check = judge.measure(next(candidates))
    assert len(taken) == 3 and check.measured == pytest.approx(0.862)
    over = judge.over_budget(check)
    assert over is not None and over < 0
    # really over: both measurements say so, and the constraint is positive
    judge, candidates, taken = _judge([_result(0.97), _result(0.975)], Budget(fraction=0.9))
    check = judge.measure(next(candidates))
    assert len(taken) == 2 and (judge.over_budget(check) or 0) > 0


def test_unstable_or_fallback_measurements_do_not_teach_the_predictor() -> None:
    judge, candidates, _ = _judge(
        [_result(0.8, stable=False), _result(0.8, threads=1), _result(0.8)], Budget()
    )
    for _ in range(3):
        judge.measure(next(candidates))
    assert judge.predictor.observed == [pytest.approx(0.8)]  # type: ignore[attr-defined]
    assert [c.uncertainty > 0.03 for c in judge.known.values()] == [False, True, False]


def test_a_relative_budget_is_immune_to_the_machine_slowing_down() -> None:
    # the same candidate at the start and, 30 % slower machine, at the end: same ratio
    for drift in (0.0, 0.3):
        machine, slow = FakeMachine(), 1 + drift
        (r,) = measure_paired(
            lambda m=machine, s=slow: m.call(0.1 * s),
            [lambda m=machine, s=slow: m.call(0.088 * s)],
            threads=1, clock=machine,
        )  # fmt: skip
        assert r.ratio == pytest.approx(0.88) and r.ratio <= Budget(fraction=0.9).limit_units(None)


def test_the_refit_is_robust_to_a_few_wild_measurements() -> None:
    rng = random.Random(0)
    samples = []
    for _ in range(20):
        a, b = rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.6)
        samples.append(({"a": a, "b": b}, 0.05 + a + b))
    clean = fit_correction(samples, form="scale")
    wild = list(samples)
    for i in (3, 8, 15):  # three 15x spikes believed by least squares
        f, m = wild[i]
        wild[i] = (f, 15 * m)
    weights, offset, _ = select_correction(wild)
    for f, m in samples:
        predicted = offset + sum(weights.get(k, 1.0) * v for k, v in f.items())
        assert math.isclose(predicted, m, rel_tol=0.05), (predicted, m)
    assert clean[1] == pytest.approx(0.05, abs=0.01)


def test_training_takes_the_cores_the_process_gets(graph: Graph) -> None:
    # one busy process on 2 cores: 2 threads get 62 % of their CPU time -> train with 1
    busy = fake_measurer(graph, FakeMachine(utilisation={2: 0.62, 1: 0.99}))
    assert busy.training_threads() == 1
    quiet = fake_measurer(graph, FakeMachine(utilisation={2: 0.98}))
    assert quiet.training_threads() is None  # torch's own setting stands
