"""wire_distillation / strip_distillation: the taps, adapters and loss terms of a teacher/student
pair, its printed form, and the errors for pairs that cannot be wired."""

from __future__ import annotations

from dataclasses import replace

import pytest

from archgen import api
from archgen.errors import ArchgenError
from archgen.ir.distill import Adapter, DistillGraph, LossTerm, Tap, print_distill_graph
from archgen.ir.graph import Graph
from archgen.passes import InferShapes, Verify, run_pipeline
from archgen.passes.base import GraphInvalid
from archgen.passes.distillation import strip_distillation, verify_distillation, wire_distillation
from archgen.spec.loader import parse_spec


def graph(d_model: int = 16, layers: int = 2, vocab: int = 256, name: str = "tiny") -> Graph:
    body = "".join(
        "\n    - token_mixer: {kind: attention, heads: 2}\n      channel_mixer: {kind: swiglu}"
        for _ in range(layers)
    )
    return api.compile_spec(
        parse_spec(
            f"model:\n  name: {name}\n  vocab_size: {vocab}\n  d_model: {d_model}\n"
            f"  max_seq_len: 64\n  layers:{body}\n"
        )
    )


def test_default_taps_are_the_shared_blocks_without_adapters_at_equal_widths() -> None:
    student, teacher = graph(layers=2), graph(layers=3, name="teacher")
    pair = wire_distillation(student, teacher)
    assert pair.taps == (
        Tap("layers.0", "layers.0.channel_residual", "layers.0.channel_residual"),
        Tap("layers.1", "layers.1.channel_residual", "layers.1.channel_residual"),
    )
    assert pair.losses == (LossTerm("kl_logits", 1.0, 2.0), LossTerm("feature_mse", 1.0))


def test_an_adapter_maps_the_student_width_to_the_teachers() -> None:
    pair = wire_distillation(graph(d_model=16), graph(d_model=32), taps=["layers.1"])
    assert pair.taps == (
        Tap(
            "layers.1",
            "layers.1.channel_residual",
            "layers.1.channel_residual",
            Adapter(16, 32),
        ),
    )


def test_widths_come_from_inferred_types_when_present() -> None:
    student = run_pipeline(graph(d_model=16), [Verify(), InferShapes()])
    teacher = run_pipeline(graph(d_model=24), [Verify(), InferShapes()])
    pair = wire_distillation(student, teacher)
    assert {t.adapter for t in pair.taps} == {Adapter(16, 24)}


def test_zero_weight_terms_are_omitted_and_taps_only_serve_a_feature_term() -> None:
    student, teacher = graph(d_model=16), graph(d_model=32)
    pair = wire_distillation(student, teacher, ce_weight=0.5, feature_weight=0.0)
    assert [t.kind for t in pair.losses] == ["kl_logits", "ce"] and pair.taps == ()
    pair = wire_distillation(
        student, teacher, kd_weight=0.0, feature_weight=3.0, feature_loss="cosine"
    )
    assert pair.losses == (LossTerm("feature_cosine", 3.0),) and len(pair.taps) == 2
    # no shared block: no feature term either
    lone = graph(layers=1)
    stem_only = replace(lone, nodes=tuple(replace(n, block=None) for n in lone.nodes))
    assert wire_distillation(student, stem_only, ce_weight=1.0).losses == (
        LossTerm("kl_logits", 1.0, 2.0),
        LossTerm("ce", 1.0),
    )


def test_strip_gives_back_the_student() -> None:
    student = graph(d_model=16)
    pair = wire_distillation(student, graph(d_model=32, layers=3), ce_weight=0.1)
    assert strip_distillation(pair) == student
    assert strip_distillation(pair) == graph(d_model=16)  # unchanged, not merely the same object


def test_printer_shows_taps_adapters_losses_then_the_student() -> None:
    student = graph(d_model=16)
    pair = wire_distillation(student, graph(d_model=32, layers=3, name="big"), ce_weight=0.5)
    text = print_distill_graph(pair)
    head = text.split("\ngraph ")[0]
    assert head == (
        "distill tiny <- teacher big (d_model=32, vocab_size=256, blocks=3) {\n"
        "  tap layers.0: %layers.0.channel_residual -> teacher %layers.0.channel_residual"
        " via adapter linear(16 -> 32) {bias=false}\n"
        "  tap layers.1: %layers.1.channel_residual -> teacher %layers.1.channel_residual"
        " via adapter linear(16 -> 32) {bias=false}\n"
        "  loss kl_logits {weight=1.0, temperature=2.0}\n"
        "  loss ce {weight=0.5}\n"
        "  loss feature_mse {weight=1.0} over 2 taps\n"
        "}"
    )
    from archgen.ir import print_graph

    assert text.endswith("\n" + print_graph(student))


def test_a_tap_naming_a_block_one_graph_lacks_is_an_error_naming_it() -> None:
    student, teacher = graph(layers=3), graph(layers=2, name="teacher")
    with pytest.raises(ArchgenError, match=r"tap 'layers.2': the teacher \(teacher\) has no"):
        wire_distillation(student, teacher, taps=["layers.0", "layers.2"])
    with pytest.raises(ArchgenError, match=r"the student \(tiny\) has no block 'layers.9'") as err:
        wire_distillation(student, teacher, taps=["layers.9"])
    assert err.value.hint is not None
    with pytest.raises(ArchgenError, match="more than once"):
        wire_distillation(student, teacher, taps=["layers.0", "layers.0"])
    with pytest.raises(ArchgenError, match="shared-blocks"):
        wire_distillation(student, teacher, taps="layers.0")


def test_vocab_sizes_that_differ_are_an_error() -> None:
    with pytest.raises(ArchgenError, match="vocab_size 512 differs from the student's 256"):
        wire_distillation(graph(vocab=256), graph(vocab=512))


def test_bad_options_are_errors() -> None:
    student, teacher = graph(), graph()
    with pytest.raises(ArchgenError, match="nothing to train"):
        wire_distillation(student, teacher, kd_weight=0.0, feature_weight=0.0)
    with pytest.raises(ArchgenError, match="temperature must be > 0"):
        wire_distillation(student, teacher, temperature=0.0)
    with pytest.raises(ArchgenError, match="feature_loss"):
        wire_distillation(student, teacher, feature_loss="l1")  # type: ignore[arg-type]


def test_verify_rejects_a_hand_built_pair_that_breaks_the_rules() -> None:
    student, teacher = graph(d_model=16), graph(d_model=32)
    good = wire_distillation(student, teacher)
    verify_distillation(good)
    bad = DistillGraph(
        student,
        teacher,
        (
            Tap("layers.0", "layers.0.channel_residual", "nowhere"),
            replace(good.taps[1], adapter=None),
        ),
        (LossTerm("ce", 1.0), LossTerm("ce", 2.0)),
    )
    with pytest.raises(GraphInvalid) as err:
        verify_distillation(bad)
    message = str(err.value)
    assert "tap 'layers.0': the teacher has no value %nowhere" in message
    assert (
        "tap 'layers.1': widths 16 -> 32 need linear(16 -> 32), the tap has no adapter" in message
    )
    assert "loss ce appears more than once" in message
    assert "taps without a feature loss" in message


def test_loss_terms_check_their_fields() -> None:
    with pytest.raises(ValueError, match="takes no temperature"):
        LossTerm("ce", 1.0, 2.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        LossTerm("kl_logits", 1.0)
    with pytest.raises(ValueError, match="weight must be finite"):
        LossTerm("feature_mse", float("nan"))
    with pytest.raises(ValueError, match="unknown loss kind"):
        LossTerm("l1", 1.0)  # type: ignore[arg-type]
