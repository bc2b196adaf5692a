"""The spec's data:/train: sections and ``archgen train`` / ``archgen distill`` end to end."""

from __future__ import annotations

import json

import pytest

from archgen import training
from archgen.spec.errors import SpecError
from archgen.spec.loader import parse_spec
from archgen.spec.training import data_source, train_config
from archgen.train.config import TextData, TrainConfig
from archgen.train.tasks import NoisyRecall
from tests.conftest import archgen

MODEL = """model:
  name: tiny
  vocab_size: 256
  d_model: 16
  max_seq_len: 64
  layers:
    - token_mixer: {kind: attention, heads: 2}
      channel_mixer: {kind: swiglu}
"""


def test_sections_become_typed_configs() -> None:
    spec = parse_spec(
        MODEL
        + "data: {kind: noisy_recall, seq_len: 48, num_pairs: 5, noise_fraction: 0.5}\n"
        + "train: {steps: 12, lr: 1.0e-3, bf16: true}\n"
    )
    assert data_source(spec.data) == NoisyRecall(seq_len=48, num_pairs=5, noise_fraction=0.5)
    assert train_config(spec.train, steps=3) == TrainConfig(steps=3, lr=1e-3, bf16=True)
    bare = parse_spec(MODEL)
    assert data_source(bare.data) == TextData() and train_config(bare.train) == TrainConfig()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("train: {stpes: 3}", "train.stpes: unknown key 'stpes' (did you mean 'steps'?)"),
        ("train: {steps: 0}", "train.steps: must be >= 1"),
        ("train: {bf16: 1}", "train.bf16: expected true or false"),
        ("data: {kind: txt}", "data.kind: unknown data kind 'txt' (did you mean 'text'?)"),
        ("data: {kind: text, pathz: [a]}", "data.pathz: unknown key 'pathz'"),
        ("data: {kind: associative_recall, num_pairs: 0}", "data.num_pairs: must be >= 1"),
        ("data: {kind: tokens}", "data.train: missing required key"),
    ],
)
def test_section_mistakes_name_the_field(section: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(MODEL + section + "\n", "s.yaml")
    assert message in str(info.value)


def test_spec_data_paths_are_relative_to_the_spec(tmp_path) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("some text to train on. " * 40)
    (tmp_path / "m.yaml").write_text(MODEL + "data: {kind: text, paths: [corpus]}\n")
    prepared = training.prepare(tmp_path / "m.yaml", options=training.TrainOptions(seq_len=32))
    assert prepared.data.files == (str(tmp_path / "corpus" / "a.txt"),)


def test_seq_len_beyond_the_model_is_an_error(tmp_path) -> None:
    (tmp_path / "m.yaml").write_text(MODEL + "train: {seq_len: 65}\n")
    with pytest.raises(Exception, match=r"train\.seq_len 65 exceeds model\.max_seq_len 64"):
        training.prepare(tmp_path / "m.yaml")


def test_train_then_distill_from_the_command_line(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    spec = tmp_path / "m.yaml"
    spec.write_text(MODEL + "train: {batch_size: 4, seq_len: 32, eval_batches: 1}\n")
    run = tmp_path / "run"
    result = archgen("train", str(spec), "--data", str(corpus), "--steps", "3", "--out", str(run),
                     "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "trained 3 steps" in result.stdout and "bpb" in result.stdout
    for name in ("weights.safetensors", "spec.yaml", "manifest.json", "metrics.jsonl", "loss.png"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["steps"] == 3 and "bpb" in manifest["final"]
    student = tmp_path / "student.yaml"
    student.write_text(MODEL.replace("kind: attention, heads: 2", "kind: swa, heads: 2, window: 8"))
    result = archgen("distill", str(student), "--teacher", str(run), "--data", str(corpus),
                     "--steps", "2", "--seq-len", "32", "--out", str(tmp_path / "s"),
                     "--no-progress", "--dump-wiring")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "distilled 2 steps" in result.stdout
    # the pairing the distillation trains on, printed before it starts
    assert "tap layers.0: %layers.0.channel_residual" in result.stdout
    assert "loss kl_logits {weight=1.0, temperature=2.0}" in result.stdout


def test_bad_data_path_is_one_clear_error(tmp_path) -> None:
    spec = tmp_path / "m.yaml"
    spec.write_text(MODEL)
    result = archgen("train", str(spec), "--data", str(tmp_path / "nope.txt"), "--seq-len", "32")
    assert result.returncode == 2
    assert "not found" in result.stderr and "Traceback" not in result.stderr
