"""Pass infrastructure: ordering rules, error messages naming the pass, dumps."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import pytest

from archgen import api
from archgen.errors import ArchgenError
from archgen.ir import ops
from archgen.ir.graph import Graph, Node
from archgen.passes import AnnotateCost, InferShapes, PassError, Verify, run_pipeline
from archgen.passes.base import Pass, PassResult
from tests.conftest import EXAMPLES

TRANSFORMER = next(p for p in EXAMPLES if p.stem == "transformer")


def _graph() -> Graph:
    from archgen.spec.expand import graph_from_spec

    return graph_from_spec(api.load_spec(TRANSFORMER))


def test_cost_requires_shapes() -> None:
    with pytest.raises(
        PassError, match=r"in pass annotate_cost, as the first pass: requires shapes"
    ):
        run_pipeline(_graph(), [AnnotateCost()])


def test_verify_names_the_bad_node_and_earlier_passes() -> None:
    graph = _graph()
    nodes = list(graph.nodes)
    i = next(k for k, n in enumerate(nodes) if n.op.kind == "attention")
    nodes[i] = replace(nodes[i], op=replace(nodes[i].op, kv_heads=3))  # 8 % 3 != 0
    with pytest.raises(PassError) as info:
        run_pipeline(graph.with_nodes(tuple(nodes)), [InferShapes(), Verify()])
    assert str(info.value) == (
        "in pass verify, after [infer_shapes]: %layers.0.token_mixer.kv_heads: heads 8 is not a "
        "multiple of kv_heads 3"
    )


def test_verify_rejects_use_before_definition() -> None:
    graph = _graph()
    nodes = list(graph.nodes)
    nodes[1] = Node(nodes[1].name, nodes[1].op, ("nowhere",), nodes[1].block)
    with pytest.raises(PassError, match="uses %nowhere before it is defined"):
        run_pipeline(graph.with_nodes(tuple(nodes)), [Verify()])


def test_infer_shapes_reports_width_mismatch() -> None:
    graph = _graph()
    nodes = list(graph.nodes)
    i = next(k for k, n in enumerate(nodes) if n.op.kind == "swiglu")
    nodes[i] = replace(nodes[i], op=ops.SwiGLU(d_model=128, hidden=64))
    with pytest.raises(PassError, match=r"in pass infer_shapes.*layers.0.channel_mixer.*width"):
        run_pipeline(graph.with_nodes(tuple(nodes)), [Verify(), InferShapes()])


def test_non_causal_mixer_in_causal_lm_is_rejected_at_ir_level() -> None:
    graph = _graph()
    nodes = list(graph.nodes)
    i = next(k for k, n in enumerate(nodes) if n.op.kind == "attention")
    nodes[i] = replace(nodes[i], op=ops.DenseMixer(d_model=256, max_seq_len=1024, causal=False))
    with pytest.raises(PassError, match="is not causal in a causal-lm"):
        run_pipeline(graph.with_nodes(tuple(nodes)), [Verify()])


def test_dump_after_calls_back_with_the_graph_after_that_pass() -> None:
    seen: list[tuple[str, bool]] = []
    run_pipeline(
        _graph(),
        [Verify(), InferShapes(), AnnotateCost(seq_len=8)],
        dump_after=["infer_shapes"],
        on_dump=lambda name, g: seen.append((name, bool(g.value_types))),
    )
    assert seen == [("infer_shapes", True)]


def test_dump_after_unknown_pass_is_a_clear_error() -> None:
    with pytest.raises(ArchgenError, match="not in the pipeline: verfy"):
        run_pipeline(_graph(), [Verify()], dump_after=["verfy"])


@dataclass(frozen=True)
class _Exploding(Pass):
    name: ClassVar[str] = "exploding"

    def run(self, graph: Graph) -> PassResult:
        raise ValueError("boom")


def test_errors_inside_a_pass_name_it() -> None:
    with pytest.raises(PassError, match=r"in pass exploding, after \[verify\]: boom"):
        run_pipeline(_graph(), [Verify(), _Exploding()])


def test_default_pipeline_is_idempotent() -> None:
    once = api.compile_spec(TRANSFORMER)
    twice = run_pipeline(once, [Verify(), InferShapes(), AnnotateCost()])
    assert twice == once and dict(twice.value_types) == dict(once.value_types)
