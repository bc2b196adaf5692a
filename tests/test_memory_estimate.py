"""Models and batches too large for the machine are refused before allocating (issue 16):
`check` warns, `build` and `train` stop with the figure and the memory available."""

from __future__ import annotations

from pathlib import Path

import pytest

from archgen import api, training
from archgen.errors import ArchgenError
from tests.conftest import archgen

SPEC = """\
model:
  name: big
  vocab_size: 256
  d_model: {d_model}
  max_seq_len: 64
  layers:
    - token_mixer: {{kind: attention, heads: 2}}
      channel_mixer: {{kind: swiglu}}
train: {{steps: 1, batch_size: {batch}, seq_len: 16}}
"""
GIB = 2**30


def _spec(tmp_path: Path, d_model: int = 65536, batch: int = 2) -> Path:
    path = tmp_path / "big.yaml"
    path.write_text(SPEC.format(d_model=d_model, batch=batch))
    return path


@pytest.fixture
def one_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "available_memory", lambda device="cpu": GIB)


def test_memory_estimate_counts_parameters_and_activations(tmp_path: Path) -> None:
    graph = api.compile_spec(_spec(tmp_path, d_model=32))
    params = sum(n.op.params() for n in graph.nodes)
    assert api.memory_estimate(graph, "build").total == 4 * params
    train = api.memory_estimate(graph, "train", batch_size=8, seq_len=16)
    per_sequence = sum(n.op.activation_bytes(16) for n in graph.nodes)
    assert train.total == 16 * params + 8 * per_sequence


def test_check_warns_and_build_refuses_a_model_too_large(tmp_path: Path, one_gib: None) -> None:
    spec = _spec(tmp_path)
    report = api.check(spec)
    assert len(report.warnings) == 1
    assert "51.56G parameters x 4 bytes" in report.warnings[0]
    with pytest.raises(ArchgenError) as info:
        api.build(spec, tmp_path / "out")
    text = str(info.value)
    assert "`archgen build` needs at least 192.1 GiB" in text and "1.0 GiB available" in text
    assert "lower model.d_model" in text
    assert not (tmp_path / "out").exists()


def test_train_refuses_a_batch_too_large_before_reading_data(tmp_path: Path, one_gib: None) -> None:
    spec = _spec(tmp_path, d_model=32, batch=1048576)
    with pytest.raises(ArchgenError) as info:
        training.train(spec, data=[str(tmp_path / "missing.txt")], out=tmp_path / "run")
    text = str(info.value)
    assert "`archgen train` needs at least" in text and "batches of 1048576 x 16 tokens" in text
    assert "lower --batch-size or --seq-len" in text
    assert not (tmp_path / "run").exists()


def test_small_model_fits() -> None:
    graph = api.compile_spec(Path(__file__).parent.parent / "examples" / "transformer.yaml")
    api.check_memory(graph, "train", batch_size=16, seq_len=128)


def test_check_cli_warns_and_exits_0(tmp_path: Path) -> None:
    # 51.56G parameters: 192 GiB of float32 weights, more than test machines have free.
    if (api.available_memory() or 0) > 192 * GIB:
        pytest.skip("this machine could build the model")
    spec = _spec(tmp_path)
    result = archgen("check", str(spec))
    assert result.returncode == 0, result.stderr
    assert "warning: `archgen build` needs at least 192.1 GiB" in result.stderr
    result = archgen("build", str(spec), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_export_refuses_a_model_too_large_before_building_it(tmp_path: Path, one_gib: None) -> None:
    from archgen import export as export_api

    with pytest.raises(ArchgenError, match="`archgen export` needs at least"):
        export_api.export(_spec(tmp_path), tmp_path / "out", fmt="onnx")
    assert not (tmp_path / "out").exists()


def test_validate_and_generate_refuse_a_model_too_large(tmp_path: Path, one_gib: None) -> None:
    # Both built the model first and were killed allocating it (the bad-input sweep).
    from archgen import export as export_api
    from archgen import generate

    spec = _spec(tmp_path)
    with pytest.raises(ArchgenError, match="`archgen validate` needs at least"):
        export_api.validate(spec, backend="eager")
    with pytest.raises(ArchgenError, match="`archgen generate` needs at least"):
        generate.load_for_generation(spec, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchgenError, match="folder without weights"):  # before the size
        generate.load_for_generation(spec, tmp_path / "empty")
