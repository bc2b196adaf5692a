"""The command line end to end, as a user runs it (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from safetensors import safe_open

from tests.conftest import EXAMPLES, archgen

TRANSFORMER = next(p for p in EXAMPLES if p.stem == "transformer")


def test_help_is_fast_and_imports_no_torch() -> None:
    code = (
        "import sys; from archgen.cli.main import app;"
        "from typer.testing import CliRunner; r = CliRunner().invoke(app, ['--help']);"
        "assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    start = time.perf_counter()
    result = archgen("--help")
    assert result.returncode == 0 and "check" in result.stdout
    assert time.perf_counter() - start < 1.0


def test_check_prints_table_with_totals() -> None:
    result = archgen("check", str(TRANSFORMER), "--seq-len", "512")
    assert result.returncode == 0, result.stderr
    assert "layers.3" in result.stdout and "attention" in result.stdout
    assert "total" in result.stdout and "at L=512" in result.stdout


def test_check_resolved_prints_defaults_that_reparse(tmp_path) -> None:
    result = archgen("check", str(TRANSFORMER), "--resolved")
    assert "hidden: 704" in result.stdout  # swiglu default 8/3*256 rounded up to 64
    (tmp_path / "r.yaml").write_text(result.stdout)
    again = archgen("check", str(tmp_path / "r.yaml"))
    assert again.returncode == 0, again.stderr


def test_build_writes_weights_spec_and_manifest(tmp_path) -> None:
    out = tmp_path / "model"
    result = archgen("build", str(TRANSFORMER), "-o", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"archgen", "torch", "spec_hash", "params"} <= set(manifest)
    with safe_open(str(out / "weights.safetensors"), "pt") as f:
        total = sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
        assert f.metadata()["spec_hash"] == manifest["spec_hash"]
    assert total == manifest["params"]
    assert not list(tmp_path.glob(".model.*")), "staging folder left behind"


def _prod(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def test_bad_spec_exits_2_without_traceback(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TRANSFORMER.read_text().replace("heads: 8,", "heads: 7,"))
    result = archgen("check", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    where = "model.layers[0].layers[0].token_mixer.heads"
    expected = f"{where}: d_model 256 is not divisible by heads 7"
    assert expected in result.stderr


def test_missing_file_and_unknown_pass_are_clear_errors() -> None:
    result = archgen("check", "nope.yaml")
    assert result.returncode == 2 and "nope.yaml" in result.stderr and "not found" in result.stderr
    result = archgen("check", str(TRANSFORMER), "--dump-after", "infer_shape")
    assert result.returncode == 2 and "infer_shape" in result.stderr


def test_schema_is_json_with_the_mixer_kinds(tmp_path) -> None:
    result = archgen("schema", "-o", str(tmp_path / "s.json"))
    assert result.returncode == 0
    text = (tmp_path / "s.json").read_text()
    schema = json.loads(text)
    assert "model" in schema["properties"]
    for kind in ("attention", "swa", "mamba", "mamba2", "checkpoint_attention", "dense", "swiglu"):
        assert f'"{kind}"' in text
