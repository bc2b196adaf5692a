"""Data for training: byte-level text, token files and synthetic tasks, behind one interface.

:func:`load_data` turns a :class:`~archgen.train.config.DataSource` into :class:`TrainingData`
and checks it *before* any training (missing paths, empty corpora, token ids the model's
vocabulary cannot hold are :class:`~archgen.errors.ArchgenError`). Batches are pure functions:
``train_batch(seed, step)`` draws the same windows every time it is called, so a resumed run
sees exactly the data the uninterrupted run would have seen, with no data-loader state to save.

>>> data = load_data(TextData(paths=("README.md",)), vocab_size=256, seq_len=32)  # doctest: +SKIP
>>> data.train_batch(seed=0, step=0, batch_size=4, seq_len=32).inputs.shape  # doctest: +SKIP
(4, 32)
"""

from __future__ import annotations

import glob
import hashlib
import json
import sysconfig
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from archgen.errors import ArchgenError
from archgen.train.config import DataSource, TextData, TokenData, as_plain
from archgen.train.images import ImageData
from archgen.train.tasks import Task, TaskBatch
from archgen.train.tokenizer import TextTokenizer, tokenize

# Windows of the training split are drawn from this stream, validation ones from another.
_TRAIN_STREAM, _VAL_STREAM = 0, 1
_AUTO_MIN_DOCUMENTS = 20


@dataclass(frozen=True, eq=False)
class TrainingData:
    """Training and validation examples of one source, as pure functions of seeds and steps."""

    source: DataSource
    train: np.ndarray | None = None  # flat token ids (text/tokens); None for tasks
    val: np.ndarray | None = None
    task: Task | None = None
    bytes_per_token: float | None = None  # set when bits per byte are meaningful
    files: tuple[str, ...] = ()
    tokenizer: TextTokenizer | None = None  # text through a BPE; None = bytes are the tokens
    images: ImageData | None = None  # image classification (train/images.py)

    @property
    def is_task(self) -> bool:
        """Whether validation reports accuracy (tasks' answers, images' classes)."""
        return self.task is not None or self.images is not None

    def describe(self) -> str:
        if self.images is not None:
            im = self.images
            return (
                f"images {im.kind} ({im.image_size}x{im.image_size}, {im.num_classes} classes, "
                f"chance {im.chance():.3f})"
            ) + "".join(f"; {note}" for note in im.notes())
        if self.task is not None:
            return f"task {self.task.kind} (seq_len {self.task.seq_len}, seed {self.task.seed})"
        assert self.train is not None and self.val is not None
        what = f"{len(self.files)} files" if self.files else self.source.kind
        tokens = f"{len(self.train):,} train / {len(self.val):,} validation tokens"
        if self.tokenizer is not None:
            tokens += (
                f" (BPE of {self.tokenizer.vocab_size} ids, {self.bytes_per_token:.2f} B/token)"
            )
        return f"{what}: {tokens}"

    def bytes_covered(self, targets: np.ndarray) -> float | None:
        """The text bytes that the token ids ``targets`` stand for, for bits per byte: exact with
        a tokenizer (the sum of each id's piece), else tokens x ``bytes_per_token`` (1 for
        byte-level text; a token file's declared average); None when unknown (tasks)."""
        if self.tokenizer is not None:
            return float(self.tokenizer.piece_lengths[targets].sum())
        if self.bytes_per_token:
            return targets.size * self.bytes_per_token
        return None

    def train_batch(self, *, seed: int, step: int, batch_size: int, seq_len: int) -> TaskBatch:
        """Batch number ``step`` of a run seeded ``seed`` (random windows; a task's examples)."""
        if self.images is not None:
            return self.images.sample(
                np.random.default_rng([_TRAIN_STREAM, seed, step]), batch_size
            )
        if self.task is not None:
            rng = np.random.default_rng([self.task.seed, _TRAIN_STREAM, seed, step])
            return self.task.sample(rng, batch_size)
        assert self.train is not None
        rng = np.random.default_rng([_TRAIN_STREAM, seed, step])
        offsets = rng.integers(0, len(self.train) - seq_len, batch_size)
        return _windows(self.train, offsets, seq_len)

    def val_batches(self, *, batches: int, batch_size: int, seq_len: int) -> list[TaskBatch]:
        """The fixed validation set: evenly spaced windows (text, tokens) or seeded examples."""
        if self.images is not None:
            return self.images.validation(batches, batch_size)
        if self.task is not None:
            return [
                self.task.sample(
                    np.random.default_rng([self.task.seed, _VAL_STREAM, i]), batch_size
                )
                for i in range(batches)
            ]
        assert self.val is not None
        count = batches * batch_size
        offsets = np.linspace(0, len(self.val) - seq_len - 1, count).astype(np.int64)
        return [
            _windows(self.val, offsets[i * batch_size : (i + 1) * batch_size], seq_len)
            for i in range(batches)
        ]

    def seq_len_for(self, requested: int) -> int:
        """Tasks fix their own sequence length; text and tokens use the configured one."""
        return self.task.seq_len if self.task is not None else requested

    @cached_property
    def fingerprint(self) -> str:
        """A content hash (config and token ids) for caches keyed by the data."""
        h = hashlib.sha256(json.dumps(as_plain(self.source), sort_keys=True).encode())
        if self.tokenizer is not None:  # a kind: file source names a path, not its content
            h.update(self.tokenizer.digest.encode())
        for arr in (self.train, self.val):
            if arr is not None:
                h.update(np.ascontiguousarray(arr).view(np.uint8).data)
        return h.hexdigest()[:16]


def _windows(tokens: np.ndarray, offsets: np.ndarray, seq_len: int) -> TaskBatch:
    rows = np.stack([np.asarray(tokens[o : o + seq_len + 1], dtype=np.int64) for o in offsets])
    inputs, targets = rows[:, :-1], rows[:, 1:]
    return TaskBatch(inputs, targets, np.ones(inputs.shape, dtype=bool))


# -- loading and checking ------------------------------------------------------------------------


def load_data(
    source: DataSource, *, vocab_size: int, seq_len: int, cache: Path | None = None
) -> TrainingData:
    """Load ``source`` and check it fits a model of ``vocab_size`` and windows of ``seq_len``.

    Text with a tokenizer is encoded (and a ``kind: bpe`` tokenizer trained on the training
    split); ``cache`` is the folder that keeps both for the next run (None: not kept)."""
    if isinstance(source, ImageData):
        return TrainingData(source, images=source)
    if isinstance(source, Task):
        if source.vocab_size > vocab_size:
            raise ArchgenError(
                f"data ({source.kind}) uses {source.vocab_size} token ids, more than the model's "
                f"vocab_size {vocab_size}",
                hint="lower data.vocab_size or raise model.vocab_size",
            )
        return TrainingData(source, task=source)
    if isinstance(source, TextData):
        files = text_files(source)
        train, val = split_text(source, [Path(f).read_bytes() for f in files])
        if source.tokenizer is None:
            data = TrainingData(source, train, val, bytes_per_token=1.0, files=tuple(files))
        else:
            done = tokenize(source.tokenizer, train, val, cache=cache)
            data = TrainingData(
                source, done.train, done.val, files=tuple(files), tokenizer=done.tokenizer,
                bytes_per_token=len(val) / max(1, len(done.val)),  # for describe(); bpb is exact
            )  # fmt: skip
    elif isinstance(source, TokenData):
        train, val = _token_splits(source)
        data = TrainingData(source, train, val, bytes_per_token=source.bytes_per_token)
    else:
        raise TypeError(f"unknown data source {type(source).__name__}")
    _check_tokens(data, vocab_size, seq_len)
    return data


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def text_files(source: TextData) -> list[str]:
    """The files of a text source, sorted (the built-in corpus when ``paths`` is empty)."""
    if not source.paths:
        root = stdlib_dir()
        files = sorted(
            str(p)
            for p in root.rglob("*.py")
            if p.is_file() and "site-packages" not in p.relative_to(root).parts
        )
        if not files:
            raise ArchgenError(f"the built-in corpus is empty: no *.py files under {root}")
        return files
    found: dict[str, None] = {}
    for raw in source.paths:
        path = Path(raw).expanduser()
        if path.is_file():
            found[str(path)] = None
        elif path.is_dir():
            found.update((str(p), None) for p in sorted(path.rglob(source.include)) if p.is_file())
        elif glob.has_magic(raw):
            matches = sorted(glob.glob(str(path), recursive=True))
            for m in matches:
                p = Path(m)
                if p.is_file():
                    found[m] = None
                elif p.is_dir():
                    found.update(
                        (str(q), None) for q in sorted(p.rglob(source.include)) if q.is_file()
                    )
            if not matches:
                raise ArchgenError(f"data path {raw!r}: the pattern matches nothing")
        else:
            raise ArchgenError(
                f"data path {raw!r} not found", hint="give files, folders or glob patterns"
            )
    if not found:
        raise ArchgenError(
            f"no files in data paths {list(source.paths)} (include pattern {source.include!r})"
        )
    return sorted(found)


def split_text(source: TextData, documents: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split of byte documents (seeded by ``split_seed``)."""
    total = sum(len(d) for d in documents)
    if total == 0:
        raise ArchgenError(f"the text corpus is empty ({len(documents)} files, 0 bytes)")
    mode = source.split
    if mode == "auto":
        mode = "document" if len(documents) >= _AUTO_MIN_DOCUMENTS else "blocks"
    rng = np.random.default_rng([source.split_seed])
    if mode == "document":
        nonempty = [i for i, d in enumerate(documents) if d]
        if len(nonempty) < 2:
            raise ArchgenError(
                "the 'document' split needs at least 2 non-empty documents",
                hint="use data.split: blocks for a single file",
            )
        # Hold out whole documents, in seeded order, until they make up val_fraction of the bytes.
        held: set[int] = set()
        size = 0
        for i in rng.permutation(nonempty):
            if size >= source.val_fraction * total or len(held) == len(nonempty) - 1:
                break
            held.add(int(i))
            size += len(documents[i])
        val = b"".join(documents[i] for i in sorted(held))
        train = b"".join(d for i, d in enumerate(documents) if i not in held)
    else:
        corpus = b"".join(documents)
        # Blocks of at most a tenth of the corpus, so even a small file has a validation part.
        block = max(1, min(source.block_bytes, total // 10))
        starts = np.arange(0, total, block)
        count = max(1, round(source.val_fraction * len(starts)))
        held_blocks = set(rng.permutation(len(starts))[:count].tolist())
        val = b"".join(corpus[s : s + block] for j, s in enumerate(starts) if j in held_blocks)
        train = b"".join(
            corpus[s : s + block] for j, s in enumerate(starts) if j not in held_blocks
        )
    return np.frombuffer(train, dtype=np.uint8), np.frombuffer(val, dtype=np.uint8)


def _read_tokens(path_str: str, dtype: str) -> np.ndarray:
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise ArchgenError(f"token file {path_str!r} not found")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise ArchgenError(f"{path}: not a plain .npy array ({exc})") from None
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise ArchgenError(
                f"{path}: expected a 1-D integer array, got {arr.dtype} with shape {arr.shape}"
            )
        return arr
    if path.stat().st_size % np.dtype(dtype).itemsize:
        raise ArchgenError(
            f"{path}: {path.stat().st_size} bytes is not a whole number of {dtype} tokens",
            hint="set data.dtype to the type the file was written with",
        )
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _token_splits(source: TokenData) -> tuple[np.ndarray, np.ndarray]:
    train = _read_tokens(source.train, source.dtype)
    if len(train) == 0:
        raise ArchgenError(f"token file {source.train!r} is empty")
    if source.val is not None:
        val = _read_tokens(source.val, source.dtype)
        if len(val) == 0:
            raise ArchgenError(f"token file {source.val!r} is empty")
        return train, val
    cut = len(train) - max(1, round(source.val_fraction * len(train)))
    return train[:cut], train[cut:]


def _check_tokens(data: TrainingData, vocab_size: int, seq_len: int) -> None:
    assert data.train is not None and data.val is not None
    for name, arr in (("training", data.train), ("validation", data.val)):
        if len(arr) < seq_len + 1:
            raise ArchgenError(
                f"the {name} split has {len(arr)} tokens, fewer than seq_len + 1 = {seq_len + 1}",
                hint="add data, lower train.seq_len, or change the validation fraction",
            )
        low, high = int(arr.min()), int(arr.max())
        if low < 0:
            raise ArchgenError(f"the {name} split has a negative token id ({low})")
        if high >= vocab_size:
            hint = (
                "byte-level text needs model.vocab_size >= 256"
                if isinstance(data.source, TextData) and data.tokenizer is None
                else "the tokenizer's vocabulary must fit model.vocab_size"
            )
            raise ArchgenError(
                f"the {name} split has token id {high} >= the model's vocab_size {vocab_size}",
                hint=hint,
            )
