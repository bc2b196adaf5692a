"""LLaDA's masked-diffusion objective against a per-token loop, and tasks as prompt/answer pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from archgen.train.diffusion import MIN_MASK_RATIO, MaskedDiffusion, denoising_example
from archgen.train.loop import Batch
from archgen.train.tasks import AssociativeRecall, SelectiveCopy, TaskBatch

MASK = 9


class Lookup(torch.nn.Module):
    """A bidirectional toy denoiser: logits from each token and its right neighbour."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(MASK + 1, MASK + 1)
        self.right = torch.nn.Embedding(MASK + 1, MASK + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nxt = torch.roll(x, -1, dims=1)
        return self.emb(x) + self.right(nxt)


@torch.no_grad()
def _reference_loss(model: Lookup, x0: torch.Tensor, eligible: torch.Tensor, seed: int) -> float:
    """The same draws (t per sequence, then a uniform per position) and LLaDA's formula, one
    sequence and one token at a time."""
    torch.manual_seed(seed)
    b, n = x0.shape
    t = torch.rand(b)
    u = torch.rand(b, n)
    total = 0.0
    for i in range(b):
        p = (1 - MIN_MASK_RATIO) * float(t[i]) + MIN_MASK_RATIO
        masked = [j for j in range(n) if float(u[i, j]) < p and bool(eligible[i, j])]
        noisy = x0[i].clone()
        noisy[masked] = MASK
        logits = model(noisy[None])[0]
        for j in masked:
            ce = -float(F.log_softmax(logits[j].double(), -1)[x0[i, j]])
            total += ce / p / int(eligible[i].sum())
    return total / b


def test_loss_matches_a_token_loop_on_text() -> None:
    model = Lookup()
    x0 = torch.randint(0, MASK, (3, 11), generator=torch.Generator().manual_seed(1))
    batch = Batch(x0, x0, torch.ones_like(x0, dtype=torch.bool))
    torch.manual_seed(5)
    loss, parts = MaskedDiffusion(MASK).loss(model, batch)
    expected = _reference_loss(model, x0, torch.ones_like(x0, dtype=torch.bool), 5)
    assert math.isclose(float(loss), expected, rel_tol=1e-5)
    assert parts["masked_ce"] > 0


def test_loss_masks_only_the_answers_of_a_task() -> None:
    model = Lookup()
    task = AssociativeRecall(seq_len=12, vocab_size=MASK, num_pairs=2)
    raw = task.sample(np.random.default_rng(0), 4)
    batch = Batch.of(raw, torch.device("cpu"))
    x0, eligible = denoising_example(batch)
    # recall: the answer (a value) is the token after the query key, which the sequence holds
    assert torch.equal(x0, batch.inputs)
    assert torch.equal(eligible[:, 1:], batch.mask[:, :-1]) and not eligible[:, 0].any()
    assert torch.equal(x0[eligible], batch.targets[batch.mask])
    torch.manual_seed(3)
    loss, _ = MaskedDiffusion(MASK).loss(model, batch)
    assert math.isclose(float(loss), _reference_loss(model, x0, eligible, 3), rel_tol=1e-5)


def test_selective_copy_answers_replace_their_markers() -> None:
    raw = SelectiveCopy(seq_len=12, vocab_size=MASK, num_tokens=3).sample(
        np.random.default_rng(0), 2
    )
    x0, eligible = denoising_example(Batch.of(raw, torch.device("cpu")))
    assert torch.equal(eligible, torch.from_numpy(raw.mask))
    assert torch.equal(x0[eligible], torch.from_numpy(raw.targets[raw.mask]))
    assert torch.equal(x0[~eligible], torch.from_numpy(raw.inputs[~raw.mask]))


def test_validation_is_deterministic_and_scores_the_answers() -> None:
    from archgen.train.config import TrainConfig
    from archgen.train.data import TrainingData

    task = AssociativeRecall(seq_len=12, vocab_size=MASK, num_pairs=2)
    data = TrainingData(task, task=task)
    batches = [task.sample(np.random.default_rng(i), 4) for i in range(2)]
    objective, model = MaskedDiffusion(MASK), Lookup()
    cpu, config = torch.device("cpu"), TrainConfig(steps=1)
    first = objective.evaluate(model, batches, data, config, cpu)  # type: ignore[arg-type]
    torch.manual_seed(123)  # the global generator does not move validation's masks
    assert objective.evaluate(model, batches, data, config, cpu) == first  # type: ignore[arg-type]
    assert 0.0 <= first["accuracy"] <= 1.0 and first["loss"] > 0


@pytest.mark.parametrize("kind", ["compression"])
def test_tasks_whose_cues_carry_the_question_are_refused(kind: str) -> None:
    from archgen.train.data import TrainingData
    from archgen.train.diffusion import diffusion_data_problem
    from archgen.train.tasks import TASKS

    task = TASKS[kind]()
    problem = diffusion_data_problem(TrainingData(task, task=task), mask_token=1000)
    assert problem is not None and "cannot be a prompt/answer pair" in problem
    assert isinstance(raw := task.sample(np.random.default_rng(0), 1), TaskBatch) and raw.mask.any()
