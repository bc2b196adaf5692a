"""Latency for search: a persistent block table, a predictor composed from it, and a trust report.

* :class:`LatencyTable` stores block measurements on disk (SQLite), keyed by (block signature,
  shape, backend, device, library versions). Every worker appends its own measurement; reads
  combine them robustly (:func:`~archgen.search.robust.robust_combine`), so a throttled or faulty
  worker cannot move the table.
* :class:`LatencyPredictor` sums the blocks of a candidate, each kind scaled by its in-context
  factor (fitted on whole models that tell the kinds apart), and applies a fitted linear
  correction for what does not add up (embedding and head, framework overhead, fusion).
* :func:`trust_report` says how far the predictor can be trusted: Spearman and Kendall rank
  correlation and mean absolute percentage error on candidates also measured end to end.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from archgen.ir.graph import Graph
from archgen.search.paired import PairingPolicy
from archgen.search.robust import robust_combine
from archgen.search.timing import BlockTiming, Workload


def block_signature(graph: Graph, block: str) -> str:
    """What determines a block's latency: its ops and attributes, not its name or weights."""
    lines = [
        f"{node.name.removeprefix(block)}={node.op!r}"
        for node in graph.nodes
        if node.block == block
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:20]


# A cached row whose reference timed this far from the reference now was taken on a machine in
# another state (throttled, loaded in a way utilisation missed): it is measured again.
REFERENCE_AGREEMENT = 0.25


@dataclass(frozen=True)
class BlockRow:
    """One measurement of one block, with what it was measured against and under what load."""

    seconds: float  # what the block adds to the stem
    reference: str  # graph_signature of the reference model timed in the same rounds
    reference_s: float | None  # the reference's median seconds in those rounds
    utilisation: float | None  # CPU time / (threads x wall) of those rounds
    threads: int
    measured_at: float  # Unix time
    worker: str

    @property
    def units(self) -> float | None:
        """The block's cost in reference units (fractions of the reference's latency)."""
        return self.seconds / self.reference_s if self.reference_s else None

    @property
    def contended(self) -> bool:
        return PairingPolicy().contended(self.utilisation)


class LatencyTable:
    """Block latencies on disk, shared by searches and by concurrent workers. Rows record when,
    against which reference and under what load they were measured (:class:`BlockRow`)."""

    def __init__(self, path: str | Path, environment: dict[str, str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.env = hashlib.sha256(json.dumps(environment, sort_keys=True).encode()).hexdigest()[:16]
        self.environment = environment
        with self._connect() as db:
            # v2: the v1 table (seconds only, no reference or load) is left unread
            db.execute(
                "CREATE TABLE IF NOT EXISTS block_latency_v2 (signature TEXT, shape TEXT,"
                " env TEXT, worker TEXT, seconds REAL, measured_at REAL, reference TEXT,"
                " reference_s REAL, utilisation REAL, threads INTEGER)"
            )
            db.execute(
                "CREATE INDEX IF NOT EXISTS block_key_v2 ON block_latency_v2"
                " (signature, shape, env)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def add(self, signature: str, shape: str, row: BlockRow) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO block_latency_v2 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    signature, shape, self.env, row.worker, row.seconds, row.measured_at,
                    row.reference, row.reference_s, row.utilisation, row.threads,
                ),
            )  # fmt: skip

    def rows(self, signature: str, shape: str) -> list[BlockRow]:
        with self._connect() as db:
            found = db.execute(
                "SELECT seconds, reference, reference_s, utilisation, threads, measured_at,"
                " worker FROM block_latency_v2 WHERE signature=? AND shape=? AND env=?",
                (signature, shape, self.env),
            ).fetchall()
        return [BlockRow(*r) for r in found]


# [(graph, block name), ...] -> what each block adds to the stem, timed together with the
# reference (one shared stem, interleaved: Measurer.measure_blocks)
BlockMeasurer = Callable[[Sequence[tuple[Graph, str]]], Sequence[BlockTiming]]


def graph_signature(graph: Graph) -> str:
    """What determines a whole model's latency: its nodes' ops and wiring, not its weights."""
    return hashlib.sha256("\n".join(repr(n) for n in graph.nodes).encode()).hexdigest()[:20]


@dataclass
class LatencyPredictor:
    """``predicted = offset + sum over block kinds k of weight_k * context_k * (table cost of
    k-blocks)``, everything in *reference units*: fractions of the reference model's latency.

    The block table's rows are converted to reference units by the reference timed in the same
    rounds, so a table measured while the machine was uniformly faster or slower still predicts
    right, and predictions compare directly with paired measurements (search/paired.py).

    Two corrections turn the table's isolated blocks into whole-model latency:

    * ``context``, a factor per block kind from :meth:`calibrate`: a block timed alone between the
      embedding and the head does not cost what it costs among other blocks (caches, memory
      traffic), and not by one common factor. Whole models that each hold mostly one kind (the
      base model and the homogeneous ones, which the search measures first anyway) tell each
      kind's factor apart by design, where a few random candidates cannot.
    * ``weights`` and ``offset``, refitted on every stable end-to-end measurement by
      :func:`select_correction`, which picks the form the measurements support: an offset only,
      one shared scale, or a factor per block kind. The fit is robust (Huber), so a measurement
      that got through wrong moves it little.
    """

    table: LatencyTable
    workload: Workload
    measure_blocks: BlockMeasurer
    reference: str  # graph_signature of the reference model
    worker: str = "local"
    # the reference's calibrated seconds now (ReferenceCalibration); cached rows whose reference
    # timed far from it are measured again
    reference_s: float | None = None
    ridge: float = 0.5  # penalty on (weight - 1), relative to a typical block-kind total
    # calibrate()'s design tells the kinds apart, so its factors need only a light pull towards 1:
    # enough to fix what the design leaves open (a shift shared by all kinds vs the offset).
    context_ridge: float = 0.05
    offset: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)
    correction: str = "offset"  # the form fit_correction chose (CORRECTION_FORMS)
    context: dict[str, float] = field(default_factory=dict)  # per block kind, from calibrate()
    block_measurements: int = 0  # how many blocks this predictor had to measure (cache misses)
    stale_rows: int = 0  # cached rows not used: contended, other threads, reference disagrees
    samples: list[tuple[dict[str, float], float]] = field(default_factory=list)  # table units
    # The table as this predictor first read it, per signature: a prediction reads every block of
    # a candidate, and the search predicts thousands of candidates. A snapshot also keeps the
    # predictor consistent with its fitted correction when another worker adds a measurement of
    # the same block later in the search.
    _units: dict[str, float] = field(default_factory=dict, repr=False)

    def block_cost(self, graph: Graph, block: str) -> float:
        """What ``block`` of ``graph`` costs alone, in reference units."""
        return self._block(graph, block)[1]

    def usable(self, row: BlockRow) -> bool:
        """Whether a cached row may stand for this workload now."""
        if row.reference != self.reference or row.units is None or row.contended:
            return False
        if row.threads != self.workload.threads:
            return False
        if self.reference_s is not None and row.reference_s is not None:
            return abs(row.reference_s / self.reference_s - 1) <= REFERENCE_AGREEMENT
        return True

    def _cached(self, signature: str, shape: str, *, count_stale: bool = True) -> float | None:
        rows = self.table.rows(signature, shape)
        good = [r.units for r in rows if self.usable(r) and r.units is not None]
        if count_stale:
            self.stale_rows += len(rows) - len(good)
        return robust_combine(good) if good else None

    def ensure_blocks(self, items: Sequence[tuple[Graph, str]]) -> None:
        """Measure every block of ``items`` the table lacks a usable row for, all in one
        interleaved run: blocks measured under the same machine conditions are comparable with
        each other, which is what the predictor's ranking rests on."""
        shape = self.workload.shape_key()
        missing: dict[str, tuple[Graph, str]] = {}
        for graph, block in items:
            signature = block_signature(graph, block)
            if signature in self._units or signature in missing:
                continue
            stored = self._cached(signature, shape)
            if stored is None:
                missing[signature] = (graph, block)
            else:
                self._units[signature] = stored
        if not missing:
            return
        timings = self.measure_blocks(list(missing.values()))
        now = time.time()
        for signature, t in zip(missing, timings, strict=True):
            row = BlockRow(
                t.seconds, self.reference, t.reference_s, t.utilisation, t.threads, now,
                self.worker,
            )  # fmt: skip
            self.table.add(signature, shape, row)
            own = row.units if row.units is not None else row.seconds
            # what the table now says, combined with any other worker's usable measurement
            self._units[signature] = self._cached(signature, shape, count_stale=False) or own
        self.block_measurements += len(missing)

    def _block(self, graph: Graph, block: str) -> tuple[str, float]:
        signature = block_signature(graph, block)
        if signature not in self._units:
            self.ensure_blocks([(graph, block)])
        return signature, self._units[signature]

    def table_features(self, graph: Graph) -> dict[str, float]:
        """Table cost per block kind (signature) of ``graph``: the blocks as timed alone."""
        out: dict[str, float] = {}
        for block in graph.blocks():
            signature, cost = self._block(graph, block)
            out[signature] = out.get(signature, 0.0) + cost
        return out

    def in_context(self, features: dict[str, float]) -> dict[str, float]:
        return {k: self.context.get(k, 1.0) * v for k, v in features.items()}

    def features(self, graph: Graph) -> dict[str, float]:
        """Cost per block kind of ``graph`` as blocks cost inside a whole model."""
        return self.in_context(self.table_features(graph))

    def block_sum(self, graph: Graph) -> float:
        """The plain sum of the table's blocks, before any correction."""
        return sum(self.table_features(graph).values())

    def predict(self, graph: Graph) -> float:
        """``graph``'s latency in reference units."""
        f = self.features(graph)
        return self.offset + sum(self.weights.get(k, 1.0) * v for k, v in f.items())

    def observe(self, graph: Graph, measured: float) -> None:
        """Add an end-to-end measurement (reference units) and refit the correction."""
        self.samples.append((self.table_features(graph), measured))
        self._refit()

    def calibrate(self, graphs: Sequence[Graph], measured: Sequence[float]) -> list[float]:
        """Fit each block kind's in-context factor on whole models measured together.

        ``graphs`` should be a design that tells the kinds apart -- the homogeneous models, one
        per choice, and the base model -- measured against the reference. Every kind's factor
        is pulled towards 1 (ridge), so a kind the design leaves undetermined keeps its table
        value. The models also join the samples of the correction. Returns what the predictor
        said of each model *before* it saw the measurements (honest checks for a trust
        report)."""
        before = [self.predict(g) for g in graphs]
        design = [(self.table_features(g), m) for g, m in zip(graphs, measured, strict=True)]
        if len(design) >= 3:  # fewer cannot separate any factor from the offset
            self.context, _ = fit_correction(design, self.context_ridge, "per-kind")
        self.samples.extend(design)
        self._refit()
        return before

    def _refit(self) -> None:
        samples = [(self.in_context(f), m) for f, m in self.samples]
        self.weights, self.offset, self.correction = select_correction(samples, self.ridge)


Samples = Sequence[tuple[dict[str, float], float]]
# Simplest first: on equal leave-one-out error the simpler form wins.
CORRECTION_FORMS = ("offset", "scale", "per-kind")


HUBER_K = 1.345  # the usual tuning: 95 % efficiency on Gaussian noise


def huber_lstsq(
    a: np.ndarray, b: np.ndarray, penalty_a: np.ndarray, penalty_b: np.ndarray, iterations: int = 30
) -> np.ndarray:
    """Huber regression of ``a x ~ b`` (plus exact ridge rows ``penalty_a x ~ penalty_b``) by
    iteratively reweighted least squares. The residual scale is the MAD's, floored at 0.5 % of
    the typical ``|b|`` scale so that exact data do not divide by zero; a residual beyond
    ``HUBER_K`` scales weighs ``HUBER_K * scale / |r|``, so one wild sample moves the fit by a
    bounded amount where least squares follows it."""
    weights = np.ones(len(b))
    solution = np.zeros(a.shape[1])
    for _ in range(iterations):
        root = np.sqrt(weights)[:, None]
        stacked = np.vstack([a * root, penalty_a])
        target = np.concatenate([b * root[:, 0], penalty_b])
        solution, *_ = np.linalg.lstsq(stacked, target, rcond=None)
        residual = a @ solution - b
        scale = 1.4826 * float(np.median(np.abs(residual)))
        scale = max(scale, 5e-3 * float(np.median(np.abs(b)) + 1e-12), 1e-12)
        bound = HUBER_K * scale
        new = np.minimum(1.0, bound / np.maximum(np.abs(residual), 1e-300))
        if np.allclose(new, weights, atol=1e-6):
            break
        weights = new
    return solution


def fit_correction(
    samples: Samples, ridge: float = 0.5, form: str = "per-kind"
) -> tuple[dict[str, float], float]:
    """Robust (Huber) ridge regression of ``measured ~ offset + sum_k w_k f_k`` with ``w``
    pulled towards 1.

    ``form`` restricts the weights: ``offset`` keeps every weight at 1, ``scale`` ties them to one
    shared value (which keeps the block table's ranking of candidates), ``per-kind`` frees each.
    With one or two samples only the offset moves, whatever the form (their median)."""
    if not samples:
        return {}, 0.0
    residuals = [m - sum(f.values()) for f, m in samples]
    if len(samples) < 3:
        return {}, statistics.median(residuals)
    y_res = np.array(residuals)  # solved for (w - 1), so the ridge prior is the origin
    if form == "offset":
        (offset,) = huber_lstsq(np.ones((len(y_res), 1)), y_res, np.zeros((0, 1)), np.zeros(0))
        return {}, float(offset)
    kinds = sorted({k for f, _ in samples for k in f})
    x = np.array([[f.get(k, 0.0) for k in kinds] for f, _ in samples])
    columns = x.sum(axis=1, keepdims=True) if form == "scale" else x
    scale = float(np.median(columns[columns > 0])) if (columns > 0).any() else 1.0
    n = columns.shape[1]
    data_rows = np.hstack([columns, np.ones((len(y_res), 1))])
    penalty_rows = np.hstack([ridge * scale * np.eye(n), np.zeros((n, 1))])  # on weights only
    solution = huber_lstsq(data_rows, y_res, penalty_rows, np.zeros(n))
    deltas = [float(solution[0])] * len(kinds) if form == "scale" else solution[:-1]
    weights = {k: 1.0 + float(d) for k, d in zip(kinds, deltas, strict=True)}
    return weights, float(solution[-1])


def select_correction(samples: Samples, ridge: float = 0.5) -> tuple[dict[str, float], float, str]:
    """The correction form with the smallest leave-one-out error on ``samples``, fitted on all.

    A factor per block kind needs many end-to-end measurements to be told apart from their noise:
    fitted on a handful it follows the noise and reorders candidates the block table ranked
    right (on this project's CPU runs, benchmarks/results/search_cpu.md). Leave-one-out error is
    what each form would have predicted for a measurement it had not seen, so a form is only
    chosen once the measurements support it (by the one-standard-error rule). Errors are
    absolute relative errors, not squared: one wrong measurement must not decide the form."""
    kinds = len({k for f, _ in samples for k in f})
    # Fewer measurements than twice the parameters leave leave-one-out itself too noisy to judge.
    needs = {"offset": 1, "scale": 4, "per-kind": 2 * (kinds + 1)}
    forms = [f for f in CORRECTION_FORMS if len(samples) >= needs[f]]
    if len(forms) == 1:
        return (*fit_correction(samples, ridge, "offset"), "offset")

    def loo_errors(form: str) -> list[float]:
        out = []
        for i, (features, measured) in enumerate(samples):
            weights, offset = fit_correction([*samples[:i], *samples[i + 1 :]], ridge, form)
            predicted = offset + sum(weights.get(k, 1.0) * v for k, v in features.items())
            out.append(abs((predicted - measured) / measured))
        return out

    # The one-standard-error rule: the simplest form whose mean error is within one standard
    # error of the best form's; a more flexible form must beat the simpler one clearly.
    errors = {form: loo_errors(form) for form in forms}
    means = {form: statistics.fmean(e) for form, e in errors.items()}
    top = min(forms, key=means.__getitem__)
    threshold = means[top] + statistics.stdev(errors[top]) / math.sqrt(len(samples))
    best = next(form for form in forms if means[form] <= threshold)
    return (*fit_correction(samples, ridge, best), best)


@dataclass(frozen=True)
class TrustReport:
    n: int
    spearman: float
    kendall: float
    mape: float  # mean absolute percentage error, in percent

    def trustworthy(self, min_spearman: float = 0.9, min_samples: int = 5) -> bool:
        return self.n >= min_samples and self.spearman >= min_spearman


def trust_report(predicted: Sequence[float], measured: Sequence[float]) -> TrustReport:
    from scipy.stats import kendalltau, spearmanr

    n = len(predicted)
    if n < 3:
        return TrustReport(n, float("nan"), float("nan"), float("nan"))
    rho = float(spearmanr(predicted, measured).statistic)
    tau = float(kendalltau(predicted, measured).statistic)
    mape = 100.0 * sum(abs(p - m) / m for p, m in zip(predicted, measured, strict=True)) / n
    return TrustReport(n, rho, tau, mape)
