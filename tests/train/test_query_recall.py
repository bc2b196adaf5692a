"""``query_recall``: associative recall as one prompt/answer pair (issue 15's SFT form), whose
answers are a contiguous span that a masked-diffusion decoder can generate after the prompt."""

from __future__ import annotations

import numpy as np
import torch

from archgen.train.diffusion import denoising_example, diffusion_data_problem
from archgen.train.loop import Batch
from archgen.train.tasks import QueryRecall


def test_answers_are_the_values_of_the_queries_in_one_span_after_them() -> None:
    task = QueryRecall(seq_len=27, vocab_size=20, num_pairs=3)  # 6 + 2 x 10 queries + 1 pad
    batch = task.sample(np.random.default_rng(5), 7)
    for seq, mask in zip(batch.inputs, batch.mask, strict=True):
        table = {int(seq[2 * i]): int(seq[2 * i + 1]) for i in range(3)}  # naive reading
        queries, answers = seq[6:16], seq[16:26]
        assert [table[int(q)] for q in queries] == answers.tolist()
        assert seq[26] == 0  # padding
        # causal form: each answer is predicted from the token before it
        assert np.flatnonzero(mask).tolist() == list(range(15, 25))
    assert np.array_equal(batch.targets[:, :-1], batch.inputs[:, 1:])


def test_its_denoising_example_masks_exactly_the_answer_span() -> None:
    task = QueryRecall(seq_len=27, vocab_size=20, num_pairs=3)
    raw = task.sample(np.random.default_rng(1), 3)
    x0, eligible = denoising_example(Batch.of(raw, torch.device("cpu")))
    assert torch.equal(x0, torch.from_numpy(raw.inputs))  # the sequence itself
    expected = torch.zeros_like(eligible)
    expected[:, 16:26] = True  # the answers, never the queries or the pairs
    assert torch.equal(eligible, expected)
    from archgen.train.data import TrainingData

    assert diffusion_data_problem(TrainingData(task, task=task), mask_token=20) is None
