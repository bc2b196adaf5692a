"""Tiny models and corpora shared by the training tests (kept small: 2 shared CPU cores)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from archgen import api
from archgen.ir.graph import Graph
from archgen.spec.loader import parse_spec
from archgen.train.config import TextData
from archgen.train.data import TrainingData, load_data


def tiny_graph(token_mixer: str = "{kind: attention, heads: 2}", d_model: int = 16,
               layers: int = 1, vocab: int = 256, max_seq_len: int = 64) -> Graph:  # fmt: skip
    body = "".join(
        f"\n    - token_mixer: {token_mixer}\n      channel_mixer: {{kind: swiglu}}"
        for _ in range(layers)
    )
    spec = parse_spec(
        f"model:\n  name: tiny\n  vocab_size: {vocab}\n  d_model: {d_model}\n"
        f"  max_seq_len: {max_seq_len}\n  layers:{body}\n"
    )
    return api.compile_spec(spec)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny models run faster on one thread than on two that fight for the shared cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def corpus(tmp_path_factory: pytest.TempPathFactory) -> TrainingData:
    """~40 KB of varied text in 25 documents (a document split)."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(25):
        lines = [f"def f{i}_{j}(x):\n    return x * {j} + {i}  # line {j}\n" for j in range(40)]
        (root / f"m{i}.py").write_text("".join(lines))
    return load_data(TextData(paths=(str(root),)), vocab_size=256, seq_len=32)
