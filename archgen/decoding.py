"""Decoding policies of masked-diffusion LMs, and the host-side loop that runs them.

Generation starts from the prompt followed by ``G`` mask tokens and fills the answer in
semi-autoregressive blocks of ``block`` positions (LLaDA): while the current block holds masks,
the denoiser reads the whole sequence once (one *function evaluation*, NFE), every masked
position of the block gets its greedy prediction and confidence (its probability), and the
policy chooses which of them to commit -- always at least one, so a block of ``b`` masks takes
at most ``b`` calls. Policies (research/mixers.md §9):

* ``confidence{tokens=1,block=32}`` -- LLaDA's low-confidence remasking: commit the ``tokens``
  most confident predictions per call (a fixed number of tokens per step).
* ``threshold{tau=0.9,block=32}`` -- commit every prediction with confidence ``>= tau``; the most
  confident one when none reaches it.
* ``localleap{tau=0.9,tau_relax=0.75,radius=4,block=32}`` -- LocalLeap (arXiv 2510.07081):
  *anchors* are the masked positions with confidence ``>= tau``; within ``radius`` positions of
  an anchor a prediction is committed at ``>= tau_relax``, elsewhere at ``>= tau``; the most
  confident one always. With ``tau_relax == tau`` it is exactly ``threshold``.

Everything is greedy (temperature 0) and deterministic: ties in confidence go to the leftmost
position. The denoiser is any callable ``tokens [1, L] -> logits [1, L, V]`` (an eager model, or
another backend's artifact); the loop is plain Python around it.

>>> policy = parse_decoder("localleap{tau=0.9,radius=2}")
>>> policy.select([0.95, 0.8, 0.5], [10, 12, 20])
[10, 12]
"""

from __future__ import annotations

import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from archgen.errors import ArchgenError

Denoiser = Callable[[torch.Tensor], torch.Tensor]  # tokens [1, L] int64 -> logits [1, L, V]


def _most_confident(confidences: Sequence[float], positions: Sequence[int]) -> int:
    """The position of the highest confidence (the leftmost one among ties)."""
    best = max(range(len(positions)), key=lambda i: (confidences[i], -positions[i]))
    return positions[best]


@dataclass(frozen=True)
class DecodePolicy:
    """Base of the policies: ``block`` positions decoded at a time, and :meth:`select`."""

    name: ClassVar[str]
    block: int = 32

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise ArchgenError(f"--decoder {self.name}: {problem}", hint=self.hint())

    def problem(self) -> str | None:
        if self.block < 1:
            return f"block must be >= 1, got {self.block}"
        return None

    @classmethod
    def hint(cls) -> str:
        opts = ",".join(f"{f.name}={f.default}" for f in fields(cls))
        return f"e.g. --decoder '{cls.name}{{{opts}}}' (the defaults)"

    def check_length(self, gen_length: int) -> None:
        """Refuse a generation length the blocks do not tile."""
        if gen_length < 1:
            raise ArchgenError(f"the generation length must be >= 1, got {gen_length}")
        if gen_length % self.block:
            raise ArchgenError(
                f"--decoder {self.name}: block {self.block} does not divide the generation "
                f"length {gen_length}",
                hint="choose a block that divides --max-new-tokens",
            )

    def select(self, confidences: Sequence[float], positions: Sequence[int]) -> list[int]:
        """The masked ``positions`` (ascending, of the current block) to commit, given their
        ``confidences``; never empty."""
        raise NotImplementedError


def _check_tau(tau: float, name: str = "tau") -> str | None:
    if not 0.0 < tau <= 1.0:
        return f"{name} must be in (0, 1], got {tau}"
    return None


@dataclass(frozen=True)
class ConfidenceDecoder(DecodePolicy):
    """LLaDA's low-confidence remasking: the ``tokens`` most confident predictions per call."""

    name: ClassVar[str] = "confidence"
    tokens: int = 1

    def problem(self) -> str | None:
        if self.tokens < 1:
            return f"tokens must be >= 1, got {self.tokens}"
        return super().problem()

    def select(self, confidences: Sequence[float], positions: Sequence[int]) -> list[int]:
        order = sorted(range(len(positions)), key=lambda i: (-confidences[i], positions[i]))
        return sorted(positions[i] for i in order[: self.tokens])


@dataclass(frozen=True)
class ThresholdDecoder(DecodePolicy):
    """Every prediction with confidence ``>= tau``; the most confident one when none is."""

    name: ClassVar[str] = "threshold"
    tau: float = 0.9

    def problem(self) -> str | None:
        return _check_tau(self.tau) or super().problem()

    def select(self, confidences: Sequence[float], positions: Sequence[int]) -> list[int]:
        chosen = {p for c, p in zip(confidences, positions, strict=True) if c >= self.tau}
        chosen.add(_most_confident(confidences, positions))
        return sorted(chosen)


@dataclass(frozen=True)
class LocalLeapDecoder(DecodePolicy):
    """LocalLeap: a relaxed threshold near high-confidence anchors (module docstring)."""

    name: ClassVar[str] = "localleap"
    tau: float = 0.9
    tau_relax: float = 0.75
    radius: int = 4

    def problem(self) -> str | None:
        if found := _check_tau(self.tau) or _check_tau(self.tau_relax, "tau_relax"):
            return found
        if self.tau_relax > self.tau:
            return f"tau_relax ({self.tau_relax}) must be <= tau ({self.tau})"
        if self.radius < 0:
            return f"radius must be >= 0, got {self.radius}"
        return super().problem()

    def select(self, confidences: Sequence[float], positions: Sequence[int]) -> list[int]:
        anchors = [p for c, p in zip(confidences, positions, strict=True) if c >= self.tau]
        chosen = {_most_confident(confidences, positions)}
        for c, p in zip(confidences, positions, strict=True):
            near = any(abs(p - a) <= self.radius for a in anchors)
            if c >= (self.tau_relax if near else self.tau):
                chosen.add(p)
        return sorted(chosen)


DECODERS: dict[str, type[DecodePolicy]] = {
    cls.name: cls for cls in (ConfidenceDecoder, ThresholdDecoder, LocalLeapDecoder)
}


def parse_decoder(text: str) -> DecodePolicy:
    """``"localleap{tau=0.9,radius=4}"`` -> a policy (the option syntax of ``--passes``)."""
    from archgen.passes.pipeline import convert_value, split_item, suggest

    name, raw = split_item(text, "--decoder", DECODERS)
    cls = DECODERS[name]
    known = {f.name for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, object] = {}
    for key, value in raw.items():
        if key not in known:
            raise ArchgenError(
                f"--decoder {name}: unknown option {key!r}", hint=suggest(key, sorted(known))
            )
        values[key] = convert_value(value, hints[key], f"--decoder {name}: option {key}")
    return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Decoding:
    """A finished generation: the answer, and what it cost in denoiser calls."""

    prompt_tokens: list[int]
    new_tokens: list[int]
    committed_per_call: tuple[int, ...]  # tokens committed by each denoiser call
    seconds: float

    @property
    def nfe(self) -> int:
        """Number of function (denoiser) evaluations."""
        return len(self.committed_per_call)

    @property
    def tokens_per_call(self) -> float:
        return len(self.new_tokens) / self.nfe if self.nfe else 0.0

    @property
    def text(self) -> str:
        return bytes(t for t in self.new_tokens if t < 256).decode("utf-8", errors="replace")


@torch.no_grad()
def decode(
    denoiser: Denoiser,
    prompt_tokens: list[int],
    gen_length: int,
    policy: DecodePolicy,
    *,
    mask_token: int,
    max_seq_len: int | None = None,
) -> Decoding:
    """Fill ``gen_length`` masked positions after ``prompt_tokens`` with ``policy``."""
    policy.check_length(gen_length)
    total = len(prompt_tokens) + gen_length
    if max_seq_len is not None and total > max_seq_len:
        raise ArchgenError(
            f"prompt ({len(prompt_tokens)} tokens) + generation ({gen_length}) = {total} exceeds "
            f"the model's max_seq_len {max_seq_len}"
        )
    x = torch.tensor([[*prompt_tokens, *([mask_token] * gen_length)]], dtype=torch.int64)
    start, committed = time.perf_counter(), []
    for lo in range(len(prompt_tokens), total, policy.block):
        hi = lo + policy.block
        while True:
            positions = [lo + i for i, t in enumerate(x[0, lo:hi].tolist()) if t == mask_token]
            if not positions:
                break
            logits = denoiser(x)[0].float()  # [L, V]
            logits[:, mask_token] = float("-inf")  # committing a mask would commit nothing
            conf, pred = logits.softmax(-1).max(-1)
            chosen = policy.select([float(conf[p]) for p in positions], positions)
            assert chosen and set(chosen) <= set(positions), (policy, chosen)
            x[0, chosen] = pred[chosen]
            committed.append(len(chosen))
    new = x[0, len(prompt_tokens) :].tolist()
    return Decoding(list(prompt_tokens), new, tuple(committed), time.perf_counter() - start)


__all__ = [
    "DECODERS",
    "ConfidenceDecoder",
    "DecodePolicy",
    "Decoding",
    "Denoiser",
    "LocalLeapDecoder",
    "ThresholdDecoder",
    "decode",
    "parse_decoder",
]
