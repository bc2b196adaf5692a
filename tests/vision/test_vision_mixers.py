"""Vision modules: production forward vs the plainly written float64 reference, forward and
backward (inputs and every parameter), on odd grid sizes; IR parameter counts equal torch's."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from archgen.ir import ops
from archgen.mixers.attention import Attention
from archgen.mixers.registry import build_module
from archgen.mixers.spectrum import DynamicSpectrumMixer, dct_matrix
from archgen.mixers.vision import ClassifierHead, ConvGLU, PatchEmbed, PatchMerge, RaftTokenMixer
from tests.vision.reference_check import assert_matches_reference, perturbed

# name -> (module factory, input shape [B, H, W, C]); odd sizes everywhere a module allows them
MODULES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "convglu": (lambda: ConvGLU(11, hidden=9), (2, 5, 7, 11)),
    "convglu-k5": (lambda: ConvGLU(11, hidden=7, kernel=5), (2, 3, 7, 11)),
    "raft-vertical": (lambda: RaftTokenMixer(12, height=5, width=3, raft_size=3), (2, 5, 3, 12)),
    "raft-horizontal": (
        lambda: RaftTokenMixer(12, height=5, width=7, axis="horizontal", raft_size=2),
        (2, 5, 7, 12),
    ),
    "raft-r1": (
        lambda: RaftTokenMixer(7, height=3, width=5, raft_size=1, expansion=3),
        (1, 3, 5, 7),
    ),
    "patch-embed": (lambda: PatchEmbed(9, in_channels=3, stride=3), (2, 9, 6, 3)),
    "conv-stem": (lambda: PatchEmbed(9, in_channels=5, stride=2, kernel=3), (2, 6, 10, 5)),
    "conv-stem-7s4": (lambda: PatchEmbed(5, in_channels=3, stride=4, kernel=7), (1, 12, 8, 3)),
    "patch-merge": (lambda: PatchMerge(13, in_channels=7, factor=2), (2, 6, 10, 7)),
    "patch-merge-3": (lambda: PatchMerge(5, in_channels=3, factor=3), (2, 9, 3, 3)),
    "classifier": (lambda: ClassifierHead(11, num_classes=5), (2, 5, 3, 11)),
    "spectrum": (lambda: DynamicSpectrumMixer(6, height=5, width=3, filters=3), (2, 5, 3, 6)),
    "spectrum-wide": (
        lambda: DynamicSpectrumMixer(5, height=3, width=7, expansion=1, reweight=0.5),
        (1, 3, 7, 5),
    ),
    "attention-grid": (
        lambda: Attention(12, heads=3, causal=False, rope_theta=None),
        (2, 5, 3, 12),
    ),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_matches_reference_forward_and_backward(name: str) -> None:
    make, shape = MODULES[name]
    torch.manual_seed(hash(name) % 1000)
    module = perturbed(
        make().double(), 0.1
    )  # non-trivial biases / norm scales (and a non-zero head)
    x = torch.randn(*shape, dtype=torch.float64)
    assert_matches_reference(module, x)


def test_raft_mixes_its_raft_members_along_the_axis_only() -> None:
    """Vertical raft mixing: output at (y, x, c) depends on inputs of the same column x and the
    same raft b = c mod C/r only (all of its r members, every row)."""
    m = RaftTokenMixer(6, height=4, width=3, raft_size=2).double()
    x = torch.randn(1, 4, 3, 6, dtype=torch.float64, requires_grad=True)
    m(x)[0, 1, 2, 4].backward()  # c = 4: member a = 1 of raft b = 1 (C/r = 3)
    touched = (x.grad[0] != 0).nonzero().tolist()
    assert touched and all(col == 2 and c % 3 == 1 for _, col, c in touched)
    assert {c for *_, c in touched} == {1, 4} and {y for y, *_ in touched} == {0, 1, 2, 3}


OPS = [
    ops.ConvGLU(d_model=24, mlp_ratio=8.0),
    ops.ConvGLU(d_model=10, hidden=7, kernel=5),
    ops.RaftTokenMixer(d_model=12, height=5, width=7, axis="horizontal", raft_size=3),
    ops.PatchEmbed(d_model=16, in_channels=3, stride=4, kernel=7),
    ops.PatchEmbed(d_model=16, in_channels=3, stride=2),
    ops.PatchMerge(d_model=32, in_channels=16, factor=2),
    ops.ClassifierHead(d_model=32, num_classes=10),
    ops.DynamicSpectrumMixer(d_model=12, height=5, width=7, filters=3),
]


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.kind)
def test_ir_parameter_count_is_torch_count(op: ops.Op) -> None:
    module = build_module(op)
    assert op.params() == sum(p.numel() for p in module.parameters())


def test_convglu_hidden_follows_transnext() -> None:
    # TransNeXt-Micro stage 1: dim 48, mlp_ratio 8 -> hidden int(2 * 384 / 3) = 256
    assert ops.ConvGLU(d_model=48, mlp_ratio=8.0).resolved().hidden == 256


def test_dct_is_orthonormal_dct_ii() -> None:
    d = dct_matrix(7, torch.float64)
    assert torch.allclose(d @ d.T, torch.eye(7, dtype=torch.float64), atol=1e-12)
    x = torch.randn(7, dtype=torch.float64)
    n = torch.arange(7, dtype=torch.float64)
    k = 3  # DCT-II of x at frequency k, written out
    want = (2 / 7) ** 0.5 * (x * torch.cos(torch.pi * (2 * n + 1) * k / 14)).sum()
    assert torch.allclose((d @ x)[k], want)
