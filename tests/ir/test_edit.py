"""The edit API and slicing: edits keep graphs well-formed and never leave stale facts."""

from __future__ import annotations

import pytest

from archgen import api
from archgen.ir import print_graph
from archgen.ir.edit import (
    EditError,
    insert_before,
    remove,
    rename,
    replace_all_uses,
    replace_op,
    set_inputs,
    users,
)
from archgen.ir.graph import Node, OutputRole
from archgen.ir.ops import Mamba, RMSNorm
from archgen.ir.slicing import block_io, only_block, stem, subgraph, without_blocks
from archgen.passes import default_pipeline, run_pipeline
from tests.conftest import EXAMPLES, ROOT

TRANSFORMER = ROOT / "examples" / "transformer.yaml"


def _line(graph, name: str) -> str:
    return next(line for line in print_graph(graph).splitlines() if f"%{name} =" in line)


def test_replacing_an_op_drops_its_cost_and_the_types_downstream() -> None:
    # the bug of issue 12: the old attention's params=196,608 survived a Mamba swap
    graph = api.compile_spec(TRANSFORMER)
    mamba = Mamba(d_model=graph.model.d_model)
    edited = replace_op(graph, "layers.0.token_mixer", mamba)
    assert "params=" not in _line(edited, "layers.0.token_mixer")
    assert "layers.0.token_mixer" not in edited.value_types
    assert "logits" not in edited.value_types  # downstream of the change
    assert "embedding" in edited.value_types  # upstream facts stay
    assert "params=" in _line(edited, "layers.1.token_mixer")  # untouched nodes keep theirs
    recomputed = run_pipeline(edited, default_pipeline())
    assert f"params={mamba.params():,}" in _line(recomputed, "layers.0.token_mixer")


def test_facts_carried_by_dataclasses_replace_are_dropped_too() -> None:
    from dataclasses import replace

    graph = api.compile_spec(TRANSFORMER)
    node = graph.node("layers.0.token_mixer")
    swapped = replace(node, op=Mamba(d_model=graph.model.d_model))
    assert swapped.annotations  # replace() copies the stale cost ...
    nodes = tuple(swapped if n.name == node.name else n for n in graph.nodes)
    assert not graph.with_nodes(nodes).node(node.name).annotations  # ... with_nodes drops it


def test_node_lookup_by_name_and_position() -> None:
    graph = api.compile_spec(TRANSFORMER)
    for i, node in enumerate(graph.nodes):
        assert graph.index(node.name) == i and graph.node(node.name) is node
    assert "layers.0.token_mixer" in graph and "nope" not in graph
    with pytest.raises(KeyError, match="no node named 'nope'"):
        graph.node("nope")


def test_insert_rewire_and_remove_a_node() -> None:
    graph = api.compile_spec(TRANSFORMER)
    d = graph.model.d_model
    extra = Node("layers.0.extra_norm", RMSNorm(d_model=d), ("embedding",), "layers.0")
    g = insert_before(graph, "layers.0.token_norm", [extra])
    g = set_inputs(g, "layers.0.token_norm", ["layers.0.extra_norm"])
    assert [n.name for n in users(g, "layers.0.extra_norm")] == ["layers.0.token_norm"]
    run_pipeline(g, default_pipeline())  # still verifies and types
    with pytest.raises(EditError, match="still reads it"):
        remove(g, ["layers.0.extra_norm"])
    back = remove(replace_all_uses(g, "layers.0.extra_norm", "embedding"), ["layers.0.extra_norm"])
    assert back == graph


def test_ill_formed_edits_are_refused_with_the_node_named() -> None:
    graph = api.compile_spec(TRANSFORMER)
    d = graph.model.d_model
    late = Node("early", RMSNorm(d_model=d), ("layers.3.token_mixer",))
    with pytest.raises(EditError, match=r"inserted %early reads %layers\.3\.token_mixer"):
        insert_before(graph, "layers.0.token_norm", [late])
    with pytest.raises(EditError, match="already defined"):
        insert_before(graph, "logits", [Node("embedding", RMSNorm(d_model=d), ("tokens",))])
    with pytest.raises(EditError, match="before it is defined"):
        set_inputs(graph, "layers.0.token_norm", ["layers.1.token_mixer"])
    with pytest.raises(EditError, match="graph output"):
        remove(graph, ["logits"])


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_block_slices_verify_and_keep_one_block(spec) -> None:
    graph = api.compile_spec(spec)
    pipeline = default_pipeline()
    assert run_pipeline(stem(graph), pipeline).blocks() == []
    for block in graph.blocks():
        alone = run_pipeline(only_block(graph, block), pipeline)
        assert alone.blocks() == [block]
        io = block_io(graph, block)
        assert _line(alone, io.nodes[0].name).count("%embedding") == 1  # reads the embedding
        part = run_pipeline(subgraph(graph, block), pipeline)
        assert list(part.inputs) == [io.entering] and part.outputs == (io.leaving,)
        assert [n.name for n in part.nodes] == [n.name for n in io.nodes]
    assert without_blocks(graph, []) == graph


def test_an_unknown_block_is_an_error() -> None:
    graph = api.compile_spec(TRANSFORMER)
    with pytest.raises(EditError, match=r"no block 'layers\.9'"):
        only_block(graph, "layers.9")


def test_a_renamed_node_keeps_its_weight_names() -> None:
    graph = api.compile_spec(TRANSFORMER)
    renamed = rename(graph, "layers.1.token_mixer", "layers.1.attention")
    node = renamed.node("layers.1.attention")
    assert node.weights == "layers.1.token_mixer" and node.weight_path == "layers.1.token_mixer"
    assert [n.name for n in users(renamed, "layers.1.attention")] == ["layers.1.token_residual"]
    assert "[weights layers.1.token_mixer]" in _line(renamed, "layers.1.attention")
    run_pipeline(renamed, default_pipeline())  # still verifies and types
    with pytest.raises(EditError, match="already defined"):
        rename(graph, "layers.1.token_mixer", "layers.0.token_mixer")


def test_output_roles_and_the_primary_output() -> None:
    graph = api.compile_spec(TRANSFORMER)
    assert graph.output_role("logits") is OutputRole.LOGITS
    assert graph.primary_output() == "logits"
    block = subgraph(graph, "layers.2")
    assert block.output_role("layers.2.channel_residual") is OutputRole.HIDDEN
    assert block.primary_output() == "layers.2.channel_residual"
    two = graph.with_nodes(
        graph.nodes, outputs=("layers.0.channel_residual", "layers.1.channel_residual")
    )
    with pytest.raises(ValueError, match="2 candidate primary outputs"):
        two.primary_output()
