"""``archgen convert`` and passes recorded in run folders: build/export --passes, convert,
distill from a converted folder, export of the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from archgen import api, training
from archgen.convert import convert
from archgen.errors import ArchgenError
from archgen.ir.ops import CheckpointAttention, SlidingWindowAttention
from tests.conftest import EXAMPLES, archgen

TRANSFORMER = next(p for p in EXAMPLES if p.stem == "transformer")
SCOUT = "compress_segments{s=16,local=swa}"
TINY = """\
model:
  name: tiny
  vocab_size: 256
  d_model: 32
  max_seq_len: 64
  layers:
    - repeat: 2
      layers:
        - token_mixer: {kind: attention, heads: 4, kv_heads: 2}
          channel_mixer: {kind: swiglu}
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A few KB of text, so a distillation does not load the built-in corpus."""
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    return path


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_convert_with_s_1_computes_exactly_what_the_original_did(tmp_path: Path) -> None:
    api.build(TRANSFORMER, tmp_path / "a", seed=3)
    result = convert(tmp_path / "a", "compress_segments{s=1,local=swa}", tmp_path / "b")
    w = result.weights
    assert w.zeroed == [f"layers.{i}.local_mixer" for i in range(4)]
    assert not w.dropped and not w.reshaped
    assert all(".local_" in name for name in w.new)
    original = training.load_trained(tmp_path / "a").double()
    converted = training.load_trained(tmp_path / "b").double()  # spec.yaml's model.passes
    assert isinstance(converted.graph.node("layers.0.token_mixer").op, CheckpointAttention)
    assert isinstance(converted.graph.node("layers.0.local_mixer").op, SlidingWindowAttention)
    tokens = torch.randint(0, 256, (2, 37), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(converted(tokens), original(tokens), rtol=0, atol=1e-12)


def test_convert_carries_weights_and_records_the_pipeline(tmp_path: Path) -> None:
    api.build(TRANSFORMER, tmp_path / "a", seed=1)
    result = convert(tmp_path / "a", SCOUT, tmp_path / "b")
    before = load_file(tmp_path / "a" / "weights.safetensors")
    after = load_file(tmp_path / "b" / "weights.safetensors")
    for name in result.weights.carried:
        assert torch.equal(after[name], before[name]), name
    assert len(result.weights.carried) == len(before)
    assert not after["layers.2.local_mixer.o_proj.weight"].any()
    assert after["layers.2.local_mixer.q_proj.weight"].any()  # only the output starts at zero
    assert torch.equal(after["layers.2.local_norm.weight"], torch.ones(256))
    spec = yaml.safe_load((tmp_path / "b" / "spec.yaml").read_text())
    assert spec["model"]["passes"] == SCOUT
    manifest = _manifest(tmp_path / "b")
    assert manifest["command"] == "convert" and manifest["passes"] == SCOUT
    assert manifest["converted_from"] == str(tmp_path / "a")
    assert manifest["spec_hash"] == result.spec_hash != manifest["source_spec_hash"]
    assert manifest["weights"]["carried"] == len(before) and manifest["weights"]["new"] == 20
    # converting again appends to the folder's pipeline
    again = convert(tmp_path / "b", "compress_segments{s=1}", tmp_path / "c")
    assert again.passes == f"{SCOUT},compress_segments{{s=1}}"
    assert not again.weights.new and not again.weights.dropped


def test_reshaped_and_dropped_tensors_are_listed_not_hidden(tiny: Path, tmp_path: Path) -> None:
    api.build(tiny, tmp_path / "a")
    passes = (
        "replace_mixer{layers=[0],slot=channel,kind=swiglu,hidden=64},"
        "replace_mixer{layers=[1],kind=mamba}"
    )
    result = convert(tmp_path / "a", passes, tmp_path / "b")
    w = result.weights
    assert "layers.0.channel_mixer.gate_proj.weight" in w.reshaped
    assert "layers.1.token_mixer.q_proj.weight" in w.dropped
    assert "layers.1.token_mixer.in_proj.weight" in w.new
    assert not w.zeroed  # a replaced mixer keeps its name: it is not new, it is not zeroed
    listed = _manifest(tmp_path / "b")["weights"]
    assert listed["reshaped_tensors"] == w.reshaped and listed["dropped_tensors"] == w.dropped


def test_convert_output_folder_rules(tiny: Path, tmp_path: Path) -> None:
    api.build(tiny, tmp_path / "a")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ArchgenError, match="not a previous `archgen convert` output"):
        convert(tmp_path / "a", SCOUT, tmp_path / "mine", force=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(ArchgenError, match="output of `archgen build`"):
        convert(tmp_path / "a", SCOUT, tmp_path / "a", force=True)  # never over the source
    convert(tmp_path / "a", SCOUT, tmp_path / "b")
    with pytest.raises(ArchgenError, match="--force"):
        convert(tmp_path / "a", SCOUT, tmp_path / "b")
    convert(tmp_path / "a", "compress_segments{s=4,local=mamba}", tmp_path / "b", force=True)
    assert "local=mamba" in _manifest(tmp_path / "b")["passes"]
    with pytest.raises(ArchgenError, match="not a model folder"):
        convert(tmp_path / "mine", SCOUT, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_run_folders_with_passes_load_rewritten(tiny: Path, tmp_path: Path) -> None:
    from archgen.generate import load_for_generation

    api.build(tiny, tmp_path / "a", passes=SCOUT)
    spec = tmp_path / "a" / "spec.yaml"
    assert yaml.safe_load(spec.read_text())["model"]["passes"] == SCOUT
    prepared = training.prepare(spec, data=["task:associative_recall"])  # train / resume
    assert "layers.1.local_mixer" in prepared.graph
    model = load_for_generation(spec, tmp_path / "a")  # generate
    assert "layers.1.local_mixer" in model.graph
    assert "layers.1.local_mixer" in training.load_trained(tmp_path / "a").graph  # --teacher


def test_distill_from_a_converted_folder_starts_from_its_weights(
    tiny: Path, corpus: Path, tmp_path: Path
) -> None:
    api.build(tiny, tmp_path / "a")
    convert(tmp_path / "a", SCOUT, tmp_path / "b")
    options = training.TrainOptions(steps=1, batch_size=2, seq_len=16, lr=1e-12)
    logged: list[str] = []
    training.distill(
        tmp_path / "b", tmp_path / "a", data=[str(corpus)], options=options,
        out=tmp_path / "d", progress=False, log=logged.append,
    )  # fmt: skip
    assert any("initialised the student from" in line for line in logged)
    start = load_file(tmp_path / "b" / "weights.safetensors")
    end = load_file(tmp_path / "d" / "weights.safetensors")
    assert start.keys() == end.keys()
    for name, tensor in start.items():  # lr 1e-12: the weights it started from
        torch.testing.assert_close(end[name], tensor, rtol=0, atol=1e-8, msg=name)
    assert yaml.safe_load((tmp_path / "d" / "spec.yaml").read_text())["model"]["passes"] == SCOUT


@pytest.mark.slow  # the ONNX export (two dynamo traces) is most of its ~20 s
def test_cli_build_convert_distill_export(tiny: Path, corpus: Path, tmp_path: Path) -> None:
    a, b, d, e = (str(tmp_path / n) for n in "abde")
    assert archgen("build", str(tiny), "-o", a).returncode == 0
    result = archgen("convert", a, "--passes", SCOUT, "-o", b)
    assert result.returncode == 0, result.stderr
    assert "carried 20 tensors, new 10 (2 mixers at zero output), dropped 0" in result.stdout
    result = archgen(
        "distill", b, "--teacher", a, "--data", str(corpus), "--steps", "2",
        "--batch-size", "2", "--seq-len", "16", "-o", d, "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "initialised the student from" in result.stderr
    result = archgen("export", f"{d}/spec.yaml", "--weights", d, "-o", e, "--format", "onnx")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout
    assert yaml.safe_load(Path(e, "spec.yaml").read_text())["model"]["passes"] == SCOUT


def test_cli_bad_passes_exit_2_and_write_nothing(tiny: Path, tmp_path: Path) -> None:
    a = str(tmp_path / "a")
    result = archgen("build", str(tiny), "-o", a, "--passes", "compress_segmets{s=4}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown pass 'compress_segmets'" in result.stderr and "did you mean" in result.stderr
    assert not Path(a).exists()
    assert archgen("build", str(tiny), "-o", a).returncode == 0
    result = archgen("convert", a, "--passes", "compress_segments{s=0}", "-o", str(tmp_path / "b"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "s must be >= 1" in result.stderr and not (tmp_path / "b").exists()


@pytest.mark.parametrize("kind", ["swa", "mamba", "mamba2", "attention", "swiglu"])
def test_a_zeroed_output_projection_zeroes_the_mixer(kind: str) -> None:
    from archgen.ir.ops import OP_REGISTRY
    from archgen.mixers.registry import build_module

    attrs = {"swa": {"heads": 4, "window": 8}, "attention": {"heads": 4}, "swiglu": {"hidden": 64}}
    op = OP_REGISTRY[kind](d_model=32, **attrs.get(kind, {})).resolved()
    module = build_module(op, dtype=torch.float64)
    proj = module.output_projection()
    assert proj is not None
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    assert module(x).abs().max() > 0
    with torch.no_grad():
        proj.weight.zero_()
    assert torch.equal(module(x), torch.zeros_like(x))


def test_export_passes_are_recorded_in_its_spec(tiny: Path, tmp_path: Path) -> None:
    from archgen.export import export

    result = export(tiny, tmp_path / "x", fmt="torch", passes=SCOUT)
    assert result.report.passed
    assert "layers.0.local_mixer" in result.artifact.graph
    spec = yaml.safe_load((tmp_path / "x" / "spec.yaml").read_text())
    assert spec["model"]["passes"] == SCOUT
