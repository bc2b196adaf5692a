"""Budgets, robust combination of worker measurements, the block table and the predictor."""

from __future__ import annotations

import pytest

from archgen.errors import ArchgenError
from archgen.search.budget import RelativeBudget, parse_budget, parse_search_budget
from archgen.search.latency import (
    BlockRow,
    LatencyPredictor,
    LatencyTable,
    fit_correction,
    select_correction,
    trust_report,
)
from archgen.search.robust import nearest_neighbour_average, robust_combine
from archgen.search.timing import BlockTiming, Workload


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10ms", 0.010), ("2.5 ms", 0.0025), ("1s", 1.0), ("800us", 0.0008), ("1e-2s", 0.01)],
)
def test_parse_budget(text: str, seconds: float) -> None:
    assert parse_budget(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10parsecs", "ms", "10", "-5ms", "0ms", "ten ms"])
def test_bad_budgets_are_clear_errors(text: str) -> None:
    with pytest.raises(ArchgenError, match="budget"):
        parse_budget(text)


def test_nna_ignores_a_faulty_worker() -> None:
    honest = [10.0, 10.2, 9.9, 10.1]
    assert nearest_neighbour_average([*honest, 500.0], faulty=1) == pytest.approx(10.05)
    mean = sum([*honest, 500.0]) / 5
    assert mean > 100  # what a plain mean would have reported


def test_nna_with_no_faulty_workers_is_the_mean() -> None:
    assert nearest_neighbour_average([1.0, 2.0, 6.0], faulty=0) == pytest.approx(3.0)


def _row(seconds: float, worker: str = "w", **kw) -> BlockRow:
    fields = {"reference": "ref", "reference_s": 0.1, "utilisation": 0.98, "threads": 2}
    return BlockRow(seconds, **{**fields, **kw}, measured_at=0.0, worker=worker)


def _predictor(table: LatencyTable, measure_blocks, **kw) -> LatencyPredictor:
    return LatencyPredictor(table, Workload(threads=2), measure_blocks, reference="ref", **kw)


def test_table_combines_workers_robustly(tmp_path) -> None:
    table = LatencyTable(tmp_path / "t.sqlite", {"torch": "x"})
    for worker, seconds in [("a", 0.010), ("b", 0.0102), ("c", 0.0099), ("throttled", 0.25)]:
        table.add("sig", "shape", _row(seconds, worker))
    predictor = _predictor(table, None)
    assert predictor._cached("sig", "shape") == pytest.approx(0.1003, rel=0.01)  # units
    # a table read in another environment (other library versions) does not see these rows
    other = LatencyTable(tmp_path / "t.sqlite", {"torch": "y"})
    assert other.rows("sig", "shape") == []


def test_faulty_measurements_cannot_move_the_table_much(tmp_path) -> None:
    table = LatencyTable(tmp_path / "t.sqlite", {})
    for i in range(6):
        table.add("s", "L", _row(0.020 + 0.0001 * i, f"w{i}"))
    clean = _predictor(table, None)._cached("s", "L")
    table.add("s", "L", _row(5.0, "evil1"))
    table.add("s", "L", _row(0.000001, "evil2"))
    assert _predictor(table, None)._cached("s", "L") == pytest.approx(clean, rel=0.02)
    assert robust_combine([0.02] * 6 + [5.0, 1e-6]) == pytest.approx(0.02, rel=0.02)


def test_rows_measured_under_load_or_against_a_drifted_reference_are_not_used(tmp_path) -> None:
    table = LatencyTable(tmp_path / "t.sqlite", {})
    table.add("s", "L", _row(0.040, utilisation=0.6))  # a CI run beside it: 4x, contended
    table.add("s", "L", _row(0.015, threads=1))  # the fallback threads
    table.add("s", "L", _row(0.010, reference="other"))  # against another reference model
    table.add("s", "L", _row(0.030, reference_s=0.3))  # the reference timed 3x slower then
    now = _predictor(table, None, reference_s=0.1)
    assert now._cached("s", "L") is None and now.stale_rows == 4
    table.add("s", "L", _row(0.010))
    assert _predictor(table, None, reference_s=0.1)._cached("s", "L") == pytest.approx(0.1)
    # a uniformly slower machine (the reference 20 % slower too) reads the same units
    table.add("s", "L", _row(0.012, reference_s=0.12))
    assert _predictor(table, None, reference_s=0.115)._cached("s", "L") == pytest.approx(0.1)


def test_correction_fit_recovers_per_kind_factors_and_the_offset() -> None:
    import random

    rng = random.Random(0)
    samples = []
    for _ in range(40):
        a, b = rng.randint(0, 6) * 0.003, rng.randint(0, 6) * 0.002
        samples.append(({"A": a, "B": b}, 1.3 * a + 0.8 * b + 0.004))
    weights, offset = fit_correction(samples, ridge=1e-4)
    assert weights["A"] == pytest.approx(1.3, rel=1e-2)
    assert weights["B"] == pytest.approx(0.8, rel=1e-2)
    assert offset == pytest.approx(0.004, rel=1e-2)


def test_correction_with_few_samples_moves_only_the_offset() -> None:
    weights, offset = fit_correction([({"A": 0.01}, 0.015)])
    assert weights == {} and offset == pytest.approx(0.005)


def test_ridge_keeps_unidentifiable_weights_near_one() -> None:
    # A and B always appear together: only their sum is identified; ridge splits it evenly.
    samples = [({"A": k * 0.01, "B": k * 0.01}, k * 0.024) for k in range(1, 6)]
    weights, _ = fit_correction(samples, ridge=0.5)
    assert weights["A"] == pytest.approx(weights["B"], rel=1e-6)


def test_trust_report() -> None:
    report = trust_report([1, 2, 3, 4, 5], [1.1, 2.2, 2.9, 4.4, 5.0])
    assert report.spearman == pytest.approx(1.0) and report.kendall == pytest.approx(1.0)
    assert 0 < report.mape < 10
    assert report.trustworthy(min_samples=5)
    bad = trust_report([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    assert bad.spearman == pytest.approx(-1.0) and not bad.trustworthy()


def test_search_budgets_may_be_a_percentage_of_the_base_model() -> None:
    assert parse_search_budget("90%") == RelativeBudget(0.9)
    assert parse_search_budget(" 12.5 % ") == RelativeBudget(0.125)
    assert parse_search_budget("10ms") == pytest.approx(0.010)
    assert RelativeBudget(0.9).resolve(0.050) == pytest.approx(0.045)
    for bad in ("0%", "150%", "%"):
        with pytest.raises(ArchgenError):
            parse_search_budget(bad)
    with pytest.raises(ArchgenError):
        parse_budget("90%")  # absolute-only contexts keep refusing it


def test_missing_blocks_are_measured_once_all_together(tmp_path) -> None:
    from archgen import api
    from tests.backends.conformance import TINY_SPEC

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    graph = api.compile_spec(spec)
    calls: list[list[str]] = []

    def measure_blocks(items) -> list[BlockTiming]:
        calls.append([b for _, b in items])
        return [BlockTiming(0.001 * (i + 1), 0.1, 0.98, 2, False) for i in range(len(items))]

    table = LatencyTable(tmp_path / "t.sqlite", {})
    predictor = _predictor(table, measure_blocks)
    blocks = graph.blocks()
    predictor.ensure_blocks([(graph, b) for b in blocks] * 2)  # duplicates measured once
    distinct = {predictor.block_cost(graph, b) for b in blocks}
    assert len(calls) == 1 and predictor.block_measurements == len(calls[0]) == len(distinct)
    predictor.predict(graph)  # everything is in the table now: nothing more is measured
    assert len(calls) == 1


def test_a_new_predictor_reads_the_table_once_and_measures_nothing(tmp_path, monkeypatch) -> None:
    from archgen import api
    from tests.backends.conformance import TINY_SPEC

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    graph = api.compile_spec(spec)
    table = LatencyTable(tmp_path / "t.sqlite", {})
    first = _predictor(table, lambda items: [BlockTiming(0.002, 0.1, 0.98, 2, False)] * len(items))
    expected = first.predict(graph)

    def must_not_measure(items) -> list[float]:
        raise AssertionError(f"measured {len(items)} block(s) the table holds")

    reads: list[str] = []
    original_rows = LatencyTable.rows
    monkeypatch.setattr(
        LatencyTable,
        "rows",
        lambda self, sig, shape: reads.append(sig) or original_rows(self, sig, shape),
    )
    second = _predictor(LatencyTable(tmp_path / "t.sqlite", {}), must_not_measure)
    assert second.predict(graph) == pytest.approx(expected)
    after_first = len(reads)
    assert after_first == len({reads[i] for i in range(after_first)})  # one read per signature
    for _ in range(3):
        second.predict(graph)
    assert len(reads) == after_first  # later predictions come from the snapshot


def _noisy_samples(n: int, factors: dict[str, float], noise: float, seed: int) -> list:
    import random

    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        f = {k: rng.randint(0, 6) * 0.004 for k in factors}
        true = 0.01 + sum(factors[k] * v for k, v in f.items())
        samples.append((f, true * (1 + rng.gauss(0, noise))))
    return samples


def test_few_noisy_measurements_choose_a_correction_that_keeps_the_table_ranking() -> None:
    # The table is right (all factors 1), the measurements carry 3 % noise: with 6 of them a
    # per-kind fit would chase the noise; leave-one-out picks a form with tied weights.
    factors = {k: 1.0 for k in "ABCDE"}
    for seed in range(5):
        _, _, form = select_correction(_noisy_samples(6, factors, 0.03, seed))
        assert form in ("offset", "scale"), (seed, form)


def test_many_measurements_of_real_per_kind_differences_choose_per_kind_factors() -> None:
    factors = {"A": 1.4, "B": 0.7, "C": 1.0}
    weights, offset, form = select_correction(_noisy_samples(60, factors, 0.005, 0), ridge=1e-3)
    assert form == "per-kind"
    assert weights["A"] == pytest.approx(1.4, rel=0.05) and weights["B"] == pytest.approx(
        0.7, rel=0.05
    )
    assert offset == pytest.approx(0.01, rel=0.2)


def test_scale_form_ties_the_weights() -> None:
    samples = _noisy_samples(12, {"A": 1.2, "B": 1.2}, 0.0, 1)
    weights, offset = fit_correction(samples, ridge=1e-6, form="scale")
    assert weights["A"] == weights["B"] == pytest.approx(1.2, rel=1e-3)
    assert offset == pytest.approx(0.01, rel=1e-2)


# In-context calibration: kinds whose isolated block time misstates their cost inside a model.
ISOLATED_S = {"A": 0.004, "B": 0.003, "C": 0.002, "D": 0.0035, "E": 0.0025}
IN_CONTEXT = {"A": 0.7, "B": 1.0, "C": 1.3, "D": 0.9, "E": 1.2}  # true factor per kind


class _CountPredictor(LatencyPredictor):
    """A predictor whose 'graphs' are tuples of block kinds, priced from ISOLATED_S."""

    def table_features(self, graph) -> dict[str, float]:  # type: ignore[override]
        out: dict[str, float] = {}
        for kind in graph:
            out[kind] = out.get(kind, 0.0) + ISOLATED_S[kind]
        return out


def _exact_seconds(model: tuple[str, ...]) -> float:
    return 0.01 + sum(ISOLATED_S[k] * IN_CONTEXT[k] for k in model)


def _measured_seconds(model: tuple[str, ...], rng) -> float:
    return _exact_seconds(model) * (1 + rng.gauss(0, 0.01))


def _count_predictor() -> LatencyPredictor:
    def no_blocks(items) -> list[float]:
        raise AssertionError("nothing to measure")

    return _CountPredictor(None, Workload(), no_blocks, "ref")  # type: ignore[arg-type]


def test_calibration_on_homogeneous_models_predicts_in_context_costs() -> None:
    import random

    from scipy.stats import spearmanr

    for seed in range(3):
        rng = random.Random(seed)
        homogeneous = [(k,) * 6 for k in ISOLATED_S]
        candidates = [tuple(rng.choice("ABCDE") for _ in range(6)) for _ in range(40)]
        truth = [_exact_seconds(c) for c in candidates]
        plain = _count_predictor()
        for model in homogeneous:  # the same measurements as corrections only
            plain.observe(model, _measured_seconds(model, rng))
        calibrated = _count_predictor()
        measured = [_measured_seconds(m, rng) for m in homogeneous]
        before = [calibrated.predict(m) for m in homogeneous]
        assert calibrated.calibrate(homogeneous, measured) == pytest.approx(before)
        # Models of six blocks cannot tell a common shift of the factors from the offset, so
        # the factors themselves are not pinned down: the predictions are.
        predicted = [calibrated.predict(c) for c in candidates]
        assert predicted == pytest.approx(truth, rel=0.02), seed
        rho = spearmanr(predicted, truth).statistic
        rho_plain = spearmanr([plain.predict(c) for c in candidates], truth).statistic
        assert rho > 0.9 and rho > rho_plain + 0.2, (seed, rho, rho_plain)


def test_kinds_the_design_does_not_cover_keep_their_table_value() -> None:
    import random

    rng = random.Random(0)
    design = [(k,) * 6 for k in "ABC"]
    predictor = _count_predictor()
    predictor.calibrate(design, [_measured_seconds(m, rng) for m in design])
    assert set(predictor.context) == {"A", "B", "C"}
    assert predictor.in_context({"D": 0.002})["D"] == 0.002
    assert len(predictor.samples) == 3  # the design also feeds the correction


def test_calibration_needs_three_models_to_separate_factors_from_the_offset() -> None:
    predictor = _count_predictor()
    predictor.calibrate([("A",) * 6, ("B",) * 6], [0.03, 0.03])
    assert predictor.context == {}
