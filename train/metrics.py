"""The metrics log (JSON Lines, one record per line) and the loss-curve plot.

Records are ``{"kind": "train", "step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"}``
and ``{"kind": "val", "step", "loss", ["bpb"], ["accuracy"]}``, where ``step`` counts completed
optimizer steps (a validation at step 0 is the untrained model).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from archgen.atomic import write_atomic, write_text_atomic


class MetricsLog:
    """Append-only JSONL log. Reopening for a resumed run drops records past the checkpoint, so
    the log of a resumed run reads like the log of an uninterrupted one."""

    def __init__(self, path: Path, *, keep_until: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until is None:
            path.write_text("")
        else:
            kept = [r for r in read_metrics(path) if r["step"] <= keep_until]
            # Atomic: a kill while the kept records are rewritten must not lose all of them.
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill: everything before it is intact
    return records


def plot_curves(records: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Write the loss curves (and bits per byte or accuracy) as a PNG; False if matplotlib is
    missing (it is an optional dependency: ``pip install archgen[train]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed; also safe in threads
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    second = "bpb" if any("bpb" in r for r in val) else "accuracy"
    has_second = any(second in r for r in val)
    fig, axes = plt.subplots(1, 2 if has_second else 1, figsize=(11 if has_second else 6, 4))
    ax = axes[0] if has_second else axes
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=1)
    ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="validation", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    if has_second:
        pts = [(r["step"], r[second]) for r in val if second in r and math.isfinite(r[second])]
        axes[1].plot(*zip(*pts, strict=True), "o-", color="C1", ms=3)
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("validation bits per byte" if second == "bpb" else "answer accuracy")
        axes[1].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return True
