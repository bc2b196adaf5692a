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

from archgen.ir.graph import Graph
from archgen.search.robust import robust_combine


@dataclass(frozen=True)
class Workload:
    batch: int = 1
    seq_len: int = 1024
    phase: str = "prefill"  # or "decode": seconds per generated token at context seq_len
    dtype: str = "float32"
    backend: str = "eager"
    device: str = "cpu"
    threads: int = 2
    repeats: int = 15

    def shape_key(self) -> str:
        return f"{self.phase}:B{self.batch}:L{self.seq_len}:{self.dtype}"


def block_signature(graph: Graph, block: str) -> str:
    """What determines a block's latency: its ops and attributes, not its name or weights."""
    lines = [
        f"{node.name.removeprefix(block)}={node.op!r}"
        for node in graph.nodes
        if node.block == block
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:20]


class LatencyTable:
    """Block latencies on disk, shared by searches and by concurrent workers."""

    def __init__(self, path: str | Path, environment: dict[str, str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.env = hashlib.sha256(json.dumps(environment, sort_keys=True).encode()).hexdigest()[:16]
        self.environment = environment
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS block_latency (signature TEXT, shape TEXT, env TEXT,"
                " worker TEXT, seconds REAL, measured_at REAL)"
            )
            db.execute(
                "CREATE INDEX IF NOT EXISTS block_key ON block_latency (signature, shape, env)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def add(self, signature: str, shape: str, worker: str, seconds: float) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO block_latency VALUES (?, ?, ?, ?, ?, ?)",
                (signature, shape, self.env, worker, seconds, time.time()),
            )

    def measurements(self, signature: str, shape: str) -> list[float]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT seconds FROM block_latency WHERE signature=? AND shape=? AND env=?",
                (signature, shape, self.env),
            ).fetchall()
        return [r[0] for r in rows]

    def get(self, signature: str, shape: str) -> float | None:
        values = self.measurements(signature, shape)
        return robust_combine(values) if values else None


# [(graph, block name), ...] -> the seconds each block adds, measured together (one shared stem,
# interleaved: Measurer.measure_blocks)
BlockMeasurer = Callable[[Sequence[tuple[Graph, str]]], list[float]]


@dataclass
class LatencyPredictor:
    """``predicted = offset + sum over block kinds k of weight_k * context_k * (table seconds of
    k-blocks)``.

    Two corrections turn the table's isolated blocks into whole-model latency:

    * ``context``, a factor per block kind from :meth:`calibrate`: a block timed alone between the
      embedding and the head does not cost what it costs among other blocks (caches, memory
      traffic), and not by one common factor. Whole models that each hold mostly one kind (the
      base model and the homogeneous ones, which the search measures first anyway) tell each
      kind's factor apart by design, where a few random candidates cannot.
    * ``weights`` and ``offset``, refitted on every end-to-end measurement by
      :func:`select_correction`, which picks the form the measurements support: an offset only,
      one shared scale, or a factor per block kind. The offset absorbs the embedding, head and
      per-call overhead.
    """

    table: LatencyTable
    workload: Workload
    measure_blocks: BlockMeasurer
    worker: str = "local"
    ridge: float = 0.5  # penalty on (weight - 1), relative to a typical block-kind total
    # calibrate()'s design tells the kinds apart, so its factors need only a light pull towards 1:
    # enough to fix what the design leaves open (a shift shared by all kinds vs the offset).
    context_ridge: float = 0.05
    offset: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)
    correction: str = "offset"  # the form fit_correction chose (CORRECTION_FORMS)
    context: dict[str, float] = field(default_factory=dict)  # per block kind, from calibrate()
    block_measurements: int = 0  # how many blocks this predictor had to measure (cache misses)
    samples: list[tuple[dict[str, float], float]] = field(default_factory=list)  # table seconds
    # The table as this predictor first read it, per signature: a prediction reads every block of
    # a candidate, and the search predicts thousands of candidates. A snapshot also keeps the
    # predictor consistent with its fitted correction when another worker adds a measurement of
    # the same block later in the search.
    _seconds: dict[str, float] = field(default_factory=dict, repr=False)

    def block_seconds(self, graph: Graph, block: str) -> float:
        return self._block(graph, block)[1]

    def ensure_blocks(self, items: Sequence[tuple[Graph, str]]) -> None:
        """Measure every block of ``items`` the table lacks, all in one interleaved run: blocks
        measured under the same machine conditions are comparable with each other, which is
        what the predictor's ranking rests on."""
        shape = self.workload.shape_key()
        missing: dict[str, tuple[Graph, str]] = {}
        for graph, block in items:
            signature = block_signature(graph, block)
            if signature in self._seconds or signature in missing:
                continue
            stored = self.table.get(signature, shape)
            if stored is None:
                missing[signature] = (graph, block)
            else:
                self._seconds[signature] = stored
        if not missing:
            return
        seconds = self.measure_blocks(list(missing.values()))
        for signature, value in zip(missing, seconds, strict=True):
            self.table.add(signature, shape, self.worker, value)
            # what the table now says, combined with any other worker's measurement
            self._seconds[signature] = self.table.get(signature, shape) or value
        self.block_measurements += len(missing)

    def _block(self, graph: Graph, block: str) -> tuple[str, float]:
        signature = block_signature(graph, block)
        if signature not in self._seconds:
            self.ensure_blocks([(graph, block)])
        return signature, self._seconds[signature]

    def table_features(self, graph: Graph) -> dict[str, float]:
        """Table seconds per block kind (signature) of ``graph``: the blocks as timed alone."""
        out: dict[str, float] = {}
        for block in graph.blocks():
            signature, seconds = self._block(graph, block)
            out[signature] = out.get(signature, 0.0) + seconds
        return out

    def in_context(self, features: dict[str, float]) -> dict[str, float]:
        return {k: self.context.get(k, 1.0) * v for k, v in features.items()}

    def features(self, graph: Graph) -> dict[str, float]:
        """Seconds per block kind of ``graph`` as blocks cost inside a whole model."""
        return self.in_context(self.table_features(graph))

    def block_sum(self, graph: Graph) -> float:
        """The plain sum of the table's blocks, before any correction."""
        return sum(self.table_features(graph).values())

    def predict(self, graph: Graph) -> float:
        f = self.features(graph)
        return self.offset + sum(self.weights.get(k, 1.0) * v for k, v in f.items())

    def observe(self, graph: Graph, measured: float) -> None:
        """Add an end-to-end measurement and refit the correction."""
        self.samples.append((self.table_features(graph), measured))
        self._refit()

    def calibrate(self, graphs: Sequence[Graph], measured: Sequence[float]) -> list[float]:
        """Fit each block kind's in-context factor on whole models measured together.

        ``graphs`` should be a design that tells the kinds apart -- the homogeneous models, one
        per choice, and the base model -- measured in one interleaved run. Every kind's factor is
        pulled towards 1 (ridge), so a kind the design leaves undetermined keeps its table value.
        The models also join the samples of the correction. Returns what the predictor said of
        each model *before* it saw the measurements (honest checks for a trust report)."""
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


def fit_correction(
    samples: Samples, ridge: float = 0.5, form: str = "per-kind"
) -> tuple[dict[str, float], float]:
    """Ridge least squares of ``measured ~ offset + sum_k w_k f_k`` with ``w`` pulled towards 1.

    ``form`` restricts the weights: ``offset`` keeps every weight at 1, ``scale`` ties them to one
    shared value (which keeps the block table's ranking of candidates), ``per-kind`` frees each.
    With one or two samples only the offset moves, whatever the form."""
    import numpy as np

    if not samples:
        return {}, 0.0
    if len(samples) < 3 or form == "offset":
        return {}, sum(m - sum(f.values()) for f, m in samples) / len(samples)
    kinds = sorted({k for f, _ in samples for k in f})
    x = np.array([[f.get(k, 0.0) for k in kinds] for f, _ in samples])
    y = np.array([m for _, m in samples])
    y_res = y - x.sum(axis=1)  # solved for (w - 1), so the ridge prior is the origin
    columns = x.sum(axis=1, keepdims=True) if form == "scale" else x
    scale = float(np.median(columns[columns > 0])) if (columns > 0).any() else 1.0
    n = columns.shape[1]
    data_rows = np.hstack([columns, np.ones((len(y), 1))])
    penalty_rows = np.hstack([ridge * scale * np.eye(n), np.zeros((n, 1))])  # on weights only
    a = np.vstack([data_rows, penalty_rows])
    b = np.concatenate([y_res, np.zeros(n)])
    solution, *_ = np.linalg.lstsq(a, b, rcond=None)
    deltas = [float(solution[0])] * len(kinds) if form == "scale" else solution[:-1]
    weights = {k: 1.0 + float(d) for k, d in zip(kinds, deltas, strict=True)}
    return weights, float(solution[-1])


def select_correction(samples: Samples, ridge: float = 0.5) -> tuple[dict[str, float], float, str]:
    """The correction form with the smallest leave-one-out error on ``samples``, fitted on all.

    A factor per block kind needs many end-to-end measurements to be told apart from their noise:
    fitted on a handful it follows the noise and reorders candidates the block table ranked
    right (on this project's CPU runs, benchmarks/results/search_cpu.md). Leave-one-out error is
    what each form would have predicted for a measurement it had not seen, so a form is only
    chosen once the measurements support it (by the one-standard-error rule)."""
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
            out.append(((predicted - measured) / measured) ** 2)
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
