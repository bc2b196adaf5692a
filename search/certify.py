"""Certification: the Pareto models measured end to end, together with the reference, once per
study, and recorded in the study so that every worker names the same winner.

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
    front: Sequence[FrozenTrial],
    *,
    measure: Callable[[Sequence[FrozenTrial]], list[PairedResult]],
    predicted: Callable[[FrozenTrial], float],
    limit: Callable[[], float | None],
    seconds: Callable[[float], float | None],
    allowance: Callable[[PairedResult], float] = lambda result: 0.0,
) -> tuple[list[Certified], bool]:
    """The certified front (measured now, or as recorded by the worker that certified it
    first) and whether this call measured it. ``limit`` is read after measuring: the
    measurement may have moved the reference's calibration, and with it an absolute budget.
    A model is within budget when its ratio, raised by ``allowance`` (what a measurement
    taken at fallback threads may be off by), fits."""
    numbers = [t.number for t in front]
    recorded = study.user_attrs.get(CERTIFICATION)
    if recorded is not None and recorded["front"] == numbers:
        return [Certified(**c) for c in recorded["certified"]], False
    results = measure(front) if front else []
    bound = limit()
    certified = [
        Certified(
            number=t.number,
            params=dict(t.params),
            quality=t.values[0],
            predicted_ratio=predicted(t),
            measured_ratio=r.ratio,
            predicted_s=seconds(predicted(t)),
            measured_s=seconds(r.ratio),
            within_budget=bound is None or r.ratio * (1 + allowance(r)) <= bound,
        )
        for t, r in zip(front, results, strict=True)
    ]
    study.set_user_attr(
        CERTIFICATION,
        {
            "front": numbers,
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
