"""Incremental decoding: step-by-step logits equal the full forward for every example model, and
greedy generation picks what the full forward would."""

from __future__ import annotations

import pytest
import torch

from archgen import api
from archgen.backends.onnx_decode import DecodeStepModule, decode_support, probe_state
from archgen.backends.torch_model import build_model
from archgen.generate import encode_prompt, generate
from tests.conftest import EXAMPLES
from tests.tolerances import assert_close


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_decode_reproduces_forward(spec) -> None:
    graph = api.compile_spec(spec)
    if graph.model.task != "causal-lm":
        pytest.skip(f"{spec.stem} is a {graph.model.task}: a bidirectional denoiser has no decode")
    model = build_model(graph, dtype=torch.float64).eval()
    n = 23  # crosses SCOUT segment boundaries (s=10) and is odd
    tokens = torch.randint(0, graph.model.vocab_size, (2, n))
    with torch.no_grad():
        full = model(tokens)
        state = model.init_state(2)
        steps = []
        for t in range(n):
            logits, state = model.step(tokens[:, t], state, torch.tensor(t))
            steps.append(logits)
    assert_close(torch.stack(steps, dim=1), full)


def test_greedy_generation_matches_full_forward_argmax() -> None:
    spec = next(p for p in EXAMPLES if p.stem == "transformer")
    model = build_model(api.compile_spec(spec), seed=5).eval()
    prompt = encode_prompt("hello", 256)
    result = generate(model, prompt, 8, temperature=0)
    sequence = prompt + result.new_tokens
    with torch.no_grad():
        logits = model(torch.tensor([sequence[:-1]]))
    expected = logits[0, len(prompt) - 1 :].argmax(-1).tolist()
    assert result.new_tokens == expected


def _padded_logits(model, prompts: list[list[int]]) -> torch.Tensor:
    """Logits ``[B, L, V]`` of left-padded ``prompts`` stepped together through the decode-step
    graph's eager function (per-sequence positions, padding mask)."""
    width = max(map(len, prompts))
    layout, _ = probe_state(model, len(prompts))
    step = DecodeStepModule(model, layout)
    state = layout.flatten(model.init_state(len(prompts)))
    mask = torch.zeros(len(prompts), 0, dtype=torch.long)
    positions = torch.zeros(len(prompts), 1, dtype=torch.long)
    steps = []
    for t in range(width):
        real = torch.tensor([[t >= width - len(p)] for p in prompts])
        ids = torch.tensor([[p[t - width + len(p)] if t >= width - len(p) else 0] for p in prompts])
        mask = torch.cat([mask, real.long()], dim=1)
        logits, *state = step(ids, positions, mask, *state)
        positions = positions + real.long()
        steps.append(logits[:, 0])
    return torch.stack(steps, dim=1)


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_padded_batch_decodes_as_each_sequence_alone(spec) -> None:
    """Every mixer's step honours per-sequence positions and the padding mask (mixers/base.py);
    the dense mixer refuses instead."""
    graph = api.compile_spec(spec)
    if not decode_support(graph)[0]:
        pytest.skip(f"{spec.stem}: {decode_support(graph)[1]}")
    model = build_model(graph, dtype=torch.float64).eval()
    gen = torch.Generator().manual_seed(0)
    vocab = graph.model.vocab_size
    # 13 tokens: past a SCOUT segment (s = 10)
    short, long = (torch.randint(1, vocab, (n,), generator=gen).tolist() for n in (4, 13))
    with torch.no_grad():
        both = _padded_logits(model, [short, long])
        for b, prompt in enumerate((short, long)):
            alone = model(torch.tensor([prompt]))[0]
            assert_close(both[b, len(long) - len(prompt) :], alone, msg=f"prompt {b}")


def test_dense_mixer_refuses_padded_decoding() -> None:
    from archgen.mixers.dense import DenseMixer

    mixer = DenseMixer(16, heads=2, max_seq_len=8, causal=True, scale_by_length=False)
    state = mixer.init_state(2)
    with pytest.raises(NotImplementedError, match="cannot decode padded batches"):
        mixer.step(torch.randn(2, 16), state, torch.tensor([0, 0]))
