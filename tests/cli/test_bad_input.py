"""Bad input of every kind gets a clear error (what, where, a suggestion), exit 2 and no
traceback (issue 16): damaged weights, impossible output places, unknown choices, raw bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from archgen import api, training
from archgen.backends.weights import load_tensors, load_weights
from archgen.errors import ArchgenError
from archgen.generate import encode_prompt
from archgen.staging import OutputFolder, check_run_folder
from tests.conftest import TINY_LM, archgen

TINY = TINY_LM


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture
def truncated(tmp_path: Path, spec: Path) -> Path:
    """A build folder whose weights were cut short (an interrupted copy)."""
    folder = api.build(spec, tmp_path / "model").out_dir
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return folder


def _clear(result: object) -> str:
    rc, stderr = result.returncode, result.stderr  # type: ignore[attr-defined]
    assert rc == 2 and "Traceback" not in stderr and "error:" in stderr, stderr
    return stderr


# -- damaged weights ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 20, 1000])
def test_truncated_weights_are_an_archgen_error(truncated: Path, size: int) -> None:
    weights = truncated / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:size])
    with pytest.raises(ArchgenError, match="not a readable safetensors file") as info:
        load_weights(torch.nn.Linear(2, 2), weights)
    assert str(weights) in str(info.value) and "truncated" in str(info.value)
    with pytest.raises(ArchgenError, match="not a readable safetensors file"):
        load_tensors(weights)


def test_truncated_teacher_is_an_archgen_error(truncated: Path) -> None:
    with pytest.raises(ArchgenError, match="not a readable safetensors file"):
        training.load_trained(truncated)


def test_generate_with_truncated_weights_exits_2(spec: Path, truncated: Path) -> None:
    stderr = _clear(archgen("generate", str(spec), "--prompt", "hi", "--weights", str(truncated)))
    assert "weights.safetensors: not a readable safetensors file" in stderr


# -- output places -----------------------------------------------------------------------------
def test_output_that_cannot_be_created_is_refused_before_work(tmp_path: Path) -> None:
    with pytest.raises(ArchgenError, match="cannot write to /proc/x"):
        OutputFolder(Path("/proc/x"), "build").check()
    afile = tmp_path / "f.txt"
    afile.write_text("mine")
    with pytest.raises(ArchgenError, match="not a folder"):
        OutputFolder(afile / "sub", "build").check()
    with pytest.raises(ArchgenError, match="exists and is not a folder"):
        check_run_folder(afile, "train")
    assert afile.read_text() == "mine"


def test_output_that_is_the_current_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Publishing renames a new folder over the target: the shell would sit in a deleted one.
    monkeypatch.chdir(tmp_path)
    for target in (Path("."), Path(".."), tmp_path):
        with pytest.raises(ArchgenError, match="is the current folder or holds it"):
            OutputFolder(target, "export").check()


def test_training_into_a_folder_of_other_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("mine")
    with pytest.raises(ArchgenError, match=r"not a training run folder: it holds config\.yaml"):
        check_run_folder(tmp_path, "train")
    (tmp_path / "config.yaml").unlink()
    check_run_folder(tmp_path, "train")  # empty: fine
    (tmp_path / "checkpoints").mkdir()
    check_run_folder(tmp_path, "train")  # a run folder: the loop asks for --resume


def test_bad_output_places_exit_2(tmp_path: Path, spec: Path) -> None:
    _clear(archgen("build", str(spec), "-o", "/proc/x"))
    _clear(archgen("build", str(spec), "-o", ".", cwd=tmp_path))
    stderr = _clear(archgen("train", str(spec), "-o", str(spec), "--steps", "1"))
    assert "exists and is not a folder" in stderr
    stderr = _clear(archgen("schema", "-o", str(tmp_path)))
    assert "is a folder" in stderr
    assert spec.read_text() == TINY


# -- choices and raw bytes ---------------------------------------------------------------------
def test_unknown_onnx_provider_is_an_archgen_error() -> None:
    pytest.importorskip("onnxruntime")
    from archgen.backends.base import LowerOptions
    from archgen.backends.onnx import OnnxBackend

    with pytest.raises(ArchgenError, match="unknown --provider 'foo'; choose one of: cpu"):
        OnnxBackend().check_provider(LowerOptions(provider="foo"))  # type: ignore[arg-type]


def test_raw_byte_in_a_prompt_is_that_byte() -> None:
    raw = os.fsdecode(b"a\xffb")  # how Python receives a non-UTF-8 byte in argv
    assert encode_prompt(raw, 256) == [97, 255, 98]
    with pytest.raises(ArchgenError, match="not text"):
        encode_prompt("a\ud800", 256)


def test_generate_with_a_raw_byte_prompt_runs(spec: Path) -> None:
    command = [sys.executable, "-m", "archgen.cli.main", "generate", str(spec)]
    args = ["--prompt", os.fsdecode(b"a\xff"), "--max-new-tokens", "2"]
    result = subprocess.run([*command, *args], capture_output=True, timeout=600)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith(b"a\xff")  # the prompt echoed as given


# -- --weights: a file or a folder, one helper for every command -------------------------------
def test_every_weights_option_takes_a_run_folder(tmp_path: Path, spec: Path) -> None:
    from archgen.backends.weights import weights_file
    from archgen.export import export
    from archgen.train.config import TextData, TrainConfig
    from archgen.train.data import load_data
    from archgen.train.loop import train

    graph = api.compile_spec(spec)
    for i in range(4):
        (tmp_path / f"t{i}.txt").write_text(f"text number {i} " * 100)
    data = load_data(TextData(paths=(str(tmp_path / "*.txt"),)), vocab_size=256, seq_len=16)
    run = tmp_path / "run"
    config = TrainConfig(steps=1, batch_size=2, seq_len=16, eval_batches=1)
    train(graph, data, config, run, progress=False, log=lambda m: None)
    assert weights_file(run) == run / "weights.safetensors"
    result = export(spec, tmp_path / "exported", fmt="torch", weights=run)
    assert result.report.passed
    (run / "weights.safetensors").unlink()  # a run killed before its end
    with pytest.raises(ArchgenError, match=r"folder without weights\.safetensors") as info:
        weights_file(run)
    assert "step_0000001/weights.safetensors" in str(info.value)
