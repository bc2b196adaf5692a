"""Nodes with several outputs (``%a, %b = add_norm(...)``): the edit API, verify, types,
printing and slicing on them; single-output nodes are unchanged (their goldens are too)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from archgen import api
from archgen.ir import print_graph
from archgen.ir.edit import EditError, remove, rename, replace_nodes
from archgen.ir.graph import Node
from archgen.ir.ops import AddNorm, RMSNorm
from archgen.ir.slicing import block_io, subgraph
from archgen.passes import default_pipeline, run_pipeline
from archgen.passes.base import PassError
from tests.conftest import ROOT

TRANSFORMER = ROOT / "examples" / "transformer.yaml"
ADD, NORM = "layers.0.token_residual", "layers.0.channel_norm"


def _fused(graph, add: str = ADD, norm: str = NORM) -> Node:
    a, n = graph.node(add), graph.node(norm)
    op = AddNorm(d_model=graph.model.d_model, eps=n.op.eps)
    return Node(a.name, op, a.inputs, a.block, weights=n.weight_path, outputs=(a.name, n.name))


def test_a_single_output_node_names_its_value_like_itself() -> None:
    node = Node("x", RMSNorm(d_model=8), ("y",))
    assert node.outputs == ("x",) and node.output == "x"
    assert node == Node("x", RMSNorm(d_model=8), ("y",), outputs=("x",))


def test_fusing_two_nodes_into_one_with_two_outputs() -> None:
    graph = api.compile_spec(TRANSFORMER)
    fused = replace_nodes(graph, [ADD, NORM], [_fused(graph)])
    assert NORM in fused and fused.producer(NORM).name == ADD and fused.node(NORM).name == ADD
    typed = run_pipeline(fused, default_pipeline())
    line = next(ln for ln in print_graph(typed).splitlines() if "add_norm" in ln)
    assert line.startswith(f"  %{ADD}, %{NORM} = add_norm(%embedding, %layers.0.token_mixer)")
    assert f"[weights {NORM}]" in line and line.count("f32[B, L, 256]") == 2
    assert typed.value_types[NORM] == typed.value_types[ADD]
    # slicing: the block still enters with one value and leaves with its stream
    io = block_io(typed, "layers.0")
    assert (io.entering, io.leaving) == ("embedding", "layers.0.channel_residual")
    assert subgraph(typed, "layers.0").outputs == ("layers.0.channel_residual",)


def test_replace_nodes_refuses_to_drop_a_value_still_read() -> None:
    graph = api.compile_spec(TRANSFORMER)
    lone = replace(_fused(graph), outputs=(ADD, "elsewhere"))
    with pytest.raises(EditError, match=f"reads %{NORM}, which no replacing node produces"):
        replace_nodes(graph, [ADD, NORM], [lone])
    reads_late = replace(_fused(graph), inputs=("embedding", "layers.0.channel_mixer"))
    with pytest.raises(EditError, match="before it is defined"):
        replace_nodes(graph, [ADD, NORM], [reads_late])


def test_remove_and_rename_know_every_output() -> None:
    graph = replace_nodes(
        api.compile_spec(TRANSFORMER), [ADD, NORM], [_fused(api.compile_spec(TRANSFORMER))]
    )
    with pytest.raises(EditError, match=f"cannot remove %{NORM}"):
        remove(graph, [ADD])  # the channel mixer reads its second output
    renamed = rename(graph, ADD, "sum0")
    assert renamed.node("sum0").outputs == ("sum0", NORM)


def test_verify_checks_the_number_and_names_of_outputs() -> None:
    graph = api.compile_spec(TRANSFORMER)
    fused = replace_nodes(graph, [ADD, NORM], [_fused(graph)])
    nodes = list(fused.nodes)
    i = fused.index(ADD)
    nodes[i] = replace(nodes[i], op=nodes[i].op, outputs=(ADD,))  # add_norm makes two
    with pytest.raises(PassError, match="produces 2 value"):
        run_pipeline(fused.with_nodes(tuple(nodes)), default_pipeline())
