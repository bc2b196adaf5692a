"""Byte-level BPE tokenizers for text data: trained with the ``tokenizers`` library, or loaded.

A :class:`TextTokenizer` is *byte-level* (GPT-2 style): a ``ByteLevel`` pre-tokenizer maps every
UTF-8 byte to one of 256 base tokens, so any text encodes, and every id stands for a fixed byte
string, its *piece*. Bytes that are not valid UTF-8 (which the Rust library cannot take as a
string) are encoded as their base tokens directly, so ``decode(encode(b)) == b`` for every byte
string ``b``; :func:`tokenize` checks that round trip on the whole corpus.

Bits per byte with a tokenizer: the bytes a window's target tokens cover are the sum of their
pieces' lengths (:attr:`TextTokenizer.piece_lengths`), counted exactly, not an average; the
validation loss summed over those tokens, over ``ln 2`` and those bytes, is comparable with a
byte-level model's bits per byte on the same text.

``kind: bpe`` trains on the training split only, with fixed settings (the library's BPE trainer is
deterministic for a given input: checked across runs and thread counts). The tokenizer and the
encoded splits are cached in a folder the caller names (``archgen.training`` gives
``cache_dir()/tokenizers``), under a key of the split bytes, the settings, the library version
and (``kind: file``) the file's content, so a repeated run neither retrains nor re-encodes.

>>> tok = train_bpe(b"hello world " * 50, TokenizerConfig(vocab_size=300))  # doctest: +SKIP
>>> tok.decode(tok.encode(b"hello \\xff")) == b"hello \\xff"  # doctest: +SKIP
True
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from archgen.atomic import write_bytes_atomic, write_text_atomic
from archgen.errors import ArchgenError
from archgen.train.config import TokenizerConfig, as_plain

_FORMAT = 1  # bump when the cached files change meaning
_CHUNK = 1 << 16  # bytes per string handed to the library; cut after a newline
_BATCH = 64  # chunks per encode_batch call (bounds the library's per-token objects)
_ESCAPED = re.compile("([\udc80-\udcff]+)")  # bytes that were not UTF-8 (surrogateescape)


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table (``bytes_to_unicode``), as ByteLevel uses it."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BYTE_CHARS = _byte_chars()
_CHAR_BYTES = {c: b for b, c in enumerate(BYTE_CHARS)}


@dataclass(frozen=True, eq=False)
class TextTokenizer:
    """A byte-level tokenizer: ``encode``/``decode`` between bytes and ids, exactly."""

    tokenizer: Any  # tokenizers.Tokenizer
    vocab_size: int  # ids are < vocab_size (a trained BPE keeps its configured size)
    pieces: tuple[bytes, ...]  # the bytes of each id (b"" for ids the vocabulary lacks)
    byte_ids: tuple[int, ...]  # the base token of each byte value

    @classmethod
    def from_json(cls, text: str, *, origin: str, vocab_size: int | None = None) -> TextTokenizer:
        """Parse a ``tokenizer.json``; refuse one that is not byte-level (``origin`` names it)."""
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_str(text)
        except Exception as exc:  # the library raises plain Exceptions for bad files
            raise ArchgenError(f"{origin}: not a tokenizer.json ({exc})") from None
        size = tok.get_vocab_size(with_added_tokens=True)
        added = {i: t.content for i, t in tok.get_added_tokens_decoder().items()}
        pieces: list[bytes] = []
        for i in range(size):
            token = tok.id_to_token(i)
            if i in added:
                pieces.append(added[i].encode("utf-8"))
            elif token is None:
                pieces.append(b"")
            elif all(c in _CHAR_BYTES for c in token):
                pieces.append(bytes(_CHAR_BYTES[c] for c in token))
            else:
                raise ArchgenError(
                    f"{origin}: token {i} ({token!r}) is not byte-level",
                    hint="use a byte-level BPE tokenizer (GPT-2 style, ByteLevel pre-tokenizer)",
                )
        byte_ids = [tok.token_to_id(c) for c in BYTE_CHARS]
        missing = [b for b, i in enumerate(byte_ids) if i is None]
        if missing:
            raise ArchgenError(
                f"{origin}: {len(missing)} byte value(s) have no token (e.g. 0x{missing[0]:02x})",
                hint="a byte-level tokenizer has a token for each of the 256 bytes",
            )
        if vocab_size is not None and vocab_size < size:
            raise ArchgenError(f"{origin}: {size} tokens, more than the {vocab_size} expected")
        return cls(tok, vocab_size or size, tuple(pieces), tuple(int(i) for i in byte_ids))

    @classmethod
    def load(cls, path: str | Path, *, vocab_size: int | None = None) -> TextTokenizer:
        path = Path(path)
        if not path.is_file():
            raise ArchgenError(f"tokenizer file {str(path)!r} not found")
        return cls.from_json(path.read_text("utf-8"), origin=str(path), vocab_size=vocab_size)

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @cached_property
    def digest(self) -> str:
        """Identifies the tokenizer (its serialised form): equal digests encode alike."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @cached_property
    def piece_lengths(self) -> np.ndarray:
        """``[vocab_size]`` int64: the bytes each id stands for (0 for unused ids)."""
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        lengths[: len(self.pieces)] = [len(p) for p in self.pieces]
        return lengths

    def encode(self, data: bytes) -> np.ndarray:
        """``data`` as token ids (uint16 when the vocabulary fits, else uint32)."""
        dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.uint32
        parts: list[str | bytes] = []
        for chunk in _chunks(data):
            # surrogateescape keeps every byte: invalid ones come back as lone surrogates.
            for i, run in enumerate(_ESCAPED.split(chunk.decode("utf-8", "surrogateescape"))):
                if i % 2:
                    parts.append(run.encode("utf-8", "surrogateescape"))
                elif run:
                    parts.append(run)
        texts = [p for p in parts if isinstance(p, str)]
        encoded: list[np.ndarray] = []  # arrays at once: Python int lists cost ~36 B a token
        for start in range(0, len(texts), _BATCH):
            batch = self.tokenizer.encode_batch(
                texts[start : start + _BATCH], add_special_tokens=False
            )
            encoded += [np.asarray(e.ids, dtype=dtype) for e in batch]
        pending = iter(encoded)
        ids = [
            next(pending)
            if isinstance(p, str)
            else np.asarray([self.byte_ids[b] for b in p], dtype=dtype)
            for p in parts
        ]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=dtype)

    def decode(self, ids: Any) -> bytes:
        """The bytes of ``ids`` (ids the vocabulary lacks decode to nothing)."""
        n = len(self.pieces)
        return b"".join(self.pieces[i] if i < n else b"" for i in map(int, ids))

    def save(self, path: Path) -> None:
        write_text_atomic(path, self.to_json())


def _chunks(data: bytes) -> Iterator[bytes]:
    """Pieces of about ``_CHUNK`` bytes, cut after a newline (else at a UTF-8 boundary)."""
    start = 0
    while start < len(data):
        end = start + _CHUNK
        if end < len(data):
            newline = data.find(b"\n", end)
            if 0 <= newline < end + _CHUNK:
                end = newline + 1
            else:
                while end > start + 1 and (data[end] & 0xC0) == 0x80:  # a continuation byte
                    end -= 1
        yield data[start:end]
        start = end


def _training_texts(data: bytes, limit: int) -> Iterator[str]:
    """The trainer's input: the whole split, or evenly spaced chunks up to ``limit`` bytes."""
    if len(data) <= limit:
        starts = range(0, len(data), _CHUNK)
    else:
        starts = np.linspace(0, len(data) - _CHUNK, max(1, limit // _CHUNK)).astype(np.int64)
    for s in starts:
        text = data[int(s) : int(s) + _CHUNK].decode("utf-8", "surrogateescape")
        yield _ESCAPED.sub("", text)


def train_bpe(data: bytes, config: TokenizerConfig) -> TextTokenizer:
    """A byte-level BPE of ``config.vocab_size`` ids trained on ``data`` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    assert config.kind == "bpe" and config.vocab_size is not None
    tok = Tokenizer(models.BPE())
    # No prefix space: it would add a byte that the text does not have.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_training_texts(data, config.max_train_bytes), trainer)
    return TextTokenizer.from_json(
        tok.to_str(), origin="the trained tokenizer", vocab_size=config.vocab_size
    )


def load_tokenizer(config: TokenizerConfig) -> TextTokenizer:
    """The tokenizer of a ``kind: file`` config (a ``kind: bpe`` one must be trained)."""
    assert config.kind == "file" and config.path is not None
    return TextTokenizer.load(config.path)


def tokenizer_vocab_size(config: TokenizerConfig) -> int:
    """The token ids ``config`` yields (reads the file of a ``kind: file`` config)."""
    if config.kind == "bpe":
        assert config.vocab_size is not None
        return config.vocab_size
    return load_tokenizer(config).vocab_size


@dataclass(frozen=True)
class Tokenized:
    """A text corpus's splits as token ids, with the tokenizer that made them."""

    tokenizer: TextTokenizer
    train: np.ndarray
    val: np.ndarray


def tokenize(
    config: TokenizerConfig, train: np.ndarray, val: np.ndarray, *, cache: Path | None = None
) -> Tokenized:
    """Train (``kind: bpe``, on ``train``) or load the tokenizer and encode both byte splits;
    cached in the folder ``cache`` by content and settings (None: not cached)."""
    import tokenizers

    size = None if config.kind == "file" else config.vocab_size
    file_text = load_tokenizer(config).to_json() if config.kind == "file" else ""
    settings = {k: v for k, v in as_plain(config).items() if k != "path"}
    h = hashlib.sha256(
        json.dumps([_FORMAT, tokenizers.__version__, settings], sort_keys=True).encode()
    )
    for part in (file_text.encode(), train.tobytes(), b"|", val.tobytes()):
        h.update(part)
    folder = cache / h.hexdigest()[:20] if cache is not None else None
    if folder is not None and (folder / "tokenizer.json").is_file():  # written last: complete
        tok = TextTokenizer.load(folder / "tokenizer.json", vocab_size=size)
        return Tokenized(tok, _load_ids(folder / "train.npy"), _load_ids(folder / "val.npy"))
    if config.kind == "bpe":
        tok = train_bpe(train.tobytes(), config)
    else:
        tok = TextTokenizer.from_json(file_text, origin=str(config.path))
    splits = []
    for name, raw in (("training", train), ("validation", val)):
        ids = tok.encode(raw.tobytes())
        if tok.decode(ids) != raw.tobytes():
            raise ArchgenError(
                f"the tokenizer does not reproduce the {name} text byte for byte",
                hint="use a byte-level tokenizer without a normalizer or prefix space",
            )
        splits.append(ids)
    if folder is None:
        return Tokenized(tok, splits[0], splits[1])
    for name, ids in zip(("train.npy", "val.npy"), splits, strict=True):
        buffer = io.BytesIO()
        np.save(buffer, ids, allow_pickle=False)
        write_bytes_atomic(folder / name, buffer.getvalue())
    tok.save(folder / "tokenizer.json")
    return Tokenized(tok, splits[0], splits[1])


def _load_ids(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


__all__ = [
    "BYTE_CHARS",
    "TextTokenizer",
    "Tokenized",
    "load_tokenizer",
    "tokenize",
    "tokenizer_vocab_size",
    "train_bpe",
]
