"""Causal self-attention lowered to onnxruntime's fused ``GroupQueryAttention``
(backends/onnx_attention.py): the node appears where it should, matches the mixer's own loop
reference on odd sizes and grouped kv heads, and ``fused_attention=False`` keeps the graph
portable."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

from archgen.backends.base import LowerOptions, get_backend
from archgen.backends.onnx import FORWARD_FILE, OnnxArtifact
from archgen.backends.onnx_attention import gqa_translation
from archgen.mixers.attention import Attention
from tests.backends.conformance import tiny_graph
from tests.tolerances import assert_close


@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "fused"),
    [(6, 2, 8, True), (3, 3, 16, True), (4, 2, 10, False)],  # the kernel needs head_dim % 8 == 0
)
def test_fused_attention_matches_the_loop_reference(
    heads: int, kv_heads: int, head_dim: int, fused: bool, rng_seed: int
) -> None:
    torch.manual_seed(rng_seed)
    module = Attention(60, heads=heads, kv_heads=kv_heads, head_dim=head_dim).eval()
    seq = torch.export.Dim.DYNAMIC(min=1, max=256)
    example = torch.randn(2, 9, 60)
    program = torch.onnx.export(
        module,
        (example,),
        None,
        dynamo=True,
        dynamic_shapes=({1: seq},),
        custom_translation_table=gqa_translation(),
        verbose=False,
    )
    ops = [n.op_type for n in program.model_proto.graph.node]
    assert ops.count("GroupQueryAttention") == int(fused) and ("Softmax" in ops) != fused
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    for length in (1, 2, 37):  # the first token, and lengths other than the example's
        x = torch.randn(2, length, 60)
        (got,) = session.run(None, {name: x.numpy()})
        with torch.no_grad():
            expected = module.double().reference(x.double())
        module.float()
        assert_close(torch.from_numpy(got), expected, torch.float32, f"L={length}")


def _contrib_ops(path: Path) -> list[str]:
    proto = onnx.load(str(path))
    return [n.op_type for n in proto.graph.node if n.domain not in ("", "ai.onnx")]


def test_attention_layers_export_fused_and_the_meta_says_so(tmp_path: Path) -> None:
    graph = tiny_graph(tmp_path)
    artifact = get_backend("onnx").lower(graph, LowerOptions(max_seq=64, decode_graph=False))
    assert isinstance(artifact, OnnxArtifact)
    artifact.save(tmp_path / "fused")
    attention = [n.name for n in graph.nodes if n.op.kind == "attention"]
    assert _contrib_ops(tmp_path / "fused" / FORWARD_FILE) == ["GroupQueryAttention"] * len(
        attention
    )
    for name in attention:
        assert "GroupQueryAttention" in artifact.meta.nodes[name].impl


def test_portable_export_uses_standard_ops_only(tmp_path: Path) -> None:
    graph = tiny_graph(tmp_path)
    options = LowerOptions(max_seq=64, decode_graph=False, fused_attention=False)
    artifact = get_backend("onnx").lower(graph, options)
    artifact.save(tmp_path / "portable")
    assert _contrib_ops(tmp_path / "portable" / FORWARD_FILE) == []
    assert not any("GroupQueryAttention" in impl.impl for impl in artifact.meta.nodes.values())
