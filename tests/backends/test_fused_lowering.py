"""Fused nodes (``fuse_kernels``) on the backends: onnxruntime's contrib ops in the default
export, standard ops with ``--portable``, both validated block by block and in decode; and a
backend that cannot lower a fused node falls back to the unfused nodes with a note."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import onnx
import pytest
import torch

from archgen.backends.base import LowerOptions, get_backend
from archgen.backends.eager import reference_artifact
from archgen.backends.null import NullBackend
from archgen.backends.onnx import FORWARD_FILE, OnnxArtifact
from archgen.backends.validate import compare, tolerance_for, validate, violations
from archgen.ir.graph import Node
from archgen.passes import run_pipeline, unfuse
from archgen.passes.fuse_kernels import FuseKernels
from tests.backends.conformance import random_tokens, tiny_graph

SPEC = """\
model:
  name: tiny-fused
  vocab_size: 64
  d_model: 32
  max_seq_len: 64
  norm: {norm}
  layers:
    - token_mixer: {{kind: attention, heads: 4, kv_heads: 2}}
      channel_mixer: {{kind: swiglu, hidden: 48}}
"""
CONTRIB = {"rmsnorm": "SkipSimplifiedLayerNormalization", "layernorm": "SkipLayerNormalization"}


def _fused(tmp_path: Path, norm: str):
    graph = tiny_graph(tmp_path, SPEC.format(norm=norm))
    return run_pipeline(graph, [FuseKernels()])


@pytest.mark.parametrize(
    ("norm", "portable"), [("rmsnorm", False), ("layernorm", False), ("rmsnorm", True)]
)
def test_onnx_lowers_add_norm_and_validates(
    tmp_path: Path, norm: str, portable: bool, rng_seed: int
) -> None:
    graph = _fused(tmp_path, norm)
    fused_nodes = [n for n in graph.nodes if n.op.kind == "add_norm"]
    assert len(fused_nodes) == 2  # token -> channel norm, channel -> final norm
    options = LowerOptions(max_seq=64, fused_attention=not portable)
    artifact = get_backend("onnx").lower(graph, options)
    assert isinstance(artifact, OnnxArtifact) and artifact.decode_session is not None
    proto = onnx.load(str(artifact.folder / FORWARD_FILE))
    ops = [n.op_type for n in proto.graph.node]
    domains = {n.domain for n in proto.graph.node}
    if portable:
        assert "com.microsoft" not in domains and not any(op.startswith("Skip") for op in ops)
    else:
        assert ops.count(CONTRIB[norm]) == len(fused_nodes), ops
    assert not [n for n in artifact.meta.notes if "falls back" in n]
    report = validate(artifact, seed=rng_seed)
    assert report.passed, report.first_failure()
    # decode: the step graph holds the fused ops too, and reproduces the forward
    tokens = random_tokens(graph, 2, 9, rng_seed)
    full = reference_artifact(graph, artifact.meta.options).run(tokens)
    state = artifact.init_state(2)
    steps = []
    for t in range(tokens.shape[1]):
        logits, state = artifact.step(tokens[:, t], t, state)
        steps.append(logits)
    m = compare(full, torch.stack(steps, dim=1), logits=True)
    assert not violations(m, tolerance_for("onnx", "float32")), m


class _NoFusedNodes(NullBackend):
    """A backend without a lowering for fused nodes."""

    name: ClassVar[str] = "null"

    def supports(self, node: Node) -> tuple[bool, str]:
        if node.op.kind == "add_norm":
            return False, "no add_norm kernel"
        return super().supports(node)


def test_a_backend_that_cannot_lower_a_fused_node_falls_back_with_a_note(
    tmp_path: Path,
) -> None:
    graph = _fused(tmp_path, "rmsnorm")
    artifact = _NoFusedNodes().lower(graph, LowerOptions(max_seq=64))
    notes = [n for n in artifact.meta.notes if "falls back to the unfused nodes" in n]
    assert len(notes) == 2 and "no add_norm kernel" in notes[0]
    assert artifact.graph.nodes == unfuse(graph).nodes
    assert not any(n.op.kind == "add_norm" for n in artifact.graph.nodes)
    plain = NullBackend().lower(graph, LowerOptions(max_seq=64))  # supports it: no note
    assert not [n for n in plain.meta.notes if "falls back" in n]
