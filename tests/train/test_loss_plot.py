"""loss.png labels what it draws: a distillation's objective is not a cross-entropy (issue 16
item 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")


def _drawn(records: list[dict[str, Any]], tmp_path: Path, monkeypatch) -> list[tuple[str, list]]:
    """(y label, line labels) of each panel plot_curves draws."""
    from matplotlib.figure import Figure

    from archgen.train.metrics import plot_curves

    panels: list[tuple[str, list]] = []
    real = Figure.savefig

    def savefig(fig: Figure, *args: Any, **kwargs: Any) -> None:
        panels.extend((ax.get_ylabel(), [ln.get_label() for ln in ax.lines]) for ax in fig.axes)
        real(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    assert plot_curves(records, tmp_path / "loss.png", "t")
    assert (tmp_path / "loss.png").stat().st_size > 0
    return panels


VAL = [{"kind": "val", "step": s, "loss": 3.0 - s / 10, "bpb": 4.0 - s / 10} for s in (0, 5)]


def test_a_training_run_draws_train_and_validation_cross_entropy(tmp_path, monkeypatch) -> None:
    train = [{"kind": "train", "step": s, "loss": 3.0 - s / 10} for s in (1, 5)]
    panels = _drawn(train + VAL, tmp_path, monkeypatch)
    assert panels[0] == ("cross-entropy (nats)", ["train", "validation"])
    assert panels[1][0] == "validation bits per byte"


def test_a_distillation_draws_its_objective_on_its_own_axis(tmp_path, monkeypatch) -> None:
    train = [
        {"kind": "train", "step": s, "loss": 9.0, "kd": 5.0, "feature": 4.0, "ce": 3.5}
        for s in (1, 5)
    ]
    panels = _drawn(train + VAL, tmp_path, monkeypatch)
    assert panels[0] == ("cross-entropy (nats)", ["train (CE term)", "validation"])
    assert panels[1] == (
        "distillation objective (train)",
        ["total (weighted)", "KD term (KL to the teacher)", "feature term (block outputs)"],
    )
    assert panels[2][0] == "validation bits per byte"
    # without a CE term, nothing of the objective is drawn as cross-entropy
    no_ce = [{k: v for k, v in r.items() if k != "ce"} for r in train]
    assert _drawn(no_ce + VAL, tmp_path, monkeypatch)[0] == ("cross-entropy (nats)", ["validation"])
