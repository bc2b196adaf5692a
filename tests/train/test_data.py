"""Data sources: deterministic splits, pure-function batches, token files, and clear errors
before any training."""

from __future__ import annotations

import numpy as np
import pytest

from archgen.errors import ArchgenError
from archgen.train.config import TextData, TokenData
from archgen.train.data import load_data, stdlib_dir, text_files
from archgen.train.tasks import AssociativeRecall


def _corpus(tmp_path, n: int = 30) -> list[bytes]:
    """``n`` documents, each made of one repeated letter (so every byte names its document)."""
    docs = []
    for i in range(n):
        doc = bytes([65 + i % 26]) * (200 + 37 * i) if i < 26 else bytes([97 + i - 26]) * 300
        (tmp_path / f"doc{i:02d}.txt").write_bytes(doc)
        docs.append(doc)
    return docs


def test_document_split_is_seeded_and_keeps_documents_whole(tmp_path) -> None:
    docs = _corpus(tmp_path)
    source = TextData(paths=(str(tmp_path),), split="document", val_fraction=0.2)
    a = load_data(source, vocab_size=256, seq_len=16)
    b = load_data(source, vocab_size=256, seq_len=16)
    assert np.array_equal(a.val, b.val) and np.array_equal(a.train, b.train)
    assert len(a.train) + len(a.val) == sum(len(d) for d in docs)
    # whole documents: a letter is either entirely in validation or entirely in training
    val_letters, train_letters = set(a.val.tolist()), set(a.train.tolist())
    assert val_letters and not (val_letters & train_letters)
    for letter in val_letters:
        assert (a.val == letter).sum() == sum(d.count(letter) for d in docs)
    assert len(a.val) >= 0.2 * (len(a.train) + len(a.val))
    other = load_data(
        TextData(paths=(str(tmp_path),), split="document", val_fraction=0.2, split_seed=1),
        vocab_size=256,
        seq_len=16,
    )
    assert set(other.val.tolist()) != val_letters


def test_blocks_split_of_one_file_holds_out_contiguous_blocks(tmp_path) -> None:
    text = bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8))
    (tmp_path / "one.txt").write_bytes(text)
    data = load_data(
        TextData(paths=(str(tmp_path / "one.txt"),), block_bytes=250, val_fraction=0.1),
        vocab_size=256,
        seq_len=32,
    )
    assert len(data.train) + len(data.val) == len(text)
    val = data.val.tobytes()
    assert len(val) == 500  # two blocks of 250
    assert val[:250] in text and val[250:] in text  # each block is a contiguous piece


def test_auto_split_uses_documents_when_there_are_many(tmp_path) -> None:
    _corpus(tmp_path, n=25)
    data = load_data(TextData(paths=(str(tmp_path),)), vocab_size=256, seq_len=16)
    # document split: validation letters never occur in training
    assert not set(data.val.tolist()) & set(data.train.tolist())


def test_globs_folders_and_include_pattern(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    (tmp_path / "sub" / "c.txt").write_text("z")
    by_glob = text_files(TextData(paths=(str(tmp_path / "**" / "*.py"),)))
    by_dir = text_files(TextData(paths=(str(tmp_path),), include="*.py"))
    expected = sorted([str(tmp_path / "a.py"), str(tmp_path / "sub" / "b.py")])
    assert by_glob == by_dir == expected


def test_builtin_corpus_is_the_stdlib_sources() -> None:
    files = text_files(TextData())
    assert len(files) > 100
    assert all(f.endswith(".py") and f.startswith(str(stdlib_dir())) for f in files)
    assert not any("site-packages" in f for f in files)


def test_train_batches_are_a_pure_function_of_seed_and_step(tmp_path) -> None:
    _corpus(tmp_path)
    data = load_data(TextData(paths=(str(tmp_path),)), vocab_size=256, seq_len=16)
    one = data.train_batch(seed=3, step=5, batch_size=4, seq_len=16)
    again = data.train_batch(seed=3, step=5, batch_size=4, seq_len=16)
    other = data.train_batch(seed=3, step=6, batch_size=4, seq_len=16)
    assert np.array_equal(one.inputs, again.inputs)
    assert not np.array_equal(one.inputs, other.inputs)
    assert np.array_equal(one.inputs[:, 1:], one.targets[:, :-1])  # next-byte targets
    assert one.mask.all()


def test_token_bin_and_npy_files(tmp_path) -> None:
    ids = np.arange(1000, dtype=np.uint16) % 500
    ids.tofile(tmp_path / "train.bin")
    np.save(tmp_path / "val.npy", ids[:100].astype(np.int32))
    data = load_data(
        TokenData(train=str(tmp_path / "train.bin"), val=str(tmp_path / "val.npy")),
        vocab_size=512,
        seq_len=20,
    )
    assert np.array_equal(np.asarray(data.train), ids)
    batch = data.train_batch(seed=0, step=0, batch_size=3, seq_len=20)
    for row, target in zip(batch.inputs, batch.targets, strict=True):
        start = int(row[0])  # ids count up (mod 500), so a window is a run of consecutive ids
        assert list(row) == [(start + i) % 500 for i in range(20)]
        assert list(target) == [(start + i + 1) % 500 for i in range(20)]
    (val,) = data.val_batches(batches=1, batch_size=2, seq_len=20)
    assert val.inputs.max() < 100 + 1


def test_token_file_without_val_holds_out_the_tail(tmp_path) -> None:
    (np.arange(1000, dtype=np.uint32) % 7).tofile(tmp_path / "t.bin")
    data = load_data(
        TokenData(train=str(tmp_path / "t.bin"), dtype="uint32", val_fraction=0.1),
        vocab_size=8,
        seq_len=10,
    )
    assert (len(data.train), len(data.val)) == (900, 100)


def test_fingerprint_follows_content(tmp_path) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello world " * 50)
    source = TextData(paths=(str(tmp_path / "a.txt"),))
    first = load_data(source, vocab_size=256, seq_len=8).fingerprint
    assert load_data(source, vocab_size=256, seq_len=8).fingerprint == first
    (tmp_path / "a.txt").write_bytes(b"hello there " * 50)
    assert load_data(source, vocab_size=256, seq_len=8).fingerprint != first


@pytest.mark.parametrize(
    ("setup", "source", "vocab", "message"),
    [
        (None, lambda d: TextData(paths=(str(d / "missing.txt"),)), 256, "not found"),
        (None, lambda d: TextData(paths=(str(d / "*.nothing"),)), 256, "matches nothing"),
        ("empty", lambda d: TextData(paths=(str(d),)), 256, "empty"),
        ("text", lambda d: TextData(paths=(str(d),)), 100, "vocab_size 100"),
        ("short", lambda d: TextData(paths=(str(d),)), 256, "fewer than seq_len"),
        ("bigid", lambda d: TokenData(train=str(d / "t.bin")), 1000, "token id 4000"),
        ("odd", lambda d: TokenData(train=str(d / "t.bin")), 1000, "whole number"),
        ("zero", lambda d: TokenData(train=str(d / "t.bin")), 1000, "empty"),
        (None, lambda d: TokenData(train=str(d / "none.bin")), 1000, "not found"),
        (None, lambda d: AssociativeRecall(vocab_size=64), 32, "vocab_size 32"),
    ],
)
def test_bad_data_is_a_clear_error_before_training(tmp_path, setup, source, vocab, message) -> None:
    if setup == "empty":
        (tmp_path / "a.txt").write_bytes(b"")
    elif setup == "text":
        (tmp_path / "a.txt").write_text("héllo wörld " * 100)  # UTF-8 bytes above 100
    elif setup == "short":
        (tmp_path / "a.txt").write_text("tiny")
    elif setup == "bigid":
        np.array([1, 2, 4000] * 50, dtype=np.uint16).tofile(tmp_path / "t.bin")
    elif setup == "odd":
        (tmp_path / "t.bin").write_bytes(b"\x01\x02\x03")
    elif setup == "zero":
        (tmp_path / "t.bin").write_bytes(b"")
    with pytest.raises(ArchgenError, match=message):
        load_data(source(tmp_path), vocab_size=vocab, seq_len=64)
