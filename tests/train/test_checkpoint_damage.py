"""Damaged checkpoints (truncated copies, a full disk): --resume continues from the newest
intact one with a note; nothing damaged is loaded half-way; the clock continues."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archgen.errors import ArchgenError
from archgen.train.checkpoint import latest_checkpoint
from archgen.train.config import TrainConfig
from archgen.train.loop import train
from tests.train.conftest import tiny_graph


def _config(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=2, seq_len=16, warmup_steps=1, eval_interval=2,
                       eval_batches=1, checkpoint_interval=2, keep_checkpoints=2)  # fmt: skip


def _truncate(path: Path, size: int = 300) -> None:
    path.write_bytes(path.read_bytes()[:size])


@pytest.mark.parametrize("damaged", ["state.pt", "weights.safetensors"])
def test_resume_skips_a_truncated_latest_checkpoint(tmp_path, corpus, damaged: str) -> None:
    graph, run = tiny_graph(), tmp_path / "run"
    train(graph, corpus, _config(4), run, progress=False, log=lambda m: None)
    latest = latest_checkpoint(run / "checkpoints")
    assert latest is not None and latest.step == 4
    _truncate(latest.path / damaged)
    notes: list[str] = []
    result = train(graph, corpus, _config(6), run, resume=True, progress=False, log=notes.append)
    assert result.trained_steps == 4  # steps 2..6: from the intact step-2 checkpoint
    skipped = [n for n in notes if "skipped damaged checkpoint" in n]
    assert skipped and damaged in skipped[0] and "step 2" in skipped[0], notes
    assert latest_checkpoint(run / "checkpoints").step == 6


def test_resume_with_every_checkpoint_damaged_is_a_clear_error(tmp_path, corpus) -> None:
    graph, run = tiny_graph(), tmp_path / "run"
    train(graph, corpus, _config(4), run, progress=False, log=lambda m: None)
    for folder in (run / "checkpoints").glob("step_*"):
        _truncate(folder / "state.pt")
    with pytest.raises(ArchgenError, match="no intact checkpoint") as info:
        train(graph, corpus, _config(6), run, resume=True, progress=False, log=lambda m: None)
    assert "step_0000004/state.pt" in str(info.value) and "step_0000002/state.pt" in str(info.value)


def test_elapsed_time_continues_after_resume(tmp_path, corpus) -> None:
    graph, run = tiny_graph(), tmp_path / "run"
    train(graph, corpus, _config(4), run, progress=False, log=lambda m: None)
    saved = latest_checkpoint(run / "checkpoints")
    assert saved is not None
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    before = max(r["elapsed_s"] for r in records if r["kind"] == "train")
    train(graph, corpus, _config(6), run, resume=True, progress=False, log=lambda m: None)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    after = [r["elapsed_s"] for r in records if r["kind"] == "train" and r["step"] > 4]
    assert after and min(after) > before * 0.99  # not restarted at 0
