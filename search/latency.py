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
    table: LatencyTable
    workload: Workload
    measure_block: BlockMeasurer
    worker: str = "local"
    scale: float = 1.0
    offset: float = 0.0
    block_measurements: int = 0  # how many blocks this predictor had to measure (cache misses)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (block sum, measured)

    def block_seconds(self, graph: Graph, block: str) -> float:
        signature = block_signature(graph, block)
        shape = self.workload.shape_key()
        cached = self.table.get(signature, shape)
        if cached is not None:
            return cached
        seconds = self.measure_block(graph, block)
        self.block_measurements += 1
        self.table.add(signature, shape, self.worker, seconds)
        return self.table.get(signature, shape) or seconds

    def block_sum(self, graph: Graph) -> float:
        return sum(self.block_seconds(graph, b) for b in graph.blocks())

    def predict(self, graph: Graph) -> float:
        return self.scale * self.block_sum(graph) + self.offset

    def observe(self, graph: Graph, measured: float) -> None:
        """Add an end-to-end measurement and refit the correction."""
        self.samples.append((self.block_sum(graph), measured))
        self.scale, self.offset = fit_correction(self.samples)


def fit_correction(samples: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``measured ~ a * block_sum + b``; with one sample only the offset moves."""
    if not samples:
        return 1.0, 0.0
    if len(samples) < 3:
        return 1.0, sum(m - s for s, m in samples) / len(samples)
    n = len(samples)
    mean_s = sum(s for s, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((s - mean_s) ** 2 for s, _ in samples)
    if var <= 0:
        return 1.0, mean_m - mean_s
    a = sum((s - mean_s) * (m - mean_m) for s, m in samples) / var
    if a <= 0:  # a nonsense fit (noise dominates): keep additivity, fit the offset only
        return 1.0, mean_m - mean_s
    return a, mean_m - a * mean_s


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
