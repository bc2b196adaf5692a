"""``archgen export | validate | doctor`` end to end: files, atomicity, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from typer.testing import CliRunner

from archgen import api
from archgen import export as export_api
from archgen.backends import validate as validate_mod
from archgen.backends.torch_model import build_model
from archgen.backends.validate import NumericsError, Tolerance
from archgen.cli.main import app
from archgen.errors import ArchgenError
from tests.backends.conformance import TINY_SPEC
from tests.conftest import archgen


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPEC)
    return path


def test_cli_export_onnx_writes_validated_engine_spec_numerics_and_manifest(
    tiny_spec: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = archgen(
        "export", str(tiny_spec), "--format", "onnx", "-o", str(out), "--max-seq", "32"
    )
    assert result.returncode == 0, result.stderr
    assert "passed" in result.stdout and "layers.2" in result.stdout
    files = {p.name for p in out.iterdir()}
    assert files == {
        "model.onnx",
        "decode_step.onnx",
        "artifact.json",
        "numerics.json",
        "spec.yaml",
        "manifest.json",
    }
    numerics = json.loads((out / "numerics.json").read_text())
    assert numerics["passed"] and numerics["seq_lens"] == [1, 32]
    assert {r["block"] for r in numerics["results"]} == {
        "layers.0",
        "layers.1",
        "layers.2",
        "logits",
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "onnx" and manifest["spec_hash"] == api.spec_hash(
        api.load_spec(tiny_spec)
    )
    assert set(manifest["files"]) == files and manifest["validation"]["passed"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left
    # the deploy graph: logits only, Optimum's names, the config (and spec hash) in its metadata
    model, step = (onnx.load(str(out / f)) for f in ("model.onnx", "decode_step.onnx"))
    assert [o.name for o in model.graph.output] == ["logits"]
    assert [i.name for i in step.graph.input][:3] == ["input_ids", "position_ids", "attention_mask"]
    for proto in (model, step):
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["archgen.spec_hash"] == manifest["spec_hash"]
        assert meta["archgen.model"] == manifest["model"] and meta["archgen.num_layers"] == "3"
    state = json.loads({p.key: p.value for p in step.metadata_props}["archgen.decode.state"])
    assert [t["input"] for t in state] == [i.name for i in step.graph.input][3:]


def test_failed_validation_exits_4_and_leaves_the_old_output_untouched(
    tiny_spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    profile = export_api.Profile(max_seq=16)
    export_api.export(tiny_spec, out, fmt="torch", profile=profile)  # an earlier, good export
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    impossible = Tolerance(0.0, 0.0, 0.0, 1.0, 1.0, 0.0)  # float32 vs float64 cannot meet it
    monkeypatch.setitem(validate_mod.TOLERANCES, ("eager", "float32"), impossible)
    with pytest.raises(NumericsError, match=r"first failing block layers\.0") as info:
        export_api.export(tiny_spec, out, fmt="torch", profile=profile, force=True)
    assert info.value.exit_code == 4 and info.value.report is not None
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.yaml"]


def test_export_with_built_weights_uses_them(tiny_spec: Path, tmp_path: Path) -> None:
    built = api.build(tiny_spec, tmp_path / "built", seed=5)
    result = export_api.export(
        tiny_spec,
        tmp_path / "torch",
        fmt="torch",
        weights=built.out_dir / "weights.safetensors",
        profile=export_api.Profile(max_seq=16),
    )
    assert result.report.passed
    manifest = json.loads((tmp_path / "torch" / "manifest.json").read_text())
    assert manifest["options"]["weights"].endswith("weights.safetensors")
    # the artifact holds the built (seed 5) weights, not the default seed-0 initialisation
    model = result.artifact.model  # type: ignore[attr-defined]
    built_model = build_model(result.artifact.graph, seed=5)
    default = build_model(result.artifact.graph, seed=0)
    assert torch.equal(model.embedding.weight, built_model.embedding.weight)
    assert not torch.equal(model.embedding.weight, default.embedding.weight)


def test_missing_weights_file_is_a_clear_error_before_any_work(
    tiny_spec: Path, tmp_path: Path
) -> None:
    with pytest.raises(ArchgenError, match="weights file not found"):
        export_api.export(tiny_spec, tmp_path / "o", fmt="torch", weights=tmp_path / "nope.st")
    assert not (tmp_path / "o").exists()


def test_cli_validate_prints_table_and_exits_4_naming_the_first_failure(
    tiny_spec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(tiny_spec), "--backend", "eager", "--max-seq", "8"])
    assert ok.exit_code == 0, ok.output
    assert "layers.1" in ok.output and "passed" in ok.output
    strict = Tolerance(0.0, 0.0, 0.0, 1.0, 1.0, 0.0)
    monkeypatch.setitem(validate_mod.TOLERANCES, ("eager", "float32"), strict)
    bad = runner.invoke(app, ["validate", str(tiny_spec), "--backend", "eager", "--max-seq", "8"])
    assert isinstance(bad.exception, NumericsError) and bad.exception.exit_code == 4
    assert "first failing block layers.0" in bad.output


def test_cli_doctor_names_missing_backends(tiny_spec: Path) -> None:
    result = archgen("doctor", str(tiny_spec))
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "│ attention" in line)
    # eager, compile, onnx (traced alone with a symbolic length), null, onnx decode
    assert row.count(" ok ") == 5 and "unavailable" in row, row
    assert "tensorrt: not available on this machine: no module named tensorrt" in " ".join(
        result.stdout.split()
    )
