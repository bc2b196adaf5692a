"""The official EfficientViM network's parts: conv stem, patch merging, the multi-stage
hidden-state fusion (MSF) head; the M1 spec's parameter count against the official 6.7M and
one forward at 224x224."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from archgen import api
from archgen.backends.torch_model import build_model
from archgen.ir import ops
from archgen.ir.cost import parameter_count
from archgen.mixers.efficientvim_net import ConvStem, EfficientViMMerge, HiddenStateFusionHead
from archgen.mixers.registry import build_module
from archgen.passes import InferShapes, Verify, run_pipeline
from archgen.spec.loader import parse_spec
from tests.conftest import ROOT, archgen
from tests.tolerances import assert_close
from tests.vision.test_efficientvim import _outputs_and_grads, _perturbed

MODULES: dict[str, tuple[Callable[[], nn.Module], tuple[tuple[int, ...], ...]]] = {
    "conv_stem-s4": (lambda: ConvStem(16, in_channels=3, stride=4), ((2, 9, 7, 3),)),
    "conv_stem-s8": (lambda: ConvStem(8, in_channels=2, stride=8), ((2, 8, 5, 2),)),
    "evim_merge": (lambda: EfficientViMMerge(5, in_channels=3, ratio=3.0), ((2, 5, 7, 3),)),
    "msf_head": (
        lambda: HiddenStateFusionHead(6, num_classes=3, stage_widths=(4, 5)),
        ((2, 3, 5, 6), (2, 7, 4), (2, 3, 5)),
    ),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_matches_reference_forward_and_backward(name: str, training: bool) -> None:
    make, shapes = MODULES[name]
    module = _perturbed(make, hash(name) % 1000).train(training)
    xs = [torch.randn(*s, dtype=torch.float64) for s in shapes]
    prod = _outputs_and_grads(module, module, xs)
    ref = _outputs_and_grads(getattr(module, "reference"), module, xs)  # noqa: B009
    for a, b in zip(prod, ref, strict=True):
        assert_close(a, b)


OPS = [
    ops.ConvStem(d_model=32, in_channels=3),
    ops.ConvStem(d_model=24, in_channels=5, stride=4),
    ops.EfficientViMMerge(d_model=24, in_channels=16),
    ops.EfficientViMMerge(d_model=10, in_channels=7, ratio=3.0),
    ops.HiddenStateFusionHead(d_model=12, num_classes=7, stage_widths=(8, 10, 12)),
]


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.kind)
def test_ir_parameter_count_is_torch_count(op: ops.Op) -> None:
    assert op.params() == sum(p.numel() for p in build_module(op).parameters())


def test_squeeze_excite_width_follows_timm() -> None:
    from archgen.ir.ops.efficientvim_net import se_reduced

    # make_divisible(v, 8, round_limit=0): nearest multiple of 8, at least 8
    assert [se_reduced(c) for c in (768, 20, 100, 36)] == [192, 8, 24, 8]


M1 = ROOT / "examples" / "vision" / "efficientvim-m1.yaml"


def test_m1_parameter_count_is_the_official_and_it_runs_at_224() -> None:
    """The README reports 6.7M parameters (and 239M FLOPs, fvcore's count: multiply-adds) for
    EfficientViM-M1 at 224x224. `archgen check`'s count is the IR's; one forward, batch 1."""
    report = api.check(M1)
    assert 6_650_000 <= report.total.params <= 6_750_000
    assert 0.235e9 <= report.total.flops / 2 <= 0.243e9
    graph = api.compile_spec(M1)
    assert parameter_count(graph) == report.total.params
    model = build_model(graph).eval()
    assert sum(p.numel() for p in model.parameters()) == report.total.params
    with torch.no_grad():
        logits = model(torch.randn(1, 224, 224, 3))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_m1_grids_states_and_head_inputs() -> None:
    typed = run_pipeline(api.compile_spec(M1), [Verify(), InferShapes()])
    grids = [typed.value_types[f"stages.{i}.downsample"].shape[1:3] for i in range(3)]
    assert grids == [(14, 14), (7, 7), (4, 4)]  # 7 rounds up to 4, as the official padded conv
    head = typed.node("logits")
    assert head.op.kind == "msf_head"
    assert head.inputs == (
        "final_norm",
        "stages.0.layers.4.token_mixer.out1",
        "stages.1.layers.4.token_mixer.out1",
        "stages.2.layers.4.token_mixer.out1",
    )
    assert [typed.value_types[v].shape[1:] for v in head.inputs[1:]] == [
        (49, 128),
        (25, 192),
        (9, 320),
    ]


MSF = """\
model:
  name: msf
  task: image-classification
  image_size: 12
  num_classes: 4
  head: hidden_state_fusion
  stages:
    - width: 8
      depth: 1
      downsample: {kind: conv_stem, stride: 4}
      block:
        - {token_mixer: {kind: hsm_ssd, state_dim: 5}, residual: convex}
    - width: 12
      depth: 1
      downsample: {kind: evim_merge, ratio: 2.0}
      block:
        - {token_mixer: {kind: hsm_ssd, state_dim: 3}, residual: convex}
          # a later layer without a hidden state: the stage's last hsm_ssd still feeds the head
        - token_mixer: {kind: dwconv}
"""


def test_msf_model_trains_a_step_and_the_head_reads_every_stage() -> None:
    graph = api.compile_spec(parse_spec(MSF, "msf.yaml"))
    model = build_model(graph)
    assert parameter_count(graph) == sum(p.numel() for p in model.parameters())
    assert graph.node("logits").inputs[1:] == (
        "stages.0.layers.0.token_mixer.out1",
        "stages.1.layers.0.token_mixer.out1",
    )
    model.train()
    model(torch.randn(2, 12, 12, 3)).sum().backward()
    # every stage's hidden state reaches the logits: its SSD's output projection has a gradient
    for stage in (0, 1):
        proj = model.get_submodule(f"stages.{stage}.layers.0.token_mixer").out_proj.weight
        assert proj.grad is not None and proj.grad.abs().sum() > 0


def test_msf_without_an_ssd_in_a_stage_exits_2(tmp_path: Path) -> None:
    spec = tmp_path / "msf.yaml"
    spec.write_text(MSF.replace("{kind: hsm_ssd, state_dim: 3}", "{kind: dwconv}"))
    done = archgen("check", "msf.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "msf.yaml:6:" in done.stderr and "model.head: hidden_state_fusion reads" in done.stderr
    assert "stage(s) [1] have none" in done.stderr and "Traceback" not in done.stderr
