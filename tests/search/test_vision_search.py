"""``archgen search`` on image-classification specs (issue 13 item 6): slots over a stage's or a
layer's mixer kind built on the stage's grid, latency on a batch of images, blockwise quality
on grid blocks, and a winner whose best.yaml checks. Tiny models (16x16 images) keep it fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from archgen import api
from archgen.backends.torch_model import build_model
from archgen.errors import ArchgenError
from archgen.passes import InferShapes, Verify, run_pipeline
from archgen.search_api import SearchOptions, plan_search, run_search
from archgen.spec.expand import graph_from_spec, spec_from_graph
from tests.conftest import ROOT, archgen

SPEC = """
model:
  name: vs-tiny
  task: image-classification
  image_size: 16
  in_channels: 3
  num_classes: 8
  stages:
    - width: 8
      depth: 2
      downsample: {kind: patch_embed, stride: 4}
      block:
        - token_mixer: {kind: attention, heads: 2, rope_theta: null}
          channel_mixer: {kind: mlp, hidden: 16}
    - width: 12
      depth: 1
      downsample: {kind: patch_merge, factor: 2}
      block:
        - token_mixer: {kind: attention, heads: 2, rope_theta: null}
          channel_mixer: {kind: mlp, hidden: 24}
data: {kind: shapes, image_size: 16}
train: {steps: 12, batch_size: 8, lr: 0.003, warmup_steps: 2, eval_interval: 12,
        eval_batches: 2, checkpoint_interval: 12}
search:
  budget: 100%
  trials: 4
  workload: {batch: 3, backend: "null", threads: 1, repeats: 3}
  quality: {fidelity: blockwise, teacher_steps: 12, distill_steps: 3}
  slots:
    - per: stage
      stages: [0]
      token_mixer:
        - {kind: attention, heads: 2, rope_theta: null}
        - {kind: raft, raft_size: 2}
    - stages: [1]
      channel_mixer:
        - {kind: mlp, hidden: 24}
        - {kind: convglu, hidden: 16}
"""


def write(tmp_path: Path, search: dict | None = None, text: str = SPEC) -> Path:
    doc = yaml.safe_load(text)
    doc["search"].update(search or {})
    path = tmp_path / "vs.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_stage_slots_rewrite_every_layer_of_the_stage_on_its_grid(tmp_path: Path) -> None:
    plan = plan_search(write(tmp_path), SearchOptions(out=tmp_path / "o"))
    space = plan.space
    stage, channel = space.slots
    assert stage.node == "stages.0.token_mixer"
    assert stage.targets == ("stages.0.layers.0.token_mixer", "stages.0.layers.1.token_mixer")
    assert channel.node == channel.targets[0] == "stages.1.layers.0.channel_mixer"
    assert space.size() == 4 and space.base_candidate() == {
        stage.node: "attention", channel.node: "mlp"}  # fmt: skip
    graph = space.graph_for({stage.node: "raft", channel.node: "convglu"})
    for node in stage.targets:  # both layers, built with stage 0's width and 4x4 grid
        op = graph.node(node).op
        assert (op.kind, op.d_model, op.height, op.width) == ("raft", 8, 4, 4)
    assert graph.node("stages.1.layers.0.token_mixer").op.kind == "attention"  # not a target
    # every candidate is a valid grid graph: verified, its shapes inferred, and it runs
    for candidate in space.all_candidates():
        typed = run_pipeline(space.graph_for(candidate), [Verify(), InferShapes()])
        assert typed.value_types["stages.0.layers.1.token_mixer"].shape[1:] == (4, 4, 8)
        assert build_model(typed)(torch.randn(2, 16, 16, 3)).shape == (2, 8)
    assert (
        graph.node(channel.node).op.kind == "convglu" and graph.node(channel.node).op.d_model == 12
    )
    # the workload is a batch of images of the model's size, not token sequences
    w = plan.workload
    assert (w.image_size, w.batch) == (16, 3) and w.shape_key().startswith("images:B3:S16")
    assert "batch of 3 16x16 image" in w.describe()


def test_the_measurer_times_a_batch_of_images(tmp_path: Path) -> None:
    from archgen.search.measure import Measurer

    plan = plan_search(write(tmp_path, {"workload": {"batch": 3, "threads": 1, "repeats": 3}}),
                       SearchOptions(out=tmp_path / "o"))  # fmt: skip
    measurer = Measurer(plan.workload, reference=plan.space.base, warmup=1)
    x = measurer._tokens(plan.space.base)
    assert x.shape == (3, 16, 16, 3) and x.dtype == torch.float32
    assert measurer.measure_graph(plan.space.base, repeats=3) > 0


def test_choices_that_cannot_run_on_the_grid_are_refused_at_file_line(tmp_path: Path) -> None:
    doc = yaml.safe_load(SPEC)
    doc["search"]["workload"]["seq_len"] = 64
    doc["search"]["slots"][0]["token_mixer"] += [{"kind": "swa", "window": 4}, {"kind": "mlp"}]
    doc["search"]["slots"][1]["stages"] = [0, 2]
    doc["search"]["slots"].append({"layers": [1], "stages": [1], "token_mixer": [{"kind": "raft"}]})
    doc["search"]["slots"].append({"stages": [0], "token_mixer": [{"kind": "raft"}]})  # twice
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    done = archgen("check", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    err = done.stderr
    assert f"{path}:" in err  # every message positioned
    assert "search.slots[0].token_mixer[2].kind: 'swa' cannot be a choice" in err
    assert "1-D sequence mixer" in err
    assert "token_mixer[3].kind: 'mlp' is a channel mixer, not a token mixer" in err
    assert "search.slots[1].stages[1]: stage 2 does not exist" in err
    assert "search.slots[2].layers[0]: stage 1 has 1 layers" in err
    assert "search.workload.seq_len: an image model reads whole images" in err
    assert "search.slots[3]: a layer of stage 0 is in this slot and a per-stage one" in err


def test_other_fidelities_are_refused_for_image_models(tmp_path: Path) -> None:
    for fidelity in ("analytic", "capability"):
        with pytest.raises(ArchgenError, match="does not apply to image classifiers"):
            plan_search(write(tmp_path), SearchOptions(out=tmp_path / "o", quality=fidelity))


def test_a_winner_with_mixed_layers_round_trips_through_its_spec() -> None:
    from archgen.passes.replace_mixer import replace_mixers
    from archgen.spec.loader import parse_spec
    from archgen.spec.search_space import search_proposals

    spec = parse_spec(SPEC)
    graph = graph_from_spec(spec)
    assert spec_from_graph(graph).model.stages[0].depth == 2  # equal layers: depth kept
    proposals, _ = search_proposals(spec)
    raft = dict(proposals["stages.0.token_mixer"])["raft"]
    mixed = replace_mixers(graph, {"stages.0.layers.1.token_mixer": raft})
    back = spec_from_graph(mixed)
    stage = back.model.stages[0]
    assert (stage.depth, len(stage.block)) == (1, 2)  # the layers differ: written out
    assert [(n.name, n.op) for n in graph_from_spec(back).nodes] == [
        (n.name, n.op) for n in mixed.nodes]  # fmt: skip


def test_search_runs_and_its_best_yaml_checks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ARCHGEN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    outcome = run_search(write(tmp_path), SearchOptions(out=out, quick=True), log=lambda _: None)
    assert outcome.best is not None and outcome.best_spec == out / "best.yaml"
    done = archgen("check", str(outcome.best_spec))
    assert done.returncode == 0, done.stderr
    best = api.load_spec(outcome.best_spec)
    assert best.search is None and best.model.task == "image-classification"
    # the winner's stage-0 layers share one token mixer (a per-stage slot)
    nodes = api.compile_spec(best).nodes
    kinds = {n.op.kind for n in nodes if n.name.startswith("stages.0.") and "token_mixer" in n.name}
    assert len(kinds) == 1 and kinds <= {"attention", "raft"}
    # best/: the winner with trained weights, validated by accuracy on the shapes data
    winner = outcome.winner
    assert winner is not None and (out / "best" / "weights.safetensors").is_file()
    for v in (winner.teacher, winner.assembled):
        assert v.bpb is None and v.accuracy is not None and 0 <= v.accuracy <= 1
    report = json.loads((out / "report.json").read_text())
    assert "blockwise distillation loss" in report["quality_axis"]
    assert "higher is better" in report["quality_axis"]
    assert report["workload"]["image_size"] == 16
    assert len(report["quality"]["table"]) == 2 * 2 + 2  # (layer, choice) jobs: 2x2 stage, 2

    # a winner with swapped blocks in both stages (8 and 12 wide) assembles and finalises
    from archgen.search.winner import build_winner

    plan = plan_search(write(tmp_path), SearchOptions(out=out, quick=True))
    stage, channel = plan.space.slots
    swapped = {stage.node: "raft", channel.node: "convglu"}
    graph = plan.space.graph_for(swapped)
    winner = build_winner(plan.spec, graph, swapped, plan.space, plan.cache, tmp_path / "w",
                          finalize_steps=2, quick=True, log=lambda _: None)  # fmt: skip
    assert set(winner.assembly.from_blockwise) >= {*stage.targets, channel.node}
    assert winner.finalized is not None and winner.finalized.accuracy is not None
    assert archgen("check", str(winner.folder / "spec.yaml")).returncode == 0


def test_a_budget_below_every_candidate_is_refused_before_training(
    tmp_path: Path, monkeypatch, count_steps
) -> None:
    monkeypatch.setenv("ARCHGEN_CACHE", str(tmp_path / "cache"))
    options = SearchOptions(out=tmp_path / "out", budget="1%", quick=True)
    with pytest.raises(ArchgenError, match="below the measured latency of the cheapest") as e:
        run_search(write(tmp_path), options, log=lambda _: None)
    assert "images:B3:S16" in str(e.value) and count_steps["n"] == 0  # nothing trained
    assert "seq_len" not in (e.value.hint or "")  # an image model has none to shorten


@pytest.mark.parametrize("example", ["efficientvim-tiny", "vim2-mixer-tiny", "iformer-tiny"])
def test_every_vision_structure_round_trips_through_its_spec(example: str) -> None:
    """A winner's best.yaml keeps what the base spec's blocks say beyond their mixers: convex
    residuals, branches without the norm, dense_average, the hidden-state fusion head, per-block
    schedules (written out per layer)."""
    from archgen.spec.loader import load_spec

    graph = graph_from_spec(load_spec(ROOT / "examples" / "vision" / f"{example}.yaml"))
    back = graph_from_spec(spec_from_graph(graph))
    assert [(n.name, n.op, n.inputs) for n in back.nodes] == [
        (n.name, n.op, n.inputs) for n in graph.nodes]  # fmt: skip
