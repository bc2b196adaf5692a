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


# the distillation objective's terms in train records (train/distill.py), as the plot names them
DISTILL_TERMS = {"kd": "KD term (KL to the teacher)", "feature": "feature term (block outputs)"}


def _steps(records: list[dict[str, Any]]) -> list[int]:
    return [r["step"] for r in records]


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
    # A distillation's training loss is its objective (KD + feature terms), not a cross-entropy:
    # it gets its own panel, and only its CE term (if any) shares the cross-entropy axis.
    distilled = any(part in r for r in train for part in DISTILL_TERMS)
    panels = 1 + distilled + has_second
    fig, grid = plt.subplots(1, panels, figsize=(5.5 * panels + 0.5, 4), squeeze=False)
    axes = list(grid[0])
    ax = axes.pop(0)
    if distilled:
        ce = [r for r in train if "ce" in r]
        if ce:
            ax.plot(_steps(ce), [r["ce"] for r in ce], label="train (CE term)", lw=1)
    else:
        ax.plot(_steps(train), [r["loss"] for r in train], label="train", lw=1)
    ax.plot(_steps(val), [r["loss"] for r in val], "o-", label="validation", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    if distilled:
        objective = axes.pop(0)
        objective.plot(_steps(train), [r["loss"] for r in train], label="total (weighted)", lw=1)
        for part, label in DISTILL_TERMS.items():
            rows = [r for r in train if part in r]
            if rows:
                objective.plot(_steps(rows), [r[part] for r in rows], label=label, lw=1)
        objective.set_xlabel("step")
        objective.set_ylabel("distillation objective (train)")
        objective.legend()
        objective.grid(alpha=0.3)
    if has_second:
        pts = [(r["step"], r[second]) for r in val if second in r and math.isfinite(r[second])]
        axes[0].plot(*zip(*pts, strict=True), "o-", color="C1", ms=3)
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("validation bits per byte" if second == "bpb" else "answer accuracy")
        axes[0].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return True
