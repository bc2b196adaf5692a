"""Blockwise local distillation: the score table, teacher-initialised alternatives, and a
cache that makes the second call train nothing."""

from __future__ import annotations

import pytest
import torch

from archgen.backends.torch_model import build_model
from archgen.errors import ArchgenError
from archgen.ir.ops import Attention, SlidingWindowAttention
from archgen.train.blockwise import blockwise_scores
from archgen.train.config import TrainConfig
from tests.train.conftest import tiny_graph


def test_table_and_cache(tmp_path, corpus, count_steps) -> None:
    graph = tiny_graph(layers=2)
    teacher = build_model(graph, seed=1)
    own = graph.node("layers.0.token_mixer").op
    assert isinstance(own, Attention)
    swa = SlidingWindowAttention(d_model=16, heads=2, window=4)
    choices = {
        "layers.0.token_mixer": {"same": own, "swa4": swa},
        "layers.1.token_mixer": {"swa4": swa},
    }
    config = TrainConfig(steps=15, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2,
                         eval_batches=2)  # fmt: skip
    log: list[str] = []
    table = blockwise_scores(teacher, choices, corpus, config, cache_dir=tmp_path, log=log.append)
    assert count_steps["n"] == 3 * 15 == table.optimizer_steps
    assert [(r.node, r.label) for r in table.rows] == [
        ("layers.0.token_mixer", "same"),
        ("layers.0.token_mixer", "swa4"),
        ("layers.1.token_mixer", "swa4"),
    ]
    same, swa0 = (
        table.get("layers.0.token_mixer", "same"),
        table.get("layers.0.token_mixer", "swa4"),
    )
    # the teacher's own op, initialised from the teacher, reproduces the block exactly at init
    assert same.normalized_at_init == 0.0
    assert swa0.normalized_at_init > 1e-4  # a 4-token window cannot see what attention sees
    assert swa0.normalized < swa0.normalized_at_init  # training helps
    # swa shares every tensor name and shape with attention: the whole block comes from the teacher
    block_tensors = [k for k in teacher.state_dict() if k.startswith("layers.0.")]
    assert swa0.from_teacher == len(block_tensors)
    assert set(table.scores()) == {(r.node, r.label) for r in table.rows}

    count_steps["n"] = 0
    again = blockwise_scores(teacher, choices, corpus, config, cache_dir=tmp_path)
    assert count_steps["n"] == 0 and again.optimizer_steps == 0
    assert all(r.cached for r in again.rows)
    assert again.scores() == table.scores()

    # a new alternative is the only job trained; other weights of the teacher are a cache miss
    more = {"layers.1.token_mixer": {"swa4": swa, "swa2": SlidingWindowAttention(
        d_model=16, heads=2, window=2)}}  # fmt: skip
    blockwise_scores(teacher, more, corpus, config, cache_dir=tmp_path)
    assert count_steps["n"] == 15
    other_teacher = build_model(graph, seed=2)
    count_steps["n"] = 0
    blockwise_scores(other_teacher, more, corpus, config, cache_dir=tmp_path)
    assert count_steps["n"] == 2 * 15


def test_bad_alternatives_are_clear_errors(corpus) -> None:
    teacher = build_model(tiny_graph(), seed=0)
    config = TrainConfig(steps=1, batch_size=2, seq_len=16, eval_batches=1)
    with pytest.raises(ArchgenError, match="no node"):
        blockwise_scores(teacher, {"layers.9.token_mixer": {}}, corpus, config)
    wide = SlidingWindowAttention(d_model=32, heads=2, window=4)
    with pytest.raises(ArchgenError, match="d_model 32"):
        blockwise_scores(teacher, {"layers.0.token_mixer": {"wide": wide}}, corpus, config)


def test_cache_holds_the_trained_block_weights(tmp_path, corpus, count_steps) -> None:
    from archgen.train.blockwise import block_weights

    graph = tiny_graph(layers=2)
    teacher = build_model(graph, seed=1)
    swa = SlidingWindowAttention(d_model=16, heads=2, window=4)
    choices = {"layers.1.token_mixer": {"swa4": swa}}
    config = TrainConfig(steps=3, batch_size=4, seq_len=32, warmup_steps=1, eval_batches=1)
    first = block_weights(teacher, choices, corpus, config, cache_dir=tmp_path, log=lambda m: None)
    assert count_steps["n"] == 3
    block = first["layers.1.token_mixer", "swa4"]
    # the whole block, named as in the model; the untouched layer is not in it
    assert set(block) == {k for k in teacher.state_dict() if k.startswith("layers.1.")}
    again = block_weights(teacher, choices, corpus, config, cache_dir=tmp_path)
    assert count_steps["n"] == 3  # read back, not retrained
    for name, tensor in block.items():
        assert torch.equal(again["layers.1.token_mixer", "swa4"][name], tensor)
    # a score without its weights (a cache from before they were kept) is trained again
    for weights in tmp_path.glob("*.safetensors"):
        weights.unlink()
    block_weights(teacher, choices, corpus, config, cache_dir=tmp_path)
    assert count_steps["n"] == 6


def test_long_blockwise_runs_report_progress(monkeypatch) -> None:
    from archgen.train import blockwise

    now = [0.0]
    monkeypatch.setattr(blockwise.time, "monotonic", lambda: now[0])
    lines: list[str] = []
    progress = blockwise._Progress(100, lines.append, every_s=30.0)
    for step in range(100):
        now[0] = step * 1.0  # one second per step
        progress.tick(step)
    assert lines[0] == "blockwise distillation: step 30/100, 30 s, about 70 s left"
    assert len(lines) == 3  # steps 30, 60, 90: one line per 30 s, none at step 0
