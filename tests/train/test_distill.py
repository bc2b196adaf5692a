"""Distillation from a teacher: weight copying, feature taps with adapters, falling losses."""

from __future__ import annotations

import json

import torch

from archgen.backends.torch_model import build_model
from archgen.backends.weights import load_weights
from archgen.passes.distillation import wire_distillation
from archgen.train.config import TrainConfig
from archgen.train.distill import DistillConfig, copy_matching, distill
from archgen.train.loop import train
from tests.train.conftest import tiny_graph


def test_copy_matching_copies_same_named_same_shaped_tensors() -> None:
    teacher = build_model(tiny_graph(layers=2), seed=1)
    student = build_model(tiny_graph("{kind: swa, heads: 2, window: 4}", layers=1), seed=2)
    copied = copy_matching(teacher, student)
    theirs = teacher.state_dict()
    expected = [k for k, v in student.state_dict().items()
                if k in theirs and theirs[k].shape == v.shape]  # fmt: skip
    assert sorted(copied) == sorted(expected) and "layers.0.token_mixer.q_proj.weight" in copied
    for name in copied:
        assert torch.equal(student.state_dict()[name], theirs[name])
    wide = build_model(tiny_graph(d_model=32), seed=3)
    assert copy_matching(wide, student) == []  # every shape differs


def test_taps_match_blocks_by_name() -> None:
    taps = wire_distillation(tiny_graph(layers=1), tiny_graph(layers=3)).taps
    assert [t.name for t in taps] == ["layers.0"]


def test_distilling_a_narrower_student_lowers_kd_and_feature_losses(tmp_path, corpus) -> None:
    # a briefly trained teacher: an untrained one predicts near-uniform logits, nothing to learn
    teacher_graph = tiny_graph(d_model=32, layers=2)
    quick = TrainConfig(steps=20, batch_size=8, seq_len=32, lr=1e-2, warmup_steps=2,
                        eval_interval=20, eval_batches=1)  # fmt: skip
    train(teacher_graph, corpus, quick, tmp_path / "teacher", progress=False, log=lambda m: None)
    teacher = build_model(teacher_graph)
    load_weights(teacher, tmp_path / "teacher" / "weights.safetensors")
    student = tiny_graph("{kind: swa, heads: 2, window: 8}", d_model=16, layers=2)
    config = TrainConfig(steps=25, batch_size=4, seq_len=32, lr=1e-2, warmup_steps=2,
                         eval_interval=25, eval_batches=1, log_interval=1)  # fmt: skip
    result = distill(student, teacher, corpus, config, tmp_path / "student",
                     distill_config=DistillConfig(temperature=2.0, ce_weight=0.5),
                     progress=False, log=lambda m: None)  # fmt: skip
    log = (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in log]
    steps = [r for r in records if r["kind"] == "train"]
    assert {"kd", "ce", "feature"} <= set(steps[0])
    first, last = steps[:3], steps[-3:]
    for key in ("kd", "feature"):
        assert sum(r[key] for r in last) < sum(r[key] for r in first), key
    # the width adapters are trained and checkpointed with the student, not saved in its weights
    ckpt = tmp_path / "student" / "checkpoints" / "step_0000025"
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert set(state["extra"]["adapters"]) == {"layers_0.weight", "layers_1.weight"}
    assert result.trained_steps == 25


def test_distill_graph_takes_typed_objects_and_writes_a_model_folder(tmp_path, corpus) -> None:
    from archgen import training

    teacher = build_model(tiny_graph(layers=2), seed=1)
    student = tiny_graph("{kind: swa, heads: 2, window: 8}", layers=2)
    config = TrainConfig(steps=2, batch_size=4, seq_len=32, warmup_steps=1, eval_batches=1)
    start = build_model(student, seed=7)
    result = training.distill_graph(
        student, teacher, corpus, config, tmp_path / "s", init=lambda m: copy_matching(start, m),
        progress=False, log=lambda m: None,
    )  # fmt: skip
    assert result.steps == 2 and "bpb" in result.final
    folder = tmp_path / "s"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["steps"] == 2 and manifest["distill"]["kd_weight"] == 1.0
    assert set(manifest["files"]) >= {p.name + ("/" if p.is_dir() else "")
                                      for p in folder.iterdir()} - {"manifest.json"}  # fmt: skip
    model = training.load_trained(folder)  # the folder works as a --teacher and --weights
    assert model.graph.node("layers.0.token_mixer").op.kind == "swa"
