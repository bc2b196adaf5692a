"""Byte-level BPE tokenizers: exact round trips, deterministic cached training, exact bits per
byte, the spec's data.tokenizer rules, and distillation through the teacher's tokenizer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from archgen import training
from archgen.backends.torch_model import build_model
from archgen.errors import ArchgenError
from archgen.spec.errors import SpecError
from archgen.spec.loader import parse_spec
from archgen.spec.training import data_source
from archgen.train import tokenizer as tokmod
from archgen.train.config import TextData, TokenizerConfig, TrainConfig
from archgen.train.data import load_data
from archgen.train.loop import evaluate
from archgen.train.tokenizer import TextTokenizer, train_bpe
from tests.train.conftest import tiny_graph

BPE = TokenizerConfig(vocab_size=300)


def _text(i: int = 0) -> str:
    return "".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}  # café ✓\n" for j in range(12))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """~12 KB in 25 documents, one of them not UTF-8."""
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(24):
        (root / f"m{i}.py").write_text(_text(i))
    (root / "raw.bin").write_bytes(b"\xff\xfe latin-1 caf\xe9 \xc3\n" * 20)
    return root


@pytest.fixture
def trained() -> TextTokenizer:
    return train_bpe("".join(_text(i) for i in range(10)).encode(), BPE)


def test_every_byte_string_round_trips(trained: TextTokenizer) -> None:
    assert trained.vocab_size == 300 and len(trained.pieces) <= 300
    for data in [
        b"",
        b"def f(x):\n",
        "café ✓ ünï".encode(),
        b"\xff\x00\xc3 bad \x80",
        bytes(range(256)),
    ]:
        ids = trained.encode(data)
        assert ids.dtype == np.uint16 and trained.decode(ids) == data
        assert int(trained.piece_lengths[ids.astype(np.int64)].sum()) == len(data)
    assert len(trained.encode(b"    return x * 1")) < len(b"    return x * 1")  # merges happen


def test_training_is_deterministic_and_a_saved_file_reloads_alike(
    trained: TextTokenizer, tmp_path: Path
) -> None:
    again = train_bpe("".join(_text(i) for i in range(10)).encode(), BPE)
    assert again.digest == trained.digest
    trained.save(tmp_path / "tokenizer.json")
    loaded = TextTokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.digest == trained.digest
    sample = _text(3).encode()
    assert np.array_equal(loaded.encode(sample), trained.encode(sample))


def test_a_tokenizer_that_is_not_byte_level_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models

    word = Tokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    (tmp_path / "w.json").write_text(word.to_str())
    with pytest.raises(ArchgenError, match="byte value"):
        TextTokenizer.load(tmp_path / "w.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ArchgenError, match=r"not a tokenizer\.json"):
        TextTokenizer.load(tmp_path / "bad.json")


def test_tokenize_caches_by_content(folder: Path, tmp_path: Path, monkeypatch) -> None:
    source = TextData(paths=(str(folder),), tokenizer=BPE)
    first = load_data(source, vocab_size=300, seq_len=16, cache=tmp_path / "cache")
    assert first.tokenizer is not None and int(first.train.max()) < 300
    assert "BPE of 300 ids" in first.describe()
    assert len(list((tmp_path / "cache").iterdir())) == 1

    def no_training(*_: object) -> None:
        raise AssertionError("retrained")

    monkeypatch.setattr(tokmod, "train_bpe", no_training)
    second = load_data(source, vocab_size=300, seq_len=16, cache=tmp_path / "cache")
    assert np.array_equal(second.train, first.train) and np.array_equal(second.val, first.val)
    assert second.tokenizer is not None and second.tokenizer.digest == first.tokenizer.digest
    assert second.fingerprint == first.fingerprint


def test_bits_per_byte_count_the_bytes_the_targets_cover(folder: Path) -> None:
    text = load_data(TextData(paths=(str(folder),)), vocab_size=300, seq_len=16)
    bpe = load_data(TextData(paths=(str(folder),), tokenizer=BPE), vocab_size=300, seq_len=16)
    assert bpe.tokenizer is not None and len(bpe.val) < len(text.val)
    # The exact count: each target id's piece, decoded.
    batches = bpe.val_batches(batches=2, batch_size=3, seq_len=16)
    targets = np.concatenate([b.targets[b.mask] for b in batches])
    assert bpe.bytes_covered(targets) == len(bpe.tokenizer.decode(targets))
    assert text.bytes_covered(targets[:10]) == 10  # byte-level: one byte per token
    model = build_model(tiny_graph(vocab=300), seed=0)
    config = TrainConfig(batch_size=3, seq_len=16, eval_batches=2)
    record = evaluate(model, batches, bpe, config, torch.device("cpu"))
    nats = record["loss"] * targets.size
    assert record["bpb"] == pytest.approx(nats / math.log(2) / bpe.bytes_covered(targets))


MODEL = """model:
  name: tiny
  task: {task}
  vocab_size: {vocab}
  d_model: 16
  max_seq_len: 64
  layers:
    - token_mixer: {{kind: attention, heads: 2}}
      channel_mixer: {{kind: swiglu}}
"""


def _spec(
    tmp_path: Path, folder: Path, vocab: int, tokenizer: str, *, diffusion: bool = False
) -> Path:
    task = "masked-diffusion-lm" if diffusion else "causal-lm"
    text = MODEL.format(task=task, vocab=vocab)
    text += f"data: {{kind: text, paths: [{folder}], tokenizer: {tokenizer}}}\n"
    text += "train: {steps: 2, batch_size: 2, seq_len: 16, eval_interval: 2, eval_batches: 1}\n"
    path = tmp_path / f"m{vocab}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{kind: bpe}", "data.tokenizer: kind bpe needs vocab_size"),
        (
            "{kind: bpe, vocab_size: 300, path: t.json}",
            "kind bpe needs vocab_size and takes no path",
        ),
        ("{kind: file, vocab_size: 300}", "kind file needs path"),
        ("{kind: bpe, vocab_size: 100}", "data.tokenizer.vocab_size: must be >= 256"),
        ("{kind: bpe, vocab_sise: 300}", "data.tokenizer.vocab_sise: unknown key"),
    ],
)
def test_tokenizer_mistakes_name_the_field(section: str, message: str) -> None:
    with pytest.raises(SpecError, match=r"s.yaml:\d+:\d+") as info:
        parse_spec(MODEL.format(task="causal-lm", vocab=300)
                   + f"data: {{kind: text, tokenizer: {section}}}\n", "s.yaml")  # fmt: skip
    assert message in str(info.value)


def test_the_section_becomes_a_typed_config() -> None:
    spec = parse_spec(
        MODEL.format(task="causal-lm", vocab=300)
        + "data: {kind: text, tokenizer: {kind: bpe, vocab_size: 300, min_frequency: 3}}\n"
    )
    assert data_source(spec.data) == TextData(
        tokenizer=TokenizerConfig(vocab_size=300, min_frequency=3)
    )


def test_model_vocab_size_must_match_the_tokenizer(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ArchgenError, match=r"m256.yaml:4:\d+: model.vocab_size: 256 does not fit "
                       r"the tokenizer's 300 token ids: it must be exactly 300"):  # fmt: skip
        training.prepare(_spec(tmp_path, folder, 256, "{kind: bpe, vocab_size: 300}"))
    # A masked-diffusion LM keeps its last id for the mask: one more than the tokenizer's.
    with pytest.raises(
        ArchgenError, match="300 token ids and the mask token: it must be exactly 301"
    ):
        training.prepare(
            _spec(tmp_path, folder, 300, "{kind: bpe, vocab_size: 300}", diffusion=True)
        )
    ok = training.prepare(
        _spec(tmp_path, folder, 301, "{kind: bpe, vocab_size: 300}", diffusion=True)
    )
    assert ok.data.tokenizer is not None and int(ok.data.train.max()) < 300
    # A loaded file may leave padding rows.
    file = tmp_path / "tok.json"
    train_bpe(_text().encode(), BPE).save(file)
    padded = training.prepare(_spec(tmp_path, folder, 320, f"{{kind: file, path: {file}}}"))
    assert padded.data.tokenizer is not None and padded.data.tokenizer.vocab_size <= 300


def test_distillation_reads_text_through_the_teachers_tokenizer(
    folder: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("ARCHGEN_CACHE", str(tmp_path / "cache"))
    spec = _spec(tmp_path, folder, 300, "{kind: bpe, vocab_size: 300}")
    log: list[str] = []
    training.train(spec, out=tmp_path / "teacher", progress=False, log=log.append)
    saved = TextTokenizer.load(tmp_path / "teacher" / "tokenizer.json")
    assert (
        "tokenizer.json"
        in json.loads((tmp_path / "teacher" / "manifest.json").read_text())["files"]
    )
    training.distill(spec, tmp_path / "teacher", out=tmp_path / "student", progress=False,
                     log=log.append)  # fmt: skip
    assert TextTokenizer.load(tmp_path / "student" / "tokenizer.json").digest == saved.digest
    byte_student = tmp_path / "bytes.yaml"
    byte_student.write_text(MODEL.format(task="causal-lm", vocab=300)
                            + f"data: {{kind: text, paths: [{folder}]}}\n")  # fmt: skip
    with pytest.raises(ArchgenError, match="byte-level"):
        training.distill(byte_student, tmp_path / "teacher", out=tmp_path / "s2",
                         options=training.TrainOptions(steps=1, seq_len=16, batch_size=2),
                         progress=False, log=log.append)  # fmt: skip


def test_the_bpe_example_checks() -> None:
    # examples/tokenizers/ stays out of the every-example matrix (it is the transformer with
    # another vocabulary); this keeps it a valid spec
    from archgen import api
    from tests.conftest import ROOT

    report = api.check(ROOT / "examples" / "tokenizers" / "transformer-bpe.yaml")
    assert report.graph.model.vocab_size == 1024
