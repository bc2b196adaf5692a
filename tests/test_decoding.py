"""Masked-diffusion decoding policies on a stub denoiser whose confidences the test sets."""

from __future__ import annotations

import math

import pytest
import torch

from archgen.decoding import (
    ConfidenceDecoder,
    LocalLeapDecoder,
    ThresholdDecoder,
    decode,
    parse_decoder,
)
from archgen.errors import ArchgenError

MASK = 4  # vocabulary: tokens 0..3, the mask token 4


class Stub:
    """A denoiser predicting token ``1 + position % 3`` at every position with a confidence
    ``table(call, position)`` in [0.25, 1]; counts its calls."""

    def __init__(self, table) -> None:
        self.table, self.calls = table, 0

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        probs = torch.zeros(1, n, MASK + 1, dtype=torch.float64)
        for p in range(n):
            c = self.table(self.calls, p)
            probs[0, p, :MASK] = (1 - c) / 3
            probs[0, p, 1 + p % 3] = c
        self.calls += 1
        return probs.log()  # the mask token's probability is 0: logit -inf


def _random_table(seed: int):
    gen = torch.Generator().manual_seed(seed)
    table = 0.25 + 0.75 * torch.rand(64, 64, generator=gen, dtype=torch.float64)
    return lambda call, p: float(table[call, p])


PROMPT = [0, 1, 2]


def test_localleap_with_tau_relax_equal_to_tau_is_threshold() -> None:
    for seed in range(5):
        for tau in (0.3, 0.6, 0.9):
            a = decode(
                Stub(_random_table(seed)), PROMPT, 16, ThresholdDecoder(tau=tau, block=8),
                mask_token=MASK,
            )  # fmt: skip
            b = decode(
                Stub(_random_table(seed)), PROMPT, 16,
                LocalLeapDecoder(tau=tau, tau_relax=tau, radius=3, block=8), mask_token=MASK,
            )  # fmt: skip
            assert a.new_tokens == b.new_tokens
            assert a.committed_per_call == b.committed_per_call
            assert sum(a.committed_per_call) == 16


def test_threshold_no_token_reaches_commits_one_per_call_most_confident_first() -> None:
    # confidence rises with the position: each call commits the rightmost masked position
    stub = Stub(lambda call, p: 0.3 + 0.01 * p)
    result = decode(stub, PROMPT, 8, ThresholdDecoder(tau=0.99, block=8), mask_token=MASK)
    assert result.committed_per_call == (1,) * 8 and result.nfe == stub.calls == 8
    assert result.new_tokens == [1 + p % 3 for p in range(3, 11)]
    assert result.tokens_per_call == 1.0


def test_blocks_are_semi_autoregressive() -> None:
    # the second block is only touched once the first is full: its confident tokens wait
    stub = Stub(lambda call, p: 0.95 if p >= 7 else 0.5)
    result = decode(stub, PROMPT, 8, ThresholdDecoder(tau=0.9, block=4), mask_token=MASK)
    assert result.committed_per_call == (1, 1, 1, 1, 4)


def test_confidence_commits_a_fixed_number_per_call() -> None:
    stub = Stub(_random_table(0))
    result = decode(stub, PROMPT, 12, ConfidenceDecoder(tokens=3, block=6), mask_token=MASK)
    assert result.committed_per_call == (3, 3, 3, 3)
    # the first call commits the 3 most confident of positions 3..8
    first = sorted(range(3, 9), key=lambda p: -_random_table(0)(0, p))[:3]
    assert ConfidenceDecoder(tokens=3).select(
        [_random_table(0)(0, p) for p in range(3, 9)], list(range(3, 9))
    ) == sorted(first)


def test_localleap_relaxes_only_near_anchors() -> None:
    policy = LocalLeapDecoder(tau=0.9, tau_relax=0.75, radius=2, block=32)
    positions = [0, 1, 2, 3, 5, 9, 10]
    conf = [0.80, 0.95, 0.80, 0.76, 0.80, 0.85, 0.50]
    # anchor 1 (>= tau): 0, 2, 3 are within 2 and >= 0.75; 5 and 9 are outside and < tau
    assert policy.select(conf, positions) == [0, 1, 2, 3]
    # no anchor: only the most confident (leftmost among ties) is committed
    assert policy.select([0.8, 0.85, 0.85], [4, 6, 7]) == [6]
    # radius 0: only the anchors themselves (and the best)
    assert LocalLeapDecoder(radius=0).select(conf, positions) == [1]


def test_localleap_takes_fewer_calls_than_threshold_on_a_confident_neighbourhood() -> None:
    table = lambda call, p: 0.95 if p == 5 else 0.8  # noqa: E731
    thr = decode(Stub(table), PROMPT, 8, ThresholdDecoder(block=8), mask_token=MASK)
    leap = decode(Stub(table), PROMPT, 8, LocalLeapDecoder(block=8), mask_token=MASK)
    assert thr.nfe == 8  # only position 5 ever reaches 0.9
    assert leap.committed_per_call[0] == 7  # positions 3..9 are within 4 of the anchor 5
    assert leap.new_tokens == thr.new_tokens
    assert leap.nfe == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("localleap{tau=0.8,tau_relax=0.9}", "tau_relax (0.9) must be <= tau (0.8)"),
        ("localleap{radius=-1}", "radius must be >= 0"),
        ("threshold{tau=1.5}", "tau must be in (0, 1]"),
        ("confidence{tokens=0}", "tokens must be >= 1"),
        ("confidence{block=0}", "block must be >= 1"),
        ("localleap{tau=x}", "expected a number"),
        ("localleap{taux=1}", "unknown option 'taux'"),
        ("beam", "unknown decoder 'beam'"),
    ],
)
def test_bad_decoder_options(text: str, message: str) -> None:
    with pytest.raises(ArchgenError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_decoder(text)


def test_block_must_divide_the_generation_length() -> None:
    with pytest.raises(ArchgenError, match="block 32 does not divide the generation length 40"):
        decode(Stub(_random_table(0)), PROMPT, 40, LocalLeapDecoder(), mask_token=MASK)


def test_defaults_are_the_papers() -> None:
    policy = parse_decoder("localleap")
    assert (policy.tau, policy.tau_relax, policy.radius, policy.block) == (0.9, 0.75, 4, 32)
    assert math.isclose(parse_decoder("threshold{tau=0.5}").tau, 0.5)  # type: ignore[attr-defined]
