"""The onnx backend (torch.onnx dynamo export + onnxruntime CPU) against the conformance suite,
plus what only it has: a logits-only deploy graph whose block values validation re-exposes,
dynamic batch/length, the model config in the metadata, and the decode-step graph (padded
batches included)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from archgen.backends.base import Artifact, LowerOptions, get_backend
from archgen.backends.eager import reference_artifact
from archgen.backends.onnx import FORWARD_FILE, OnnxArtifact
from archgen.backends.validate import compare, tolerance_for, violations
from archgen.errors import UnavailableError
from tests.backends.conformance import BackendConformance, random_tokens, tiny_graph


class TestOnnx(BackendConformance):
    backend_name = "onnx"
    extra_options: ClassVar[dict[str, object]] = {"decode_graph": False}  # tested below
    shrink_examples = True  # export time grows with the graph; one copy of each group suffices

    def inject_fault(self, artifact: Artifact, block: str, tmp_path: Path) -> Artifact:
        """Scale the weight of the first MatMul of ``block`` in the exported file and load it.

        Initializer names are not parameter names (the exporter pre-transposes weights into
        ``val_N`` constants and merges equal ones, e.g. all-ones norm scales), so the MatMul is
        found through the ``name_scopes`` metadata the exporter records per node."""
        folder = tmp_path / "faulty"
        artifact.save(folder)
        proto = onnx.load(str(folder / FORWARD_FILE))
        inits = {i.name: i for i in proto.graph.initializer}
        node = next(
            n
            for n in proto.graph.node
            if n.op_type == "MatMul"
            and any(
                p.key == "pkg.torch.onnx.name_scopes" and f"model.{block}." in p.value
                for p in n.metadata_props
            )
            and n.input[1] in inits
        )
        init = inits[node.input[1]]
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
        onnx.save(proto, str(folder / FORWARD_FILE))
        return self.backend.load(folder, artifact.graph, artifact.meta.options)


def test_deploy_graph_outputs_logits_only_and_dims_are_dynamic(tmp_path: Path) -> None:
    graph = tiny_graph(tmp_path)
    artifact = get_backend("onnx").lower(graph, LowerOptions(max_seq=64, decode_graph=False))
    proto = onnx.load(str(artifact.folder / FORWARD_FILE))  # type: ignore[attr-defined]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert [i.name for i in proto.graph.input] == ["input_ids"]
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["archgen.model"] == graph.model.name and meta["archgen.vocab_size"] == "64"
    assert json.loads(meta["archgen.block_outputs"]) == ["layers.0", "layers.1", "layers.2"]
    for batch, seq in ((1, 1), (3, 64)):  # ends of the profile, other than the export example
        assert artifact.run(torch.zeros(batch, seq, dtype=torch.long)).shape == (batch, seq, 64)
    # validation reads the block values of this very graph, re-exposed in memory
    tokens = random_tokens(graph, 2, 7, seed=1)
    ref = reference_artifact(graph, artifact.meta.options).boundaries(tokens)
    got = artifact.boundaries(tokens)
    assert list(got) == ["layers.0", "layers.1", "layers.2", "logits"]
    for name, value in got.items():
        assert not violations(compare(ref[name], value), tolerance_for("onnx", "float32")), name


def test_decode_steps_in_onnxruntime_reproduce_the_full_forward(
    tmp_path: Path, rng_seed: int
) -> None:
    graph = tiny_graph(tmp_path)
    artifact = get_backend("onnx").lower(graph, LowerOptions(max_seq=64))
    assert isinstance(artifact, OnnxArtifact) and artifact.decode_session is not None
    growing = artifact.meta.extra["decode"]["dynamic_state_dims"]
    assert tuple(growing["past_key_values.0.key"]) == (2,)  # the KV cache length
    tokens = random_tokens(graph, 2, 13, rng_seed)
    full = reference_artifact(graph, artifact.meta.options).run(tokens)
    state = artifact.init_state(2)
    assert state[0].shape == (2, 2, 0, 8)  # KV cache of length 0 at the first step
    steps = []
    for t in range(tokens.shape[1]):
        logits, state = artifact.step(tokens[:, t], t, state)
        steps.append(logits)
    assert state[0].shape[2] == tokens.shape[1]  # the cache grew by one entry per token
    m = compare(full, torch.stack(steps, dim=1), logits=True)
    assert not violations(m, tolerance_for("onnx", "float32")), m


HYBRID_SPEC = """\
model:
  name: tiny-hybrid
  vocab_size: 64
  d_model: 32
  max_seq_len: 64
  layers:
    - token_mixer: {kind: mamba, d_state: 4}
      channel_mixer: {kind: swiglu, hidden: 48}
    - token_mixer: {kind: mamba2, d_state: 8, head_dim: 8, chunk_size: 8}
      channel_mixer: null
    - token_mixer: {kind: swa, heads: 4, window: 5}
      channel_mixer: null
    - token_mixer: {kind: attention, heads: 4, kv_heads: 2}
      channel_mixer: {kind: swiglu, hidden: 48}
"""


def test_hybrid_decode_steps_reproduce_the_full_forward(tmp_path: Path, rng_seed: int) -> None:
    """Mamba, Mamba-2, sliding-window and full attention states together in one decode graph,
    over more tokens than a chunk, the SWA window and the conv width."""
    graph = tiny_graph(tmp_path, HYBRID_SPEC)
    artifact = get_backend("onnx").lower(graph, LowerOptions(max_seq=64))
    assert isinstance(artifact, OnnxArtifact) and artifact.decode_session is not None
    tokens = random_tokens(graph, 2, 19, rng_seed)
    full = reference_artifact(graph, artifact.meta.options).run(tokens)
    tol = tolerance_for("onnx", "float32")
    assert not violations(compare(full, artifact.run(tokens), logits=True), tol)
    m = compare(full, _decode_all(artifact, tokens), logits=True)
    assert not violations(m, tol), m
    names = [i.name for i in artifact.decode_session.get_inputs()]
    assert names == [
        *("input_ids", "position_ids", "attention_mask"),
        *("conv_state.0", "ssm_state.0", "conv_state.1", "ssm_state.1"),
        *("window_cache.2.key", "window_cache.2.value"),
        *("past_key_values.3.key", "past_key_values.3.value"),
    ]
    outputs = [o.name for o in artifact.decode_session.get_outputs()]
    assert outputs[0] == "logits" and outputs[-2:] == ["present.3.key", "present.3.value"]
    assert "present_ssm_state.1" in outputs
    _check_padded_decode(artifact, rng_seed)


def _check_padded_decode(artifact: OnnxArtifact, seed: int) -> None:
    """A left-padded batch of two prompts of different lengths decodes to the tokens (and the
    logits) each prompt gets alone; ignoring the mask would not."""
    gen = torch.Generator().manual_seed(seed)
    short, long = (torch.randint(1, 64, (n,), generator=gen).tolist() for n in (6, 13))
    both = artifact.generate_greedy([short, long], new_tokens=7)
    alone = [artifact.generate_greedy([p], new_tokens=7)[0] for p in (short, long)]
    assert both == alone
    padded = torch.tensor([[0] * (len(long) - len(short)) + short, long])
    real = padded.new_ones(padded.shape).bool()
    real[0, : len(long) - len(short)] = False
    tol = tolerance_for("onnx", "float32")
    masked = _decode_all(artifact, padded, real)[0, real[0]]  # the short prompt's positions
    single = _decode_all(artifact, torch.tensor([short]))[0]
    assert not violations(compare(single, masked, logits=True), tol)
    unmasked = _decode_all(artifact, padded)[0, real[0]]  # pads read as tokens: different
    assert violations(compare(single, unmasked, logits=True), tol)


def _decode_all(
    artifact: OnnxArtifact, tokens: torch.Tensor, real: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits of every position, decoded token by token in onnxruntime from an empty state;
    ``real [B, L]`` marks the tokens that are not padding (default: all)."""
    if real is None:
        real = torch.ones(tokens.shape, dtype=torch.bool)
    state = artifact.init_state(tokens.shape[0])
    positions = torch.zeros(tokens.shape[0], dtype=torch.long)
    steps = []
    for t in range(tokens.shape[1]):
        mask = real[:, : t + 1].long().numpy()
        logits, state = artifact.step(tokens[:, t], positions, state, mask)
        positions += real[:, t]
        steps.append(logits)
    return torch.stack(steps, dim=1)


SCOUT_SPEC = """\
model:
  name: tiny-scout
  vocab_size: 64
  d_model: 32
  max_seq_len: 64
  layers:
    - token_mixer: {kind: checkpoint_attention, heads: 4, kv_heads: 2, segment_size: 4}
      channel_mixer: {kind: swiglu, hidden: 48}
    - token_mixer: {kind: mamba, d_state: 4}
      channel_mixer: null
"""


def test_checkpoint_attention_decode_steps_reproduce_the_full_forward(
    tmp_path: Path, rng_seed: int
) -> None:
    """SCOUT's checkpoint cache (a fixed number of slots, filled as segments complete) in one
    decode graph, over several segments and a partial one."""
    graph = tiny_graph(tmp_path, SCOUT_SPEC)
    artifact = get_backend("onnx").lower(graph, LowerOptions(max_seq=64))
    assert isinstance(artifact, OnnxArtifact) and artifact.decode_session is not None
    tokens = random_tokens(graph, 2, 15, rng_seed)
    full = reference_artifact(graph, artifact.meta.options).run(tokens)
    assert artifact.init_state(2)[0].shape == (2, 2, 16, 8)  # ceil(64 / 4) slots, fixed
    m = compare(full, _decode_all(artifact, tokens), logits=True)
    assert not violations(m, tolerance_for("onnx", "float32")), m
    _check_padded_decode(artifact, rng_seed)


def test_mixers_without_a_traceable_step_get_no_decode_graph_and_a_note(tmp_path: Path) -> None:
    spec = """\
model:
  name: tiny-dense
  vocab_size: 64
  d_model: 32
  max_seq_len: 16
  layers:
    - token_mixer: {kind: dense, causal: true}
      channel_mixer: null
"""
    artifact = get_backend("onnx").lower(tiny_graph(tmp_path, spec), LowerOptions(max_seq=16))
    assert artifact.decode_session is None  # type: ignore[attr-defined]
    assert any("layers.0.token_mixer (dense)" in n for n in artifact.meta.notes)


def test_missing_execution_provider_fails_before_export(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the error path needs a CPU-only build")
    with pytest.raises(UnavailableError, match="CUDAExecutionProvider is not available"):
        get_backend("onnx").lower(tiny_graph(tmp_path), LowerOptions(provider="cuda"))


def test_graph_optimisation_level_is_an_option(tmp_path: Path) -> None:
    import onnxruntime as ort

    graph = tiny_graph(tmp_path)
    options = LowerOptions(max_seq=16, graph_opt_level="disable", decode_graph=False)
    artifact = get_backend("onnx").lower(graph, options)
    level = artifact.session.get_session_options().graph_optimization_level  # type: ignore[attr-defined]
    assert level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    tokens = random_tokens(graph, 1, 16, seed=1)
    reference = reference_artifact(graph, artifact.meta.options).run(tokens)
    assert np.allclose(artifact.run(tokens).numpy(), reference.numpy(), atol=1e-5)
