"""Latency for search: a persistent block table, a predictor composed from it, and a trust report.

* :class:`LatencyTable` stores block measurements on disk (SQLite), keyed by (block signature,
  shape, backend, device, library versions). Every worker appends its own measurement; reads
  combine them robustly (:func:`~archgen.search.robust.robust_combine`), so a throttled or faulty
  worker cannot move the table.
* :class:`LatencyPredictor` sums the blocks of a candidate and applies a fitted linear correction
  ``measured ~ a * sum(blocks) + b`` for what does not add up (embedding and head, framework
  overhead, fusion across blocks).
* :func:`trust_report` says how far the predictor can be trusted: Spearman and Kendall rank
  correlation and mean absolute percentage error on candidates also measured end to end.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
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


BlockMeasurer = Callable[[Graph, str], float]  # (graph, block name) -> seconds


@dataclass
class LatencyPredictor:
    """``predicted = offset + sum over block kinds k of weight_k * (table seconds of k-blocks)``.

    The weights start at 1 (the table is taken at its word) and are refitted, ridge-regularised
    towards 1, on every end-to-end measurement: a block kind whose cost in a whole model differs
    from its cost measured alone (cache effects, fusion, framework overhead) gets its own factor;
    the offset absorbs the embedding, head and per-call overhead.
    """

    table: LatencyTable
    workload: Workload
    measure_block: BlockMeasurer
    worker: str = "local"
    ridge: float = 0.5  # penalty on (weight - 1), relative to a typical block-kind total
    offset: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)
    block_measurements: int = 0  # how many blocks this predictor had to measure (cache misses)
    samples: list[tuple[dict[str, float], float]] = field(default_factory=list)

    def block_seconds(self, graph: Graph, block: str) -> float:
        return self._block(graph, block)[1]

    def _block(self, graph: Graph, block: str) -> tuple[str, float]:
        signature = block_signature(graph, block)
        shape = self.workload.shape_key()
        cached = self.table.get(signature, shape)
        if cached is not None:
            return signature, cached
        seconds = self.measure_block(graph, block)
        self.block_measurements += 1
        self.table.add(signature, shape, self.worker, seconds)
        return signature, self.table.get(signature, shape) or seconds

    def features(self, graph: Graph) -> dict[str, float]:
        """Table seconds per block kind (signature) of ``graph``."""
        out: dict[str, float] = {}
        for block in graph.blocks():
            signature, seconds = self._block(graph, block)
            out[signature] = out.get(signature, 0.0) + seconds
        return out

    def block_sum(self, graph: Graph) -> float:
        return sum(self.features(graph).values())

    def predict(self, graph: Graph) -> float:
        f = self.features(graph)
        return self.offset + sum(self.weights.get(k, 1.0) * v for k, v in f.items())

    def observe(self, graph: Graph, measured: float) -> None:
        """Add an end-to-end measurement and refit the correction."""
        self.samples.append((self.features(graph), measured))
        self.weights, self.offset = fit_correction(self.samples, self.ridge)


def fit_correction(
    samples: Sequence[tuple[dict[str, float], float]], ridge: float = 0.5
) -> tuple[dict[str, float], float]:
    """Ridge least squares of ``measured ~ offset + sum_k w_k f_k`` with ``w`` pulled towards 1.

    With one or two samples only the offset moves (the weights stay 1)."""
    import numpy as np

    if not samples:
        return {}, 0.0
    if len(samples) < 3:
        return {}, sum(m - sum(f.values()) for f, m in samples) / len(samples)
    kinds = sorted({k for f, _ in samples for k in f})
    x = np.array([[f.get(k, 0.0) for k in kinds] + [1.0] for f, _ in samples])
    y = np.array([m for _, m in samples])
    scale = float(np.median(x[:, :-1][x[:, :-1] > 0])) if (x[:, :-1] > 0).any() else 1.0
    lam = ridge * scale
    # Penalty rows lam * (w_k - 1) = 0, solved for (w - 1) so the prior is the origin.
    y_res = y - x[:, :-1].sum(axis=1)
    penalty = np.hstack([lam * np.eye(len(kinds)), np.zeros((len(kinds), 1))])
    a = np.vstack([x, penalty])
    b = np.concatenate([y_res, np.zeros(len(kinds))])
    solution, *_ = np.linalg.lstsq(a, b, rcond=None)
    weights = {k: 1.0 + float(d) for k, d in zip(kinds, solution[:-1], strict=True)}
    return weights, float(solution[-1])


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
