"""Certification: the Pareto models measured end to end, together with the reference, once per
study, and recorded in the study so that every worker names the same winner. When a whole front
measures over budget, the next front is certified (a bounded walk down the fronts).

Workers of one study finish at different times. The first to get the study's lock measures the
front against the reference (search/paired.py) and records the results as a study attribute;
a worker that finds them recorded for the same front reuses them. The lock is a file lock next
to a SQLite or journal study, and a PostgreSQL advisory lock for a PostgreSQL study (Optuna's
storages have no compare-and-set of their own).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from archgen.search.paired import PairedResult
from archgen.search.report import Certified

CERTIFICATION = "archgen:certification"


@contextlib.contextmanager
def study_lock(storage: optuna.storages.BaseStorage, url: str, name: str) -> Iterator[None]:
    """Mutual exclusion among the workers of study ``name`` (on every machine sharing it)."""
    if url.startswith("postgresql"):
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        engine = storage.engine  # type: ignore[attr-defined]
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return
    from filelock import FileLock

    path = Path(url.removeprefix("journal://").removeprefix("sqlite:///"))
    with FileLock(path.with_name(f"{path.name}.{_safe(name)}.lock")):
        yield


def _safe(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:12]


def certify(
    study: optuna.Study,
    fronts: Sequence[Sequence[FrozenTrial]],
    *,
    measure: Callable[[Sequence[FrozenTrial]], list[PairedResult]],
    predicted: Callable[[FrozenTrial], float],
    limit: Callable[[], float | None],
    seconds: Callable[[float], float | None],
    allowance: Callable[[PairedResult], float] = lambda result: 0.0,
    on_front: Callable[[int, Sequence[FrozenTrial]], None] = lambda rank, front: None,
) -> tuple[list[Certified], bool]:
    """The certified models (measured now, or as recorded by the worker that certified them
    first) and whether this call measured them.

    ``fronts`` are the study's successive Pareto fronts (study.pareto_fronts). The first is
    measured; when none of its models is within budget, the next is, and so on: a front of
    near-budget models that all measure a little over (the machine's state at the end differs
    from during the study) no longer leaves the search without a winner while slower-ranked
    feasible models were never tried. ``limit`` is read after each measurement: it may have
    moved the reference's calibration, and with it an absolute budget. A model is within
    budget when its ratio, raised by ``allowance`` (what a measurement taken at fallback
    threads may be off by), fits."""
    first = [t.number for t in fronts[0]] if fronts else []
    recorded = study.user_attrs.get(CERTIFICATION)
    if recorded is not None and recorded["front"] == first:
        return [Certified(**c) for c in recorded["certified"]], False
    certified: list[Certified] = []
    results: list[PairedResult] = []
    for rank, front in enumerate(fronts, start=1):
        if not front:
            break
        on_front(rank, front)
        measured = measure(front)
        bound = limit()
        rows = [
            Certified(
                number=t.number,
                params=dict(t.params),
                quality=t.values[0],
                predicted_ratio=predicted(t),
                measured_ratio=r.ratio,
                predicted_s=seconds(predicted(t)),
                measured_s=seconds(r.ratio),
                within_budget=bound is None or r.ratio * (1 + allowance(r)) <= bound,
                front=rank,
            )
            for t, r in zip(front, measured, strict=True)
        ]
        certified += rows
        results += measured
        if any(c.within_budget for c in rows):
            break
    study.set_user_attr(
        CERTIFICATION,
        {
            "front": first,
            "certified": [asdict(c) for c in certified],
            "measurements": [r.to_json() for r in results],
        },
    )
    return certified, True


def choose(certified: Sequence[Certified]) -> Certified | None:
    """The best certified model within budget: highest quality, then fastest, then lowest
    trial number (so every worker breaks ties alike)."""
    ok = [c for c in certified if c.within_budget]
    return max(ok, key=lambda c: (c.quality, -c.measured_ratio, -c.number)) if ok else None
