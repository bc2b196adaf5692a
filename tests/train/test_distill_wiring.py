"""The objective built from a wired :class:`DistillGraph` computes what the torch-side pairing
did before it (the formula inline below), on tiny pairs of different and equal widths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archgen.backends.torch_model import ArchModel, build_model
from archgen.ir.graph import Graph
from archgen.passes.distillation import wire_distillation
from archgen.train.distill import Distillation, DistillConfig
from archgen.train.loop import Batch, masked_cross_entropy
from tests.train.conftest import tiny_graph


def old_loss(
    teacher: ArchModel,
    student_graph: Graph,
    model: ArchModel,
    batch: Batch,
    cfg: DistillConfig,
    adapters: nn.ModuleDict,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss as train/distill.py computed it before the typed wiring (taps paired by name
    here, in torch), with the adapters given."""
    s_out, t_out = student_graph.block_outputs(), teacher.graph.block_outputs()
    taps = [(b, s_out[b], t_out[b]) for b in student_graph.blocks() if b in t_out]
    taps = taps if cfg.feature_weight > 0 else []
    with torch.no_grad():
        t_logits, t_feats = teacher.run(batch.inputs, capture=tuple(t for *_, t in taps))
    s_logits, s_feats = model.run(batch.inputs, capture=tuple(s for _, s, _ in taps))
    mask, temp = batch.mask, cfg.temperature
    s_log = F.log_softmax(s_logits[mask].float() / temp, dim=-1)
    t_log = F.log_softmax(t_logits[mask].float() / temp, dim=-1)
    kd = F.kl_div(s_log, t_log, log_target=True, reduction="batchmean") * temp**2
    total = cfg.kd_weight * kd
    parts = {"kd": float(kd.detach())}
    if cfg.ce_weight > 0:
        ce = masked_cross_entropy(s_logits, batch)
        total = total + cfg.ce_weight * ce
        parts["ce"] = float(ce.detach())
    if taps:
        feats = []
        for block, s_name, t_name in taps:
            key = block.replace(".", "_")
            target = t_feats[t_name].float()
            x = s_feats[s_name].float()
            diff = (adapters[key](x) if key in adapters else x) - target
            feats.append(diff.pow(2).mean() / target.pow(2).mean().clamp_min(1e-12))
        feature = torch.stack(feats).mean()
        total = total + cfg.feature_weight * feature
        parts["feature"] = float(feature.detach())
    return total, parts


def tiny_batch(seed: int, vocab: int = 256) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, vocab, (2, 11), generator=gen)
    targets = torch.randint(0, vocab, (2, 11), generator=gen)
    mask = torch.rand(2, 11, generator=gen) > 0.3
    return Batch(inputs, targets, mask)


@pytest.mark.parametrize("d_student", [16, 24], ids=["equal-widths", "different-widths"])
@pytest.mark.parametrize(
    "cfg",
    [DistillConfig(), DistillConfig(temperature=3.0, ce_weight=0.5, feature_weight=0.25),
     DistillConfig(feature_weight=0.0, ce_weight=1.0)],
    ids=["default", "ce", "no-features"],
)  # fmt: skip
def test_wired_objective_matches_the_old_formula(d_student: int, cfg: DistillConfig) -> None:
    teacher = build_model(tiny_graph(layers=2), seed=1, dtype=torch.float64)
    student_graph = tiny_graph("{kind: swa, heads: 2, window: 4}", d_model=d_student, layers=3)
    model = build_model(student_graph, seed=2, dtype=torch.float64)
    objective = Distillation(teacher, cfg.wiring(student_graph, teacher.graph))
    batch = tiny_batch(seed=3)

    new_total, new_parts = objective.loss(model, batch)
    new_total.backward()
    new_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    old_total, old_parts = old_loss(teacher, student_graph, model, batch, cfg, objective.adapters)
    old_total.backward()

    assert torch.equal(new_total, old_total)
    assert new_parts == old_parts
    for new, p in zip(new_grads, model.parameters(), strict=True):
        assert torch.equal(new, p.grad)
    # adapters (and their checkpoint names) exactly where the widths differ, as before
    taps = ["layers_0", "layers_1"] if cfg.feature_weight > 0 else []
    assert sorted(objective.adapters) == (taps if d_student != 16 else [])
    assert ("adapters" in objective.modules) == (d_student != 16)


def test_cosine_feature_loss_is_one_minus_cosine_over_the_taps() -> None:
    teacher = build_model(tiny_graph(layers=1), seed=1, dtype=torch.float64)
    student_graph = tiny_graph(layers=1)
    model = build_model(student_graph, seed=2, dtype=torch.float64)
    pair = wire_distillation(
        student_graph, teacher.graph, kd_weight=0.0, feature_weight=2.0, feature_loss="cosine"
    )
    objective = Distillation(teacher, pair)
    batch = tiny_batch(seed=4)
    total, parts = objective.loss(model, batch)
    (value,) = [t.student_value for t in pair.taps]
    _, t_feats = teacher.run(batch.inputs, capture=(value,))
    _, s_feats = model.run(batch.inputs, capture=(value,))
    want = 1.0 - F.cosine_similarity(s_feats[value].float(), t_feats[value].float(), -1).mean()
    assert set(parts) == {"feature"}
    torch.testing.assert_close(total, 2.0 * want)


def test_the_teacher_model_must_be_the_pairs_teacher() -> None:
    from archgen.errors import ArchgenError

    teacher = build_model(tiny_graph(layers=2), seed=1)
    pair = wire_distillation(tiny_graph(layers=1), tiny_graph(layers=1))
    with pytest.raises(ArchgenError, match="not the pair's teacher"):
        Distillation(teacher, pair)
