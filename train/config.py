"""Typed configuration of training runs: the optimiser schedule and the data sources.

Every option is a frozen-dataclass field whose ``metadata`` holds its documentation and bounds
(``doc``, ``ge``/``gt``/``le``), the same convention as the IR node classes. The spec layer
(``archgen.spec.training``) generates the ``train:`` and ``data:`` schemas from these classes, so
an option is declared in exactly one place. No torch here: the spec front end imports this
module and must stay torch-free.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from archgen.errors import ArchgenError


def option(doc: str, default: Any = dataclasses.MISSING, **bounds: float) -> Any:
    """A documented, bounded dataclass field (``ge``, ``gt``, ``le``)."""
    unknown = set(bounds) - {"ge", "gt", "le"}
    assert not unknown, f"unknown bound(s) {unknown}"
    if isinstance(default, tuple | list):
        value = tuple(default)
        return dataclasses.field(default_factory=lambda: value, metadata={"doc": doc, **bounds})
    return dataclasses.field(default=default, metadata={"doc": doc, **bounds})


def check_bounds(obj: Any) -> None:
    """Raise :class:`ArchgenError` for a field outside its declared bounds.

    The spec layer checks the same bounds with positions; this catches configs built in Python.
    """
    name = type(obj).__name__
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        meta = f.metadata
        if isinstance(value, float) and not math.isfinite(value):
            raise ArchgenError(f"{name}.{f.name}: must be finite, got {value}")
        for key, bad, word in (("ge", value.__lt__, ">="), ("gt", value.__le__, ">")):
            if key in meta and bad(meta[key]):
                raise ArchgenError(f"{name}.{f.name}: must be {word} {meta[key]}, got {value}")
        if "le" in meta and value > meta["le"]:
            raise ArchgenError(f"{name}.{f.name}: must be <= {meta['le']}, got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule, evaluation and checkpointing of one run (defaults suit a CPU)."""

    steps: int = option("optimizer steps in the whole run", 200, ge=1, le=10**9)
    batch_size: int = option("sequences per optimizer step", 16, ge=1, le=1 << 20)
    seq_len: int = option(
        "tokens per training sequence for text/token data (tasks set their own)", 128, ge=1
    )
    lr: float = option("peak learning rate (AdamW)", 3e-3, gt=0, le=10)
    warmup_steps: int = option("linear warm-up steps from 0 to lr", 20, ge=0)
    min_lr_ratio: float = option("cosine decay ends at lr * min_lr_ratio", 0.1, ge=0, le=1)
    weight_decay: float = option("AdamW decoupled weight decay (matrices only)", 0.1, ge=0)
    beta1: float = option("AdamW beta1", 0.9, ge=0, le=1)
    beta2: float = option("AdamW beta2", 0.95, ge=0, le=1)
    grad_clip: float | None = option("clip the global gradient norm; null = off", 1.0, gt=0)
    bf16: bool = option("bfloat16 autocast for forward/backward (weights stay float32)", False)
    eval_interval: int = option("validate every N steps (and at the end)", 50, ge=1)
    eval_batches: int = option("validation batches per evaluation", 8, ge=1)
    checkpoint_interval: int = option(
        "write a checkpoint every N steps (and at the end)", 100, ge=1
    )
    keep_checkpoints: int = option("how many recent checkpoints to keep", 2, ge=1)
    log_interval: int = option("append a training-loss record every N steps", 10, ge=1)
    seed: int = option("seed of the weights and of the data order", 0, ge=0, le=2**63 - 1)

    def __post_init__(self) -> None:
        check_bounds(self)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based): linear warm-up, cosine decay.

        A pure function of the step, so a resumed run follows the same schedule exactly.
        """
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# -- data sources --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSource:
    """Base of the data-source configs; ``kind`` is the spec's ``data.kind``."""

    kind: ClassVar[str]
    summary: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class TokenizerConfig:
    """A byte-level BPE tokenizer for text data: trained on the training split, or loaded.

    ``kind: bpe`` trains one with the ``tokenizers`` library (fixed settings, so the same data
    gives the same tokenizer; cached by data and settings); ``kind: file`` loads a byte-level
    ``tokenizer.json`` (GPT-2 style: a ``ByteLevel`` pre-tokenizer, every byte a token).
    """

    kind: Literal["bpe", "file"] = option(
        "bpe: train a byte-level BPE on the training split; file: load a tokenizer.json", "bpe"
    )
    vocab_size: int | None = option(
        "kind bpe: token ids (the 256 bytes plus merges); model.vocab_size must equal it "
        "(one more for a masked-diffusion LM, whose last id is the mask)",
        None,
        ge=256,
        le=1 << 20,
    )
    path: str | None = option("kind file: the tokenizer.json to load", None)
    min_frequency: int = option("kind bpe: a pair merges only if seen this often", 2, ge=1)
    max_train_bytes: int = option(
        "kind bpe: train on at most this many bytes of the training split (evenly spaced "
        "chunks); the whole corpus is still encoded",
        100_000_000,
        ge=1024,
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        problem = self.problem(self.kind, self.vocab_size, self.path)
        if problem is not None:
            raise ArchgenError(f"data.tokenizer: {problem}")

    @staticmethod
    def problem(kind: str, vocab_size: int | None, path: str | None) -> str | None:
        """What is wrong with this combination (the spec layer reports it with a position)."""
        if kind == "bpe" and (vocab_size is None or path is not None):
            return "kind bpe needs vocab_size and takes no path"
        if kind == "file" and (path is None or vocab_size is not None):
            return "kind file needs path and takes no vocab_size (the file's vocabulary sets it)"
        return None


@dataclass(frozen=True)
class TextData(DataSource):
    """Byte-level text from files, folders and globs (default: the Python standard library)."""

    kind: ClassVar[str] = "text"
    summary: ClassVar[str] = (
        "text: UTF-8 bytes are the tokens (vocab_size >= 256), or a byte-level BPE tokenizer's"
    )

    paths: tuple[str, ...] = option(
        "files, folders (searched recursively) or glob patterns; empty = the Python standard "
        "library's *.py sources on this machine",
        (),
    )
    include: str = option("file-name pattern applied inside folders", "*")
    split: Literal["auto", "document", "blocks"] = option(
        "validation split by whole documents, by contiguous blocks, or auto "
        "(documents when there are at least 20)",
        "auto",
    )
    val_fraction: float = option(
        "fraction of the corpus held out for validation", 0.05, gt=0, le=0.5
    )
    block_bytes: int = option("block size of the 'blocks' split", 16384, ge=1)
    split_seed: int = option("seed of the train/validation split", 0, ge=0)
    tokenizer: TokenizerConfig | None = option(  # noqa: RUF009 (a field(), not a call default)
        "null = bytes are the tokens; else a byte-level BPE ({kind: bpe, vocab_size: N} or "
        "{kind: file, path: tokenizer.json}); bits per byte stay comparable",
        None,
    )


@dataclass(frozen=True)
class TokenData(DataSource):
    """Pre-tokenised ids: flat uint16/uint32 ``.bin`` files (as nanoGPT writes them) or ``.npy``."""

    kind: ClassVar[str] = "tokens"
    summary: ClassVar[str] = "token ids in .bin (flat uint16/uint32) or .npy files"

    train: str = option("training token file (.bin or .npy)")
    val: str | None = option("validation token file; null = hold out a tail fraction", None)
    dtype: Literal["uint16", "uint32"] = option("element type of .bin files", "uint16")
    val_fraction: float = option("held-out fraction when val is null", 0.05, gt=0, le=0.5)
    bytes_per_token: float | None = option(
        "average UTF-8 bytes per token, to report bits per byte; null = don't", None, gt=0
    )


def data_source_classes() -> dict[str, type[DataSource]]:
    """Every data-source kind: text, tokens, the synthetic capability tasks and images."""
    from archgen.train.images import IMAGE_SOURCES
    from archgen.train.tasks import TASKS

    return {TextData.kind: TextData, TokenData.kind: TokenData, **TASKS, **IMAGE_SOURCES}


def as_plain(obj: Any) -> dict[str, Any]:
    """A config as JSON-able data with its ``kind`` (for run folders and cache keys)."""
    data = json.loads(json.dumps(dataclasses.asdict(obj)))  # tuples -> lists, for YAML too
    # Byte-level text leaves the key out, so run identities (--resume) and cache keys written
    # before tokenizers existed stay valid.
    if isinstance(obj, TextData) and obj.tokenizer is None:
        data.pop("tokenizer")
    kind = getattr(obj, "kind", None)
    return {"kind": kind, **data} if kind else data
