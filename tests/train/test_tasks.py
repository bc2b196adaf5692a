"""Capability tasks: answers and masks checked against oracles written here from each task's
definition (not from the generator's code), and the exact-match accuracy function."""

from __future__ import annotations

import numpy as np
import pytest

from archgen.errors import ArchgenError
from archgen.train.tasks import (
    TASKS,
    AssociativeRecall,
    Compression,
    FuzzyRecall,
    Memorization,
    NoisyRecall,
    SelectiveCopy,
    TaskBatch,
    answer_accuracy,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _recall_oracle(seq: np.ndarray, t: int, noise_from: int | None = None) -> int:
    """The value stated right after the first earlier occurrence of the key at ``t``."""
    key = seq[t]
    for s in range(t):
        if seq[s] == key:
            return int(seq[s + 1])
    raise AssertionError(f"key {key} at {t} was never stated")


@pytest.mark.parametrize("cls", [AssociativeRecall, NoisyRecall])
def test_recall_answers_are_the_values_stated_after_each_key(cls) -> None:
    task = cls(seq_len=40, vocab_size=40, num_pairs=6)
    batch = task.sample(_rng(1), 16)
    assert batch.mask.any()
    for b in range(16):
        seq = batch.inputs[b]
        answer_positions = np.flatnonzero(batch.mask[b])
        for t in answer_positions:
            assert batch.targets[b, t] == _recall_oracle(seq, t)
        # every answer position is a repeated key; no key is stated twice before the queries
        first_query = answer_positions[0]
        stated = [x for x in seq[:first_query] if x < task.vocab_size // 2 and x > 0]
        if cls is AssociativeRecall:
            assert len(set(stated)) == len(stated) == task.num_pairs
    oracle = np.zeros_like(batch.targets)
    for b, t in zip(*np.nonzero(batch.mask), strict=True):
        oracle[b, t] = _recall_oracle(batch.inputs[b], t)
    assert answer_accuracy(oracle, batch.targets, batch.mask) == 1.0


def test_noisy_recall_inserts_noise_from_its_own_vocabulary() -> None:
    task = NoisyRecall(seq_len=64, vocab_size=40, num_pairs=6, noise_fraction=0.5, noise_vocab=8)
    batch = task.sample(_rng(2), 8)
    noise = batch.inputs >= task.vocab_size - task.noise_vocab
    # half of the pair section is noise: 12 pair tokens + 12 noise tokens, none in the queries
    assert (noise.sum(axis=1) == 12).all()
    assert not (noise & batch.mask).any()
    assert not noise[:, 24:].any()


def test_fuzzy_recall_answers_spell_the_stated_value() -> None:
    task = FuzzyRecall(seq_len=40, vocab_size=32, num_pairs=4, key_len=3, value_len=2)
    batch = task.sample(_rng(3), 8)
    unit = task.key_len + task.value_len
    for b in range(8):
        seq = batch.inputs[b]
        pairs = {
            tuple(seq[i * unit : i * unit + 3]): tuple(seq[i * unit + 3 : (i + 1) * unit])
            for i in range(task.num_pairs)
        }
        assert len(pairs) == task.num_pairs  # keys are distinct
        answers = np.flatnonzero(batch.mask[b])
        assert len(answers) % task.value_len == 0
        for j in range(0, len(answers), task.value_len):
            t = answers[j]
            key = tuple(seq[t - 2 : t + 1])
            assert tuple(batch.targets[b, answers[j : j + 2]]) == pairs[key]


def test_selective_copy_answers_are_the_data_tokens_in_order() -> None:
    task = SelectiveCopy(seq_len=30, vocab_size=12, num_tokens=5)
    batch = task.sample(_rng(4), 8)
    for b in range(8):
        region = batch.inputs[b][: task.seq_len - task.num_tokens]
        data = [x for x in region if x != SelectiveCopy.BLANK]
        assert len(data) == task.num_tokens
        assert list(batch.targets[b][batch.mask[b]]) == data
        # the answers sit where the copy markers are, after the region
        assert np.flatnonzero(batch.mask[b]).min() == len(region)


def test_compression_answers_the_token_at_the_queried_position() -> None:
    task = Compression(seq_len=17, vocab_size=32)
    n = (task.seq_len - 1) // 2
    first_query = task.vocab_size - n  # documented layout: the top n ids are the queries
    batch = task.sample(_rng(5), 8)
    for b in range(8):
        for t in np.flatnonzero(batch.mask[b]):
            j = batch.inputs[b, t] - first_query
            assert 0 <= j < n
            assert batch.targets[b, t] == batch.inputs[b, j]
        assert sorted(batch.inputs[b, n + 1 :] - first_query) == list(range(n))


def test_memorization_table_is_fixed_by_the_task_seed() -> None:
    task = Memorization(seq_len=32, vocab_size=64, seed=3)
    seen: dict[int, int] = {}
    for draw in range(3):  # different example streams, one table
        batch = task.sample(_rng(100 + draw), 8)
        for b, t in zip(*np.nonzero(batch.mask), strict=True):
            key, value = int(batch.inputs[b, t]), int(batch.targets[b, t])
            assert seen.setdefault(key, value) == value
    assert len(seen) > 20
    other = Memorization(seq_len=32, vocab_size=64, seed=4).sample(_rng(100), 8)
    differs = [
        seen[int(k)] != int(v)
        for k, v in zip(other.inputs[other.mask], other.targets[other.mask], strict=True)
        if int(k) in seen
    ]
    assert any(differs)


@pytest.mark.parametrize("kind", sorted(TASKS))
def test_batches_are_seeded_and_well_formed(kind: str) -> None:
    task = TASKS[kind]()
    a, b = task.sample(_rng(7), 4), task.sample(_rng(7), 4)
    c = task.sample(_rng(8), 4)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.inputs, c.inputs)
    assert a.inputs.shape == (4, task.seq_len)
    assert a.inputs.min() >= 0 and a.inputs.max() < task.vocab_size
    assert a.targets[a.mask].min() >= 0 and a.targets[a.mask].max() < task.vocab_size
    assert a.mask.any(axis=1).all()
    assert 0 < task.chance() < 1


def test_answer_accuracy_counts_only_answer_positions() -> None:
    targets = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    mask = np.array([[False, True, False, True], [True, True, False, False]])
    preds = targets.copy()
    preds[~mask] = 0  # wrong everywhere that does not count
    assert answer_accuracy(preds, targets, mask) == 1.0
    preds[0, 1] = 0  # one of four answers wrong
    assert answer_accuracy(preds, targets, mask) == 0.75
    with pytest.raises(ValueError):
        answer_accuracy(preds, targets, np.zeros_like(mask))


@pytest.mark.parametrize(
    "make",
    [
        lambda: AssociativeRecall(seq_len=16, vocab_size=16, num_pairs=8),  # 7 keys for 8 pairs
        lambda: AssociativeRecall(seq_len=10, vocab_size=64, num_pairs=5),  # no room to query
        lambda: SelectiveCopy(seq_len=10, num_tokens=6),
        lambda: Compression(seq_len=33, vocab_size=19),  # 1 data token left
        lambda: FuzzyRecall(seq_len=8, num_pairs=4),
        lambda: AssociativeRecall(num_pairs=0),
    ],
)
def test_impossible_knobs_are_clear_errors(make) -> None:
    with pytest.raises(ArchgenError, match=r"data|num_pairs"):
        make()


def test_task_batch_checks_shapes() -> None:
    with pytest.raises(AssertionError):
        TaskBatch(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 4), dtype=bool))
