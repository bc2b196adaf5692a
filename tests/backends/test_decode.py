"""Incremental decoding: step-by-step logits equal the full forward for every example model, and
greedy generation picks what the full forward would."""

from __future__ import annotations

import pytest
import torch

from archgen import api
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
