"""Masked-diffusion language modelling (LLaDA, arXiv 2502.09992): the training objective, its
validation, and the view of a batch as a denoising example.

A masked-diffusion LM is a bidirectional denoiser: some tokens of a sequence are replaced by the
mask token (the model's last vocabulary id) and the model predicts them all at once. Training
draws a mask ratio ``t ~ U(0, 1)`` per sequence, masks each eligible position with probability
``t`` and minimises the cross-entropy on the masked positions weighted by ``1 / t`` (an upper
bound on the negative log-likelihood), normalised per sequence by the number of eligible
positions and averaged over the batch -- LLaDA's pre-training loss when every position is
eligible (text), its SFT loss when only the answer of a prompt/answer pair is (capability tasks).

Randomness comes from torch's CPU generator, which checkpoints save and restore, so a resumed
run draws the same masks as an uninterrupted one; validation draws from generators seeded by the
batch index, so its masks are the same at every evaluation.

>>> dlm = MaskedDiffusion(mask_token=256)  # doctest: +SKIP
>>> train(graph, data, cfg, "x", objective=dlm, evaluator=dlm.evaluate)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archgen.backends.torch_model import ArchModel
from archgen.errors import ArchgenError
from archgen.train.config import TrainConfig
from archgen.train.data import TrainingData
from archgen.train.loop import Batch, autocast
from archgen.train.tasks import TaskBatch

# LLaDA's floor on the mask probability: t = 0 would mask nothing and weigh it infinitely.
MIN_MASK_RATIO = 1e-3


def denoising_example(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, eligible)``: the clean sequence ``[B, L]`` and the positions that may be masked.

    Text (every position a target) is its own sequence, all eligible. A capability task marks
    answers in next-token coordinates; as a prompt/answer pair the answer sits where the
    sequence holds it: one position later when the task's targets are its shifted inputs
    (recall tasks), else at the answer position itself, replacing its cue (selective copy's copy
    markers; :func:`diffusion_data_problem` refuses tasks whose cues carry information).
    """
    x, targets, answers = batch.inputs, batch.targets, batch.mask
    if bool(answers.all()):
        return x, answers
    follows = answers[:, :-1] & (x[:, 1:] == targets[:, :-1])
    if not bool(answers[:, -1].any()) and bool((follows == answers[:, :-1]).all()):
        eligible = torch.zeros_like(answers)
        eligible[:, 1:] = answers[:, :-1]
        return x, eligible
    return torch.where(answers, targets, x), answers


def diffusion_data_problem(data: TrainingData, mask_token: int) -> str | None:
    """Why ``data`` cannot train a masked-diffusion LM whose mask token is ``mask_token``."""
    if data.task is not None:
        if data.task.vocab_size > mask_token:
            return (
                f"data ({data.task.kind}) uses token ids up to {data.task.vocab_size - 1}, which "
                f"includes the mask token {mask_token} (the model's last vocabulary id)"
            )
        raw = data.task.sample(np.random.default_rng(0), 4)
        x0, _ = denoising_example(Batch.of(raw, torch.device("cpu")))
        replaced = not torch.equal(x0, torch.from_numpy(raw.inputs))
        cues = np.unique(raw.inputs[raw.mask])
        if replaced and len(cues) > 1:
            return (
                f"task {data.task.kind} cannot be a prompt/answer pair: its answers neither "
                "follow their cue nor replace a marker (the cues differ, so writing the answers "
                "over them would lose the question)"
            )
        return None
    for name, split in (("train", data.train), ("val", data.val)):
        if split is not None and len(split) and int(split.max()) >= mask_token:
            return (
                f"the {name} split holds token id {int(split.max())}, but a masked-diffusion LM "
                f"reserves id {mask_token} (its last vocabulary id) for the mask token"
            )
    return None


def check_diffusion_data(data: TrainingData, mask_token: int) -> None:
    problem = diffusion_data_problem(data, mask_token)
    if problem is not None:
        raise ArchgenError(
            problem,
            hint="a masked-diffusion LM needs model.vocab_size one above the data's ids "
            "(257 for bytes); choose a task whose answers follow their cue",
        )


def _masked_ce(
    model: ArchModel, x0: torch.Tensor, masked: torch.Tensor, mask_token: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the noised sequence and the per-masked-token cross-entropy (float32)."""
    noisy = torch.where(masked, torch.full_like(x0, mask_token), x0)
    logits = model(noisy)
    return logits, F.cross_entropy(logits[masked].float(), x0[masked], reduction="none")


@dataclass
class MaskedDiffusion:
    """LLaDA's objective (see the module docstring); ``evaluate`` is its validation."""

    mask_token: int
    modules: dict[str, nn.Module] = field(default_factory=dict)

    def loss(self, model: ArchModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        x0, eligible = denoising_example(batch)
        b, n = x0.shape
        # drawn on the CPU generator that checkpoints restore (exact resume), then moved
        t = torch.rand(b)
        ratio = ((1 - MIN_MASK_RATIO) * t + MIN_MASK_RATIO)[:, None].expand(b, n)
        masked = (torch.rand(b, n) < ratio).to(x0.device) & eligible
        ratio = ratio.to(x0.device)
        _, ce = _masked_ce(model, x0, masked, self.mask_token)
        per_sequence = eligible.sum(1, keepdim=True).clamp(min=1).expand(b, n)
        loss = (ce / ratio[masked] / per_sequence[masked]).sum() / b
        return loss, {"masked_ce": float(ce.detach().mean()) if ce.numel() else 0.0}

    @torch.no_grad()
    def evaluate(
        self,
        model: ArchModel,
        batches: list[TaskBatch],
        data: TrainingData,
        config: TrainConfig,
        device: torch.device,
    ) -> dict[str, float]:
        """``loss``: mean cross-entropy per masked token, masks drawn per sequence with
        ``t ~ U(0, 1)`` from a generator seeded by the batch index (the same every time).
        Tasks add ``accuracy``: exact match of the argmax over the answers when every answer
        is masked at once (one denoiser call)."""
        was_training = model.training
        model.eval()
        total, count, hits, answers = 0.0, 0, 0, 0
        for i, raw in enumerate(batches):
            x0, eligible = denoising_example(Batch.of(raw, device))
            b, n = x0.shape
            gen = torch.Generator().manual_seed(i)
            t = (1 - MIN_MASK_RATIO) * torch.rand(b, generator=gen) + MIN_MASK_RATIO
            masked = (torch.rand(b, n, generator=gen) < t[:, None]).to(device) & eligible
            with autocast(config, device):
                _, ce = _masked_ce(model, x0, masked, self.mask_token)
            total += float(ce.sum())
            count += int(masked.sum())
            if data.is_task:
                with autocast(config, device):
                    logits, _ = _masked_ce(model, x0, eligible, self.mask_token)
                hits += int((logits.argmax(-1)[eligible] == x0[eligible]).sum())
                answers += int(eligible.sum())
        model.train(was_training)
        out = {"loss": total / max(count, 1)}
        if answers:
            out["accuracy"] = hits / answers
        return out


__all__ = [
    "MIN_MASK_RATIO",
    "MaskedDiffusion",
    "check_diffusion_data",
    "denoising_example",
    "diffusion_data_problem",
]
