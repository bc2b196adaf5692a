"""Synthetic capability tasks (MAD / Zoology style) that rank sequence mixers cheaply.

Each task is a frozen config (its difficulty knobs and a seed) that draws batches of
``(inputs, targets, mask)``: ``targets[b, t]`` is what the model's output at position ``t`` should
predict and ``mask[b, t]`` marks the *answer* positions, the only ones that count for the loss
and for exact-match accuracy (:func:`answer_accuracy`). Everything is numpy and a pure function
of the seeds, so a batch can be recomputed from ``(seed, step)`` alone (exact resume).

Vocabulary layouts keep the roles apart (keys, values, noise, markers), so a model cannot
score by guessing a role. Token 0 is padding; a pad position is never an answer.

>>> task = AssociativeRecall(seq_len=16, vocab_size=32, num_pairs=4)
>>> batch = task.sample(np.random.default_rng(0), 2)
>>> batch.inputs.shape, int(batch.mask.sum())
((2, 16), 8)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from archgen.errors import ArchgenError
from archgen.train.config import DataSource, option

PAD = 0


@dataclass(frozen=True)
class TaskBatch:
    inputs: np.ndarray  # [N, L] int64 (images: float32 [N, H, W, C], train/images.py)
    targets: np.ndarray  # [N, L] int64: what position t should predict (images: [N] classes)
    mask: np.ndarray  # [N, L] bool: answer positions (images: [N], all true)

    def __post_init__(self) -> None:
        assert self.targets.shape == self.mask.shape
        assert self.inputs.shape[: self.targets.ndim] == self.targets.shape


def answer_accuracy(predictions: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Exact-match accuracy over the answer positions only (``mask``)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("no answer positions in the mask")
    return float((np.asarray(predictions)[mask] == np.asarray(targets)[mask]).mean())


@dataclass(frozen=True)
class Task(DataSource):
    """Base of the capability tasks: sequence length, vocabulary and the seed of the examples."""

    seq_len: int = option("tokens per example", 64, ge=4, le=1 << 20)
    vocab_size: int = option(
        "tokens the task uses (the model's vocab_size must be >= this)", 64, ge=4
    )
    seed: int = option("seed of the examples (the validation set and any fixed tables)", 0, ge=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        problem = self.problem()
        if problem:
            raise ArchgenError(f"data ({self.kind}): {problem}")

    def problem(self) -> str | None:
        """Why these knobs cannot make an example, or None."""
        return None

    def sample(self, rng: np.random.Generator, n: int) -> TaskBatch:
        raise NotImplementedError

    def chance(self) -> float:
        """Accuracy of guessing uniformly among the possible answers (for reports)."""
        raise NotImplementedError


def _shifted(seq: np.ndarray) -> np.ndarray:
    """Next-token targets of a sequence batch (the last position predicts padding)."""
    out = np.full_like(seq, PAD)
    out[:, :-1] = seq[:, 1:]
    return out


def _distinct(rng: np.random.Generator, n: int, k: int, low: int, high: int) -> np.ndarray:
    """``[n, k]`` draws without replacement (per row) from ``[low, high)``."""
    return low + np.argsort(rng.random((n, high - low)), axis=1)[:, :k]


@dataclass(frozen=True)
class AssociativeRecall(Task):
    """Multi-query associative recall (Zoology's MQAR): ``k1 v1 ... kn vn`` then queries
    ``k v`` of earlier keys; the answer is the value at each query key. Keys come from the lower
    half of the vocabulary, values from the upper half."""

    kind: ClassVar[str] = "associative_recall"
    summary: ClassVar[str] = "in-context associative recall (multi-query)"

    num_pairs: int = option("key-value pairs stated before the queries", 8, ge=1)

    def _ranges(self) -> tuple[tuple[int, int], tuple[int, int]]:
        half = self.vocab_size // 2
        return (1, half), (half, self.vocab_size)

    def _prefix_len(self) -> int:
        return 2 * self.num_pairs

    def problem(self) -> str | None:
        (k0, k1), _ = self._ranges()
        if self.num_pairs > k1 - k0:
            return f"num_pairs {self.num_pairs} needs more than {k1 - k0} distinct keys"
        if self.seq_len < self._prefix_len() + 2:
            return (
                f"seq_len {self.seq_len} leaves no room for a query after "
                f"{self._prefix_len()} tokens of pairs"
            )
        return None

    def _pairs(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        (k0, k1), (v0, v1) = self._ranges()
        keys = _distinct(rng, n, self.num_pairs, k0, k1)
        values = rng.integers(v0, v1, (n, self.num_pairs))
        return keys, values

    def _prefix(self, rng: np.random.Generator, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        prefix = np.empty((keys.shape[0], 2 * self.num_pairs), dtype=np.int64)
        prefix[:, 0::2], prefix[:, 1::2] = keys, values
        return prefix

    def _queried(
        self, rng: np.random.Generator, n: int
    ) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
        """The pairs written out, then room for the queries: ``(seq, start, keys, values)``
        with ``seq`` padded after ``start`` and the queried pairs ``[n, queries]`` each."""
        keys, values = self._pairs(rng, n)
        prefix = self._prefix(rng, keys, values)
        queries = (self.seq_len - prefix.shape[1]) // 2
        pick = rng.integers(0, self.num_pairs, (n, queries))
        rows = np.arange(n)[:, None]
        seq = np.full((n, self.seq_len), PAD, dtype=np.int64)
        seq[:, : prefix.shape[1]] = prefix
        return seq, prefix.shape[1], keys[rows, pick], values[rows, pick]

    def sample(self, rng: np.random.Generator, n: int) -> TaskBatch:
        seq, start, keys, values = self._queried(rng, n)
        end = start + 2 * keys.shape[1]
        seq[:, start:end:2], seq[:, start + 1 : end : 2] = keys, values
        mask = np.zeros_like(seq, dtype=bool)
        mask[:, start:end:2] = True
        return TaskBatch(seq, _shifted(seq), mask)

    def chance(self) -> float:
        (_, _), (v0, v1) = self._ranges()
        return 1.0 / (v1 - v0)


@dataclass(frozen=True)
class QueryRecall(AssociativeRecall):
    """Associative recall as a prompt/answer pair: ``k1 v1 ... kn vn``, then the query keys
    ``q1 ... qm``, then their values ``a1 ... am`` together at the end -- the answer is one
    contiguous span, so a masked-diffusion LM can generate it after the prompt (its decoders
    fill the last ``m`` positions). Answers are next-token targets, as in associative recall."""

    kind: ClassVar[str] = "query_recall"
    summary: ClassVar[str] = "associative recall, queries first and all their answers after them"

    def sample(self, rng: np.random.Generator, n: int) -> TaskBatch:
        seq, start, keys, values = self._queried(rng, n)
        queries = keys.shape[1]
        seq[:, start : start + queries] = keys
        seq[:, start + queries : start + 2 * queries] = values
        mask = np.zeros_like(seq, dtype=bool)
        mask[:, start + queries - 1 : start + 2 * queries - 1] = True  # each predicts the next
        return TaskBatch(seq, _shifted(seq), mask)


@dataclass(frozen=True)
class NoisyRecall(AssociativeRecall):
    """Associative recall with noise tokens (their own vocabulary, the top ``noise_vocab`` ids)
    inserted between the key-value pairs: the mixer must ignore what it does not need."""

    kind: ClassVar[str] = "noisy_recall"
    summary: ClassVar[str] = "associative recall with noise tokens between the pairs"

    noise_fraction: float = option("fraction of the pair section that is noise", 0.25, ge=0, le=0.9)
    noise_vocab: int = option("distinct noise tokens (the top ids of the vocabulary)", 8, ge=1)

    def _ranges(self) -> tuple[tuple[int, int], tuple[int, int]]:
        usable = self.vocab_size - self.noise_vocab
        half = usable // 2
        return (1, half), (half, usable)

    def _noise(self) -> int:
        pairs = 2 * self.num_pairs
        return round(self.noise_fraction * pairs / (1 - self.noise_fraction))

    def _prefix_len(self) -> int:
        return 2 * self.num_pairs + self._noise()

    def problem(self) -> str | None:
        if self.vocab_size - self.noise_vocab < 4:
            return (
                f"vocab_size {self.vocab_size} leaves no keys/values after "
                f"{self.noise_vocab} noise ids"
            )
        return super().problem()

    def _prefix(self, rng: np.random.Generator, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        n, pairs, noise = keys.shape[0], self.num_pairs, self._noise()
        length = 2 * pairs + noise
        # Slot i of the prefix holds pair j or a noise token; pairs keep their key->value order
        # and adjacency: choose which of the pairs + noise "units" are pairs, per row.
        is_pair = np.zeros((n, pairs + noise), dtype=bool)
        order = np.argsort(rng.random((n, pairs + noise)), axis=1)[:, :pairs]
        np.put_along_axis(is_pair, order, True, axis=1)
        width = np.where(is_pair, 2, 1)
        start = np.cumsum(width, axis=1) - width  # where each unit begins
        prefix = self.vocab_size - self.noise_vocab + rng.integers(0, self.noise_vocab, (n, length))
        rows = np.arange(n)[:, None]
        pair_start = start[is_pair].reshape(n, pairs)
        prefix[rows, pair_start] = keys
        prefix[rows, pair_start + 1] = values
        return prefix


@dataclass(frozen=True)
class FuzzyRecall(AssociativeRecall):
    """Recall with multi-token keys and values: ``key_len`` key tokens, then ``value_len`` value
    tokens; every token of a queried value is an answer (predicted from the token before it)."""

    kind: ClassVar[str] = "fuzzy_recall"
    summary: ClassVar[str] = "associative recall with multi-token keys and values"

    num_pairs: int = option("key-value pairs stated before the queries", 4, ge=1)
    key_len: int = option("tokens per key", 2, ge=1, le=64)
    value_len: int = option("tokens per value", 2, ge=1, le=64)

    def _unit(self) -> int:
        return self.key_len + self.value_len

    def _prefix_len(self) -> int:
        return self.num_pairs * self._unit()

    def problem(self) -> str | None:
        (k0, k1), _ = self._ranges()
        if self.num_pairs > (k1 - k0) ** self.key_len:
            return f"num_pairs {self.num_pairs} exceeds the distinct keys of length {self.key_len}"
        if self.seq_len < self._prefix_len() + self._unit():
            return f"seq_len {self.seq_len} leaves no room for a query after the pairs"
        return None

    def _keys(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``[n, num_pairs, key_len]`` keys, distinct within each example."""
        (k0, k1), _ = self._ranges()
        span, p, kl = k1 - k0, self.num_pairs, self.key_len
        if span**kl <= 4096:  # small key space: a permutation of all codes, written in base span
            codes = _distinct(rng, n, p, 0, span**kl)
            return k0 + (codes[..., None] // span ** np.arange(kl)) % span
        keys = rng.integers(k0, k1, (n, p, kl))
        while True:  # large key space: collisions are rare; redraw the later twin of each
            same = (keys[:, :, None, :] == keys[:, None, :, :]).all(-1)  # [n, p, p]
            twin = np.triu(same, k=1).any(axis=1)  # [n, p]: equals an earlier key
            if not twin.any():
                return keys
            keys[twin] = rng.integers(k0, k1, (int(twin.sum()), kl))

    def sample(self, rng: np.random.Generator, n: int) -> TaskBatch:
        _, (v0, v1) = self._ranges()
        p, vl, unit = self.num_pairs, self.value_len, self._unit()
        keys = self._keys(rng, n)
        values = rng.integers(v0, v1, (n, p, vl))
        pairs = np.concatenate([keys, values], axis=2)  # [n, p, unit]
        queries = (self.seq_len - p * unit) // unit
        pick = rng.integers(0, p, (n, queries))
        asked = np.take_along_axis(pairs, pick[..., None], axis=1)  # [n, q, unit]
        body = np.concatenate([pairs.reshape(n, -1), asked.reshape(n, -1)], axis=1)
        seq = np.full((n, self.seq_len), PAD, dtype=np.int64)
        seq[:, : body.shape[1]] = body
        mask = np.zeros_like(seq, dtype=bool)
        for q in range(queries):  # answers: the last key token and all value tokens but the last
            first = p * unit + q * unit + self.key_len - 1
            mask[:, first : first + vl] = True
        return TaskBatch(seq, _shifted(seq), mask)


@dataclass(frozen=True)
class SelectiveCopy(Task):
    """Selective copying: ``num_tokens`` data tokens scattered among blanks, then as many copy
    markers; at the i-th marker the model must output the i-th data token (in order)."""

    kind: ClassVar[str] = "selective_copy"
    summary: ClassVar[str] = "copy the non-blank tokens, in order, at the copy markers"

    vocab_size: int = option("tokens the task uses: blank, marker and data tokens", 16, ge=4)
    num_tokens: int = option("data tokens to copy", 8, ge=1)

    BLANK: ClassVar[int] = 1
    MARK: ClassVar[int] = 2

    def problem(self) -> str | None:
        if self.seq_len < 2 * self.num_tokens:
            return f"seq_len {self.seq_len} is shorter than 2 * num_tokens ({2 * self.num_tokens})"
        return None

    def sample(self, rng: np.random.Generator, n: int) -> TaskBatch:
        region = self.seq_len - self.num_tokens
        data = rng.integers(3, self.vocab_size, (n, self.num_tokens))
        where = np.sort(_distinct(rng, n, self.num_tokens, 0, region), axis=1)
        seq = np.full((n, self.seq_len), self.BLANK, dtype=np.int64)
        np.put_along_axis(seq, where, data, axis=1)
        seq[:, region:] = self.MARK
        targets = np.full_like(seq, PAD)
        targets[:, region:] = data
        mask = np.zeros_like(seq, dtype=bool)
        mask[:, region:] = True
        return TaskBatch(seq, targets, mask)

    def chance(self) -> float:
        return 1.0 / (self.vocab_size - 3)


@dataclass(frozen=True)
class Compression(Task):
    """Compression, adapted to a causal LM: random data tokens, a compress marker, then position
    queries ``P_j`` in random order; the answer at ``P_j`` is the j-th data token. A recurrent
    mixer must hold the whole sequence in its state; attention can look it up by position.

    Vocabulary: ``[1, D]`` data, ``D + 1`` the marker, then one query token per position, with
    ``n = (seq_len - 1) // 2`` positions and ``D = vocab_size - n - 2``."""

    kind: ClassVar[str] = "compression"
    summary: ClassVar[str] = "recall every token of a random sequence by its position"

    seq_len: int = option("tokens per example (n = (seq_len - 1) // 2 data tokens)", 17, ge=3)
    vocab_size: int = option("data tokens + marker + one query token per position", 32, ge=6)

    def _n(self) -> int:
        return (self.seq_len - 1) // 2

    def _data_vocab(self) -> int:
        return self.vocab_size - self._n() - 2

    def problem(self) -> str | None:
        if self._data_vocab() < 2:
            return (
                f"vocab_size {self.vocab_size} leaves {self._data_vocab()} data tokens after the "
                f"marker and {self._n()} position queries; need >= {self._n() + 4}"
            )
        return None

    def sample(self, rng: np.random.Generator, n: int) -> TaskBatch:
        m, d = self._n(), self._data_vocab()
        data = rng.integers(1, d + 1, (n, m))
        order = np.argsort(rng.random((n, m)), axis=1)  # which position each query asks for
        seq = np.full((n, self.seq_len), PAD, dtype=np.int64)
        seq[:, :m] = data
        seq[:, m] = d + 1
        seq[:, m + 1 : 2 * m + 1] = d + 2 + order
        targets = np.full_like(seq, PAD)
        targets[:, m + 1 : 2 * m + 1] = np.take_along_axis(data, order, axis=1)
        mask = np.zeros_like(seq, dtype=bool)
        mask[:, m + 1 : 2 * m + 1] = True
        return TaskBatch(seq, targets, mask)

    def chance(self) -> float:
        return 1.0 / self._data_vocab()


@dataclass(frozen=True)
class Memorization(Task):
    """Memorization: a fixed key -> value table (drawn from ``seed``, the same for every example
    and for validation); sequences ``k v k v ...`` of random keys, answers at the keys. Tests the
    capacity of the channel mixers rather than the token mixers."""

    kind: ClassVar[str] = "memorization"
    summary: ClassVar[str] = "recall values of a fixed key-value table learned in the weights"

    vocab_size: int = option("tokens: the lower half are keys, the upper half values", 128, ge=4)
    seq_len: int = option("tokens per example", 32, ge=4, le=1 << 20)

    def _table(self) -> np.ndarray:
        half = self.vocab_size // 2
        rng = np.random.default_rng([self.seed, 7])  # the table only depends on the task seed
        return rng.integers(half, self.vocab_size, half - 1)  # value of key k at k - 1

    def sample(self, rng: np.random.Generator, n: int) -> TaskBatch:
        half, table = self.vocab_size // 2, self._table()
        pairs = self.seq_len // 2
        keys = rng.integers(1, half, (n, pairs))
        seq = np.full((n, self.seq_len), PAD, dtype=np.int64)
        seq[:, 0 : 2 * pairs : 2] = keys
        seq[:, 1 : 2 * pairs : 2] = table[keys - 1]
        mask = np.zeros_like(seq, dtype=bool)
        mask[:, 0 : 2 * pairs : 2] = True
        return TaskBatch(seq, _shifted(seq), mask)

    def chance(self) -> float:
        return 1.0 / (self.vocab_size - self.vocab_size // 2)


TASKS: dict[str, type[Task]] = {
    cls.kind: cls
    for cls in (
        AssociativeRecall,
        QueryRecall,
        NoisyRecall,
        FuzzyRecall,
        SelectiveCopy,
        Compression,
        Memorization,
    )
}
