"""Image-classification specs: the examples compile and cost per grid, the IR passes run on
them, `check` / `--resolved` / the JSON Schema work, and bad input exits 2 with file:line."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import torch
import yaml

from archgen import api
from archgen.backends.torch_model import build_model
from archgen.ir.cost import node_tokens
from archgen.ir.graph import Graph
from archgen.passes import AnnotateCost, InferShapes, Verify, run_pipeline
from archgen.spec.expand import graph_from_spec
from archgen.spec.loader import parse_spec
from tests.conftest import ROOT, archgen

# the small examples (32x32, <= 2M parameters); official-size specs have their own tests
VISION_EXAMPLES = sorted((ROOT / "examples" / "vision").glob("*-tiny.yaml"))

SMALL = """\
model:
  name: small
  task: image-classification
  image_size: 12
  in_channels: 3
  num_classes: 4
  stages:
    - width: 8
      depth: 1
      downsample: {kind: patch_embed, stride: 2, kernel: 3}
      block:
        - token_mixer: {kind: raft, axis: vertical}
        - token_mixer: {kind: raft, axis: horizontal}
          channel_mixer: {kind: convglu, hidden: 6}
    - width: 12
      depth: 2
      downsample: {kind: patch_merge}
      block:
        - token_mixer: {kind: attention, heads: 3, rope_theta: null}
          channel_mixer: {kind: mlp, hidden: 16}
"""


def test_there_are_vision_examples() -> None:
    assert len(VISION_EXAMPLES) >= 2


@pytest.mark.parametrize("path", VISION_EXAMPLES, ids=lambda p: p.stem)
def test_example_compiles_costs_and_runs(path: Path) -> None:
    graph = api.compile_spec(path)
    model = build_model(graph)
    image = graph.model.image
    assert image is not None
    # the IR's parameter count is the torch model's, and <= 2M (the small-example budget)
    params = sum(n.op.params() for n in graph.nodes)
    assert params == sum(p.numel() for p in model.parameters()) <= 2_000_000
    x = torch.randn(2, image.image_size, image.image_size, image.in_channels)
    assert model(x).shape == (2, image.num_classes)


@pytest.mark.parametrize("path", VISION_EXAMPLES, ids=lambda p: p.stem)
def test_ir_passes_run_on_vision_examples(path: Path) -> None:
    """verify / infer_shapes / annotate_cost, the passes that apply to vision graphs (the
    rewrites compress_segments and replace_mixer are LM-only; tests/passes globs
    examples/*.yaml, so it does not see examples/vision)."""
    graph = graph_from_spec(api.load_spec(path))
    typed = run_pipeline(graph, [Verify(), InferShapes(), AnnotateCost()])
    assert AnnotateCost().run(typed).changed is False  # idempotent
    costed = {n.name: n.annotations["cost_seq_len"] for n in typed.nodes}
    assert costed["stages.0.downsample"] == 32 * 32  # it reads the whole image
    assert costed["stages.0.layers.0.token_mixer"] == 8 * 8
    assert costed["stages.1.layers.0.token_mixer"] == 4 * 4
    assert costed["logits"] == 4 * 4


def _small() -> Graph:
    return api.compile_spec(parse_spec(SMALL, "small.yaml"))


def test_costs_follow_each_grid() -> None:
    graph = _small()
    tokens = node_tokens(graph, 0)
    assert tokens["stages.0.downsample"] == 144 and tokens["stages.0.layers.0.token_norm"] == 36
    assert tokens["stages.1.layers.1.channel_mixer"] == 9
    # raft (vertical, r=2, e=2, H=6): the MLP 12 -> 24 -> 12 over (8/2 rafts x 6 columns)
    raft = graph.node("stages.0.layers.0.token_mixer").op
    assert raft.params() == 12 * 24 + 24 + 24 * 12 + 12
    assert raft.flops(36) == 2 * (2 * 12 * 24 * 24) + 24 * 24


def test_check_prints_params_flops_and_activations() -> None:
    path = VISION_EXAMPLES[0]
    done = archgen("check", str(path))
    assert done.returncode == 0, done.stderr
    report = api.check(path)
    assert f"{report.total.params:,}" in done.stdout
    assert "activations" in done.stdout and "per 32x32x3 image" in done.stdout


def test_resolved_round_trips_and_matches_the_schema(tmp_path: Path) -> None:
    for path in VISION_EXAMPLES:
        done = archgen("check", str(path), "--resolved")
        assert done.returncode == 0, done.stderr
        resolved = tmp_path / path.name
        resolved.write_text(done.stdout)
        # every auto attribute filled in, and the same model
        assert "hidden:" in done.stdout or "kernel:" in done.stdout
        assert api.check(resolved).total == api.check(path).total
    schema = api.json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    for path in [*VISION_EXAMPLES, ROOT / "examples" / "transformer.yaml"]:
        assert not list(validator.iter_errors(yaml.safe_load(path.read_text()))), path
    bad = yaml.safe_load(SMALL)
    bad["model"]["stages"][0]["width"] = "wide"
    assert list(validator.iter_errors(bad))


BAD = {
    "indivisible-image": (
        SMALL.replace("image_size: 12", "image_size: 14"),
        "small.yaml:4:15: model.image_size: 14 cannot be divided by the stages' downsampling: "
        "stage 1 gets a 7x7 grid, not divisible by its stride 2 (use a multiple of 4",
    ),
    "raft-size-vs-width": (
        SMALL.replace("axis: vertical}", "axis: vertical, raft_size: 3}"),
        "model.stages[0].block[0].token_mixer.raft_size: the stage width 8 is not divisible by "
        "raft_size 3",
    ),
    "sequence-mixer-in-stage": (
        SMALL.replace("{kind: attention, heads: 3, rope_theta: null}", "{kind: mamba}"),
        "model.stages[1].block[0].token_mixer.kind: 'mamba' runs on 1-D sequences only",
    ),
    "even-overlapping-kernel": (
        SMALL.replace("kernel: 3", "kernel: 4"),
        "model.stages[0].downsample.kernel: must equal stride 2 or be odd and larger",
    ),
    "unknown-downsample": (
        SMALL.replace("patch_merge", "patch_merging"),
        "unknown downsampling kind 'patch_merging' (did you mean 'patch_merge'?)",
    ),
    "raft-in-causal-lm": (
        "model:\n  vocab_size: 256\n  d_model: 16\n  max_seq_len: 32\n"
        "  layers: [{token_mixer: {kind: raft}}]\n",
        "small.yaml:5:33: model.layers[0].token_mixer.kind: 'raft' mixes a 2-D token grid "
        "(task image-classification only) and is not causal, but task 'causal-lm' has 1-D",
    ),
    "bidirectional-attention-in-causal-lm": (
        "model:\n  vocab_size: 256\n  d_model: 16\n  max_seq_len: 32\n"
        "  layers: [{token_mixer: {kind: dense, causal: false}}]\n",
        "'dense' is not causal here, but task 'causal-lm' needs causal token mixers",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_vision_input_exits_2_with_the_field(case: str, tmp_path: Path) -> None:
    text, expected = BAD[case]
    spec = tmp_path / "small.yaml"
    spec.write_text(text)
    done = archgen("check", "small.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
