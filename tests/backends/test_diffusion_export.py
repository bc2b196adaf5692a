"""ONNX export of a masked-diffusion LM with every bidirectional mixer kind: a logits graph with
dynamic batch and length, no decode-step graph, task and mask token in the metadata, validated
block by block against eager float64; the host-side decoders driving the onnxruntime artifact
commit the same tokens, call by call, as driving the eager model (temperature 0)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from archgen import api, decoding
from archgen.export import export
from archgen.generate import load_for_generation, load_onnx_denoiser

SPEC = """\
model:
  name: tiny-bidirectional
  task: masked-diffusion-lm
  vocab_size: 33
  d_model: 16
  max_seq_len: 40
  layers:
    - token_mixer: {kind: attention, heads: 2}
    - token_mixer: {kind: swa, heads: 2, window: 3}
    - token_mixer: {kind: mamba, d_state: 4}
    - token_mixer: {kind: mamba2, d_state: 4, head_dim: 8, chunk_size: 4}
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("diffusion-export")
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    run = api.build(spec, root / "run", seed=5).out_dir  # weights unlike export's default seed
    (run / "tokenizer.json").write_text("{}")  # what a BPE run folder holds beside the weights
    result = export(spec, root / "out", fmt="onnx", weights=run, validation_seed=3)
    assert result.report.passed
    assert (root / "out" / "tokenizer.json").read_text() == "{}"  # carried for generate
    return spec, root / "out"


def test_logits_graph_with_dynamic_dims_task_and_mask_token(exported: tuple[Path, Path]) -> None:
    spec, out = exported
    assert sorted(p.name for p in out.glob("*.onnx")) == ["model.onnx"]  # no decode_step.onnx
    proto = onnx.load(str(out / "model.onnx"))
    (inp,) = proto.graph.input
    assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "seq"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["archgen.task"] == "masked-diffusion-lm"
    assert meta["archgen.mask_token"] == "32"
    assert meta["archgen.spec_hash"] == api.spec_hash(api.as_spec(spec))


def test_every_block_validated_against_eager_float64(exported: tuple[Path, Path]) -> None:
    out = exported[1]
    numerics = json.loads((out / "numerics.json").read_text())
    assert numerics["passed"]
    blocks = {r["block"] for r in numerics["results"] if r["passed"]}
    assert {"layers.0", "layers.1", "layers.2", "layers.3", "logits"} <= blocks


@pytest.mark.parametrize(
    "decoder", ["confidence{tokens=2,block=4}", "threshold{tau=0.2,block=8}", "localleap{block=4}"]
)
def test_decoders_on_the_onnx_artifact_match_eager(
    exported: tuple[Path, Path], decoder: str
) -> None:
    spec, out = exported
    policy = decoding.parse_decoder(decoder)
    prompt = [
        int(t) for t in torch.randint(0, 32, (5,), generator=torch.Generator().manual_seed(7))
    ]
    runs = [
        decoding.decode(denoiser, prompt, 16, policy, mask_token=32, max_seq_len=40)
        for denoiser in (
            load_for_generation(spec, spec.parent / "run"),
            load_onnx_denoiser(spec, out),
        )
    ]
    eager, onnx_run = runs
    assert onnx_run.new_tokens == eager.new_tokens
    assert onnx_run.committed_per_call == eager.committed_per_call
    assert 32 not in onnx_run.new_tokens


def test_a_folder_exported_from_another_model_is_refused(exported: tuple[Path, Path]) -> None:
    from archgen.errors import ArchgenError

    spec, out = exported
    other = spec.parent / "other.yaml"
    other.write_text(SPEC.replace("d_state: 4}", "d_state: 5}", 1))
    with pytest.raises(ArchgenError, match="was not exported from"):
        load_onnx_denoiser(other, out)


def test_hugging_face_export_is_refused(tmp_path: Path) -> None:
    """transformers' classes are causal LMs: writing a denoiser as one would run it wrongly."""
    from archgen.errors import ArchgenError
    from archgen.hf import hf_layout

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    with pytest.raises(
        ArchgenError, match=r"model\.task: the transformers classes here are causal"
    ):
        hf_layout(api.compile_spec(spec))
