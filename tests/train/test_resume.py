"""The training loop: a run killed and resumed ends bit-for-bit where an uninterrupted run ends;
checkpoints survive a kill; the schedule; run-folder contents and mistakes."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from archgen.errors import ArchgenError
from archgen.train.checkpoint import latest_checkpoint
from archgen.train.config import TrainConfig
from archgen.train.loop import train
from tests.train.conftest import tiny_graph


class Killed(Exception):
    pass


def _config(**overrides: object) -> TrainConfig:
    base = dict(steps=7, batch_size=4, seq_len=32, warmup_steps=2, eval_interval=3,
                eval_batches=1, checkpoint_interval=2, log_interval=1)  # fmt: skip
    return TrainConfig(**{**base, **overrides})  # type: ignore[arg-type]


def _kill_at(step: int):
    def hook(done: int, loss: float) -> None:
        if done == step:
            raise Killed

    return hook


def _optimizer_state(run) -> dict:
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt is not None
    return torch.load(ckpt.path / "state.pt", weights_only=True)["optimizer"]


@pytest.mark.parametrize("bf16", [False, True])
def test_resumed_run_equals_uninterrupted_run(tmp_path, corpus, bf16: bool) -> None:
    graph, cfg = tiny_graph(), _config(bf16=bf16)
    full = train(graph, corpus, cfg, tmp_path / "full", progress=False, log=lambda m: None)
    part = tmp_path / "part"
    # Killed after step 5, whose work is lost: the last checkpoint is step 4.
    with pytest.raises(Killed):
        train(graph, corpus, cfg, part, progress=False, on_step=_kill_at(5), log=lambda m: None)
    assert latest_checkpoint(part / "checkpoints").step == 4
    assert not (part / "weights.safetensors").exists()
    resumed = train(graph, corpus, cfg, part, resume=True, progress=False, log=lambda m: None)
    assert resumed.trained_steps == 3 and full.trained_steps == 7

    a, b = (
        load_file(tmp_path / "full" / "weights.safetensors"),
        load_file(part / "weights.safetensors"),
    )
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    opt_a, opt_b = _optimizer_state(tmp_path / "full"), _optimizer_state(part)
    assert opt_a["param_groups"] == opt_b["param_groups"]
    for idx, state in opt_a["state"].items():
        for key, value in state.items():
            assert torch.equal(value, opt_b["state"][idx][key]), (idx, key)

    # the resumed log reads like the uninterrupted one (same records, same values)
    def records(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [(r["kind"], r["step"], r["loss"]) for r in map(json.loads, lines)]

    assert records(tmp_path / "full") == records(part)


def test_resuming_a_finished_run_trains_nothing(tmp_path, corpus) -> None:
    graph, cfg = tiny_graph(), _config(steps=2)
    train(graph, corpus, cfg, tmp_path, progress=False, log=lambda m: None)
    again = train(graph, corpus, cfg, tmp_path, resume=True, progress=False, log=lambda m: None)
    assert again.trained_steps == 0


def test_a_killed_checkpoint_write_leaves_the_previous_one(tmp_path, corpus) -> None:
    graph, cfg = tiny_graph(), _config(steps=4)
    with pytest.raises(Killed):
        train(graph, corpus, cfg, tmp_path, progress=False, on_step=_kill_at(3), log=lambda m: None)
    root = tmp_path / "checkpoints"
    # what a kill in the middle of writing step 4 leaves: a staging folder, latest unchanged
    staging = root / ".step_0000004.abc"
    staging.mkdir()
    (staging / "weights.safetensors").write_bytes(b"half a file")
    assert latest_checkpoint(root).step == 2
    result = train(graph, corpus, cfg, tmp_path, resume=True, progress=False, log=lambda m: None)
    assert result.trained_steps == 2
    assert not staging.exists()
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000002", "step_0000004"]


def test_existing_run_needs_resume_and_the_same_options(tmp_path, corpus) -> None:
    graph, cfg = tiny_graph(), _config(steps=2)
    train(graph, corpus, cfg, tmp_path, progress=False, log=lambda m: None)
    with pytest.raises(ArchgenError, match="already holds a run"):
        train(graph, corpus, cfg, tmp_path, progress=False, log=lambda m: None)
    with pytest.raises(ArchgenError, match=r"train\.lr"):
        train(graph, corpus, _config(steps=2, lr=1e-4), tmp_path, resume=True, progress=False)
    with pytest.raises(ArchgenError, match=r"different (model|params)"):
        train(tiny_graph(d_model=32), corpus, cfg, tmp_path, resume=True, progress=False)


def test_run_folder_has_weights_log_plot_and_falling_loss(tmp_path, corpus) -> None:
    graph = tiny_graph(d_model=32)
    result = train(graph, corpus, _config(steps=30, lr=1e-2, eval_interval=10), tmp_path,
                   progress=False, log=lambda m: None)  # fmt: skip
    for name in ("weights.safetensors", "metrics.jsonl", "loss.png", "config.json"):
        assert (tmp_path / name).is_file(), name
    vals = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in vals if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [0, 10, 20, 30]
    # bits per byte are the loss in bits, per byte token; an untrained model is near 8 bits
    for r in vals:
        assert r["bpb"] == pytest.approx(r["loss"] / math.log(2))
    assert 7.0 < vals[0]["bpb"] < 9.0
    assert result.final["loss"] < result.first["loss"] - 0.5
    with open(tmp_path / "loss.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [cfg.lr_at(s) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[100] == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine


def test_config_bounds_are_errors() -> None:
    with pytest.raises(ArchgenError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ArchgenError, match="lr"):
        TrainConfig(lr=float("nan"))
