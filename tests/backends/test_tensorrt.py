"""The tensorrt backend on a machine without it: availability says what is missing, and every
entry point fails fast with a clear error. (The engine-building path needs an NVIDIA GPU and the
tensorrt package; it is not exercised here.)"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archgen.backends.base import LowerOptions, get_backend
from archgen.errors import UnavailableError
from tests.backends.conformance import tiny_graph
from tests.conftest import ROOT

HAS_TRT = importlib.util.find_spec("tensorrt") is not None

pytestmark = pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed: these test its absence")


def test_is_available_names_what_is_missing() -> None:
    ok, reason = get_backend("tensorrt").is_available()
    assert not ok and "no module named tensorrt" in reason


def test_lowering_raises_unavailable_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="'tensorrt' is not available here") as info:
        get_backend("tensorrt").lower(tiny_graph(tmp_path), LowerOptions())
    assert info.value.exit_code == 3


def test_cli_export_fails_fast_with_exit_code_3_and_writes_nothing(tmp_path: Path) -> None:
    """It fails before importing torch (checked, not timed: a `torch` that raises when imported
    comes first on the path) and writes nothing."""
    out, poisoned = tmp_path / "engine", tmp_path / "poisoned"
    (poisoned / "torch").mkdir(parents=True)
    (poisoned / "torch" / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(poisoned), str(ROOT)])}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "archgen.cli.main", "export"),
            *(str(ROOT / "examples/transformer.yaml"), "--format", "tensorrt", "-o", str(out)),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 3, result.stderr
    assert "cannot export tensorrt on this machine: no module named tensorrt" in result.stderr
    assert "Traceback" not in result.stderr and "torch was imported" not in result.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["poisoned"]


def test_importing_the_module_needs_neither_tensorrt_nor_torch() -> None:
    code = (
        "import sys; from archgen.backends.base import get_backend;"
        "ok, why = get_backend('tensorrt').is_available(); assert not ok, why;"
        "assert 'tensorrt' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- what the engine is built from: runs without tensorrt (onnx and onnxruntime only) ----------
def test_the_engine_is_built_from_the_onnx_backends_deploy_graph(tmp_path: Path) -> None:
    # It was built from a graph of its own: input `tokens`, one output per block boundary.
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    import onnx
    import torch

    from archgen.backends.eager import TORCH_DTYPES, source_model
    from archgen.backends.tensorrt import INPUT, ONNX_FILE, validation_onnx, write_onnx

    graph = tiny_graph(tmp_path)
    options = LowerOptions().resolve(graph)
    facts = write_onnx(graph, options, tmp_path)
    engine_source = onnx.load(str(tmp_path / ONNX_FILE))
    shipped = get_backend("onnx").lower(graph, LowerOptions())
    onnx_deploy = onnx.load(str(shipped.folder / "model.onnx"))  # type: ignore[attr-defined]
    for proto in (engine_source, onnx_deploy):
        assert [i.name for i in proto.graph.input] == [INPUT] == ["input_ids"]
        assert [o.name for o in proto.graph.output] == ["logits"]
    props = {p.key: p.value for p in engine_source.metadata_props}
    assert props == {p.key: p.value for p in onnx_deploy.metadata_props}
    assert props["archgen.graph"] == "forward" and props["archgen.vocab_size"] == "64"
    # standard ONNX ops only: TensorRT's parser knows no onnxruntime contrib or archgen op
    assert {n.domain for n in engine_source.graph.node} <= {"", "ai.onnx"}, facts["op_counts"]

    # the validation engine's source: the same graph, the blocks re-exposed after the logits
    session = ort.InferenceSession(validation_onnx(graph, tmp_path))
    assert [o.name for o in session.get_outputs()] == ["logits", *graph.blocks()]
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(7))
    logits, *blocks = session.run(None, {INPUT: ids.numpy().astype(np.int64)})
    model = source_model(graph, options, TORCH_DTYPES["float64"], torch.device("cpu"))
    with torch.no_grad():
        expected = model(ids).numpy()
    assert len(blocks) == len(graph.blocks())
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)
