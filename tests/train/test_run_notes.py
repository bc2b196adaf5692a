"""Small surprises of a training run made visible or fixed (issue 16 item 8): a run that is all
warm-up says so; the validation set is a function of the data alone; manifests record
absolute paths; a sliding window longer than any sequence is a spec warning at its line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from archgen import api, training
from archgen.backends.weights import weights_file
from archgen.spec.expand import spec_from_graph
from archgen.spec.loader import load_spec_with_warnings, parse_spec_with_warnings
from archgen.train.config import TrainConfig
from archgen.train.loop import train
from tests.conftest import archgen
from tests.train.conftest import tiny_graph


def _config(**overrides: object) -> TrainConfig:
    base = dict(steps=2, batch_size=2, seq_len=16, eval_interval=2, eval_batches=1)
    return TrainConfig(**{**base, **overrides})  # type: ignore[arg-type]


def test_a_run_shorter_than_its_warm_up_says_so(tmp_path, corpus) -> None:
    notes: list[str] = []
    train(tiny_graph(), corpus, _config(warmup_steps=20), tmp_path / "a", progress=False,
          log=notes.append)  # fmt: skip
    assert any("all 2 steps are warm-up (train.warmup_steps 20)" in n for n in notes), notes
    notes.clear()
    train(tiny_graph(), corpus, _config(warmup_steps=1), tmp_path / "b", progress=False,
          log=notes.append)  # fmt: skip
    assert not any("warm-up" in n for n in notes)


def test_validation_set_depends_on_the_data_only(corpus) -> None:
    # Two runs (any seed, any time) evaluate on the same windows: their numbers compare.
    a = corpus.val_batches(batches=2, batch_size=3, seq_len=16)
    b = corpus.val_batches(batches=2, batch_size=3, seq_len=16)
    assert all((x.inputs == y.inputs).all() for x, y in zip(a, b, strict=True))


def test_run_manifest_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.safetensors").write_bytes(b"")
    assert weights_file("m") == tmp_path / "m" / "weights.safetensors"
    assert weights_file(Path("m") / "weights.safetensors").is_absolute()


def test_distill_manifest_records_the_teacher_absolutely(
    tmp_path: Path, corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    graph = tiny_graph()
    train(graph, corpus, _config(), "teacher", progress=False, log=lambda m: None)
    training.write_run_files(
        spec_from_graph(graph), graph, corpus.source, _config(), Path("teacher"), {}
    )
    training.distill_graph(graph, "teacher", corpus, _config(), "student", progress=False,
                           log=lambda m: None)  # fmt: skip
    manifest = json.loads((tmp_path / "student" / "manifest.json").read_text())
    assert manifest["teacher"] == os.path.join(tmp_path, "teacher")


SWA = """\
model:
  name: tiny
  vocab_size: 256
  d_model: 16
  max_seq_len: 64
  layers:
    - token_mixer: {{kind: swa, heads: 2{window}}}
"""


def test_a_window_longer_than_max_seq_len_is_a_warning_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SWA.format(window=", window: 128"))
    expected = (
        f"{path}:7:50: model.layers[0].token_mixer.window: window 128 exceeds model.max_seq_len "
        "64: every query sees every key, as in kind: attention (lower the window, or raise "
        "max_seq_len)"
    )
    assert [str(w) for w in load_spec_with_warnings(path)[1]] == [expected]
    assert api.check(path).warnings == (expected,)
    result = archgen("check", str(path))
    assert result.returncode == 0 and f"warning: {expected}" in result.stderr
    for window in (", window: 64", "", ", window: 256"):
        # The default (256) on a short model, as resolved spec.yaml files write it: no warning.
        assert parse_spec_with_warnings(SWA.format(window=window))[1] == []
