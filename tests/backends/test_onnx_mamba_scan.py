"""Mamba-1's selective scan as one onnxruntime custom-op node, ``archgen.SelectiveScan``
(backends/onnx_scan.py, mixers/kernels/ort_selective_scan.*): the node alone against a float64
loop on odd sizes (also with Δ's softplus and dt bias folded in, ``delta_softplus=1``), the
causal conv's export form (one Conv), a fused export that validates block by block and records
its scan form, the portable (``Scan``) form with no custom-domain node, and the errors and
fallback where the library cannot be built.

The library is built once per cache folder (the suite's ``ARCHGEN_CACHE``) and reused."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from archgen.backends.base import LowerOptions, get_backend
from archgen.backends.eager import reference_artifact
from archgen.backends.onnx import FORWARD_FILE, OnnxArtifact, make_session
from archgen.backends.onnx_export import FUSED_SCAN, PORTABLE_SCAN, SCAN_FORM_KEY
from archgen.backends.validate import validate
from archgen.errors import UnavailableError
from archgen.export import Profile, lower_options
from archgen.mixers.kernels import ort_selective_scan
from tests.backends.conformance import random_tokens, tiny_graph
from tests.tolerances import assert_close

# Two Mamba layers at odd widths: D_inner = 2 * 21 = 42 channels (not a multiple of the
# kernel's 16-channel blocks), 5 states, a vocabulary of 61.
SPEC = """\
model:
  name: tiny-mamba-scan
  vocab_size: 61
  d_model: 21
  max_seq_len: 48
  layers:
    - token_mixer: {kind: mamba, d_state: 5, expand: 2}
      channel_mixer: {kind: swiglu, hidden: 34}
    - token_mixer: {kind: mamba, d_state: 5, d_conv: 3, expand: 2}
      channel_mixer: null
"""
SCAN_INPUTS = ("x", "dt", "A", "B", "C", "D")


def _scan_session(
    inputs_used: tuple[str, ...] = SCAN_INPUTS, **attributes: int
) -> ort.InferenceSession:
    """A one-node graph: the custom op alone, with archgen's library."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs_used]
    node = helper.make_node(
        "SelectiveScan", list(inputs_used), ["y"], domain="archgen", **attributes
    )
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "scan", inputs, [output])
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("archgen", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2  # blocks run on the session's pool: more than one thread
    so.register_custom_ops_library(str(ort_selective_scan.library_path()))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _loop_reference(x, dt, a_mat, b, c, d_skip):  # float64, one step at a time
    h = x.new_zeros(x.shape[0], x.shape[2], a_mat.shape[1])
    ys = []
    for t in range(x.shape[1]):
        h = (
            torch.exp(dt[:, t, :, None] * a_mat) * h
            + (dt[:, t] * x[:, t])[..., None] * b[:, t, None]
        )
        ys.append((h * c[:, t, None]).sum(-1) + d_skip * x[:, t])
    return torch.stack(ys, dim=1)


@pytest.mark.parametrize(
    ("batch", "seq", "dim", "state"), [(3, 37, 21, 5), (1, 1, 7, 3), (2, 70, 33, 16)]
)
def test_scan_node_matches_the_float64_loop(batch, seq, dim, state, rng_seed) -> None:
    gen = torch.Generator().manual_seed(rng_seed)
    x = torch.randn(batch, seq, dim, generator=gen)
    dt = torch.rand(batch, seq, dim, generator=gen) * 0.5
    a_mat = -torch.rand(dim, state, generator=gen) * 3
    b, c = (torch.randn(batch, seq, state, generator=gen) for _ in range(2))
    d_skip = torch.randn(dim, generator=gen)
    args = (x, dt, a_mat, b, c, d_skip)
    (y,) = _scan_session().run(None, {n: t.numpy() for n, t in zip(SCAN_INPUTS, args, strict=True)})
    expected = _loop_reference(*(t.double() for t in args))
    assert_close(torch.from_numpy(y), expected, dtype=torch.float32)


@pytest.mark.parametrize(
    ("batch", "seq", "dim", "state", "with_bias"),
    [(3, 37, 21, 5, True), (1, 1, 7, 3, True), (2, 45, 33, 16, False)],
)
def test_scan_node_with_delta_softplus_matches_the_float64_loop(
    batch, seq, dim, state, with_bias, rng_seed
) -> None:
    """delta_softplus=1: the node takes the raw dt (both signs, some past softplus's threshold
    of 20) and the optional dt bias, and must equal softplus(dt + bias) then the loop."""
    gen = torch.Generator().manual_seed(rng_seed)
    x = torch.randn(batch, seq, dim, generator=gen)
    dt_raw = torch.randn(batch, seq, dim, generator=gen) * 3 - 2
    dt_raw[:, ::7, ::3] = 20.5  # the threshold branch (Δ = dt itself); a decay exp(20.5 A) ~ 0
    a_mat = -torch.rand(dim, state, generator=gen) * 3
    b, c = (torch.randn(batch, seq, state, generator=gen) for _ in range(2))
    d_skip = torch.randn(dim, generator=gen)
    bias = torch.randn(dim, generator=gen) if with_bias else torch.zeros(dim)
    args = (x, dt_raw, a_mat, b, c, d_skip) + ((bias,) if with_bias else ())
    names = SCAN_INPUTS + (("dt_bias",) if with_bias else ())
    session = _scan_session(names, delta_softplus=1)
    (y,) = session.run(None, {n: t.numpy() for n, t in zip(names, args, strict=True)})
    delta = torch.nn.functional.softplus(dt_raw.double() + bias.double())
    expected = _loop_reference(x.double(), delta, *(t.double() for t in (a_mat, b, c, d_skip)))
    assert_close(torch.from_numpy(y), expected, dtype=torch.float32)


def test_causal_conv_export_form_equals_the_eager_taps(monkeypatch, rng_seed) -> None:
    """Under export the conv is one grouped Conv1d (an ONNX Conv); it must equal the in-place
    taps eager runs, and the token loop of the reference, at an odd length and d_conv."""
    from archgen.mixers import mamba as mamba_module

    torch.manual_seed(rng_seed)
    mixer = mamba_module.Mamba(d_model=13, d_state=3, d_conv=5, scan="chunked").double()
    x = torch.randn(2, 19, mixer.d_inner, dtype=torch.float64)
    eager = mixer._causal_conv(x)
    monkeypatch.setattr(mamba_module, "exporting", lambda: True)
    exported = mixer._causal_conv(x)
    weight, bias = mixer.conv1d.weight[:, 0], mixer.conv1d.bias
    loop = torch.stack(
        [
            bias + sum(weight[:, j] * x[:, t - 4 + j] for j in range(5) if t - 4 + j >= 0)
            for t in range(19)
        ],
        dim=1,
    )
    assert_close(exported, loop, dtype=torch.float64)
    assert_close(eager, loop, dtype=torch.float64)


def test_loading_the_library_keeps_subnormal_floats() -> None:
    """A library linked with -ffast-math turns on flush-to-zero for the whole process when it
    is loaded (gcc's crtfastmath.o): every later float op of the user's program would flush
    subnormals. Loaded in a child process, so a regression cannot spread to other tests."""
    path = ort_selective_scan.library_path()
    code = (
        "import ctypes, sys; tiny = float(sys.argv[2]); assert tiny / 4 > 0;"
        "ctypes.CDLL(sys.argv[1]); print(tiny / 4 > 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), "2.2250738585072014e-308"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True", "loading the library flushed subnormals to zero"


def test_scan_node_refuses_mismatched_shapes() -> None:
    feed = {
        n: np.zeros(s, np.float32)
        for n, s in zip(
            SCAN_INPUTS, [(1, 4, 3), (1, 4, 3), (3, 2), (1, 4, 5), (1, 4, 2), (3,)], strict=True
        )
    }
    with pytest.raises(Exception, match="B and C must be"):
        _scan_session().run(None, feed)


def _domains(path: Path) -> Counter[str]:
    return Counter(n.domain or "ai.onnx" for n in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory) -> OnnxArtifact:
    graph = tiny_graph(tmp_path_factory.mktemp("fused"), SPEC)
    artifact = get_backend("onnx").lower(graph, LowerOptions(decode_graph=False))
    assert isinstance(artifact, OnnxArtifact)
    return artifact


def test_fused_export_has_one_scan_node_per_layer_and_says_so(fused: OnnxArtifact) -> None:
    proto = onnx.load(str(fused.folder / FORWARD_FILE))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["SelectiveScan"] == 2 and ops["Scan"] == 0
    # Δ's softplus and dt bias live in the node; each causal conv is one Conv, not a ScatterND
    # chain
    assert ops["Softplus"] == 0 and ops["ScatterND"] == 0 and ops["Conv"] == 2
    scans = [n for n in proto.graph.node if n.op_type == "SelectiveScan"]
    for node in scans:
        assert [(a.name, a.i) for a in node.attribute] == [("delta_softplus", 1)]
        assert len(node.input) == 7 and node.input[6].endswith("dt_proj.bias")
    assert {p.key: p.value for p in proto.metadata_props}[SCAN_FORM_KEY] == FUSED_SCAN
    assert fused.meta.extra["forward"]["mamba_scan"] == FUSED_SCAN
    mixers = [n for n in fused.meta.nodes if n.endswith("token_mixer")]
    assert all(FUSED_SCAN in fused.meta.nodes[n].impl for n in mixers)


def test_fused_export_validates_block_by_block(fused: OnnxArtifact, rng_seed: int) -> None:
    report = validate(fused, seq_lens=(1, 17, 48), seed=rng_seed)  # odd lengths and the max
    assert report.passed, report.first_failure


def test_fused_forward_equals_the_reference(fused: OnnxArtifact, rng_seed: int) -> None:
    tokens = random_tokens(fused.graph, 3, 29, rng_seed)
    expected = reference_artifact(fused.graph, fused.meta.options).run(tokens)  # float64 eager
    assert_close(fused.run(tokens), expected, dtype=torch.float32)


def test_portable_export_has_no_custom_domain_node(tmp_path: Path, rng_seed: int) -> None:
    graph = tiny_graph(tmp_path, SPEC)
    options = lower_options(graph, dtype="float32", weights=None, profile=Profile(), portable=True)
    assert not options.fused_scan and not options.fused_attention  # what --portable asks for
    artifact = get_backend("onnx").lower(graph, replace(options, decode_graph=False))
    artifact.save(tmp_path / "portable")
    path = tmp_path / "portable" / FORWARD_FILE
    assert set(_domains(path)) == {"ai.onnx"}
    assert Counter(n.op_type for n in onnx.load(str(path)).graph.node)["Scan"] == 2
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta[SCAN_FORM_KEY] == PORTABLE_SCAN
    assert validate(artifact, seq_lens=(1, 19), seed=rng_seed).passed


@pytest.fixture
def no_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A fresh cache and a compiler that does not exist: the library cannot be built."""
    monkeypatch.setenv("ARCHGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    ort_selective_scan.reset()
    yield
    ort_selective_scan.reset()  # the next test builds (or finds) the real one again


def test_fused_model_without_the_library_fails_clearly(fused: OnnxArtifact, no_compiler) -> None:
    with pytest.raises(UnavailableError) as info:
        make_session(fused.folder / FORWARD_FILE, fused.meta.options)
    text = str(info.value)
    assert "archgen.SelectiveScan" in text and "could not be built" in text
    assert "no-such-c++" in text and "--portable" in text


def test_lowering_without_the_library_falls_back_visibly(tmp_path: Path, no_compiler) -> None:
    graph = tiny_graph(tmp_path, SPEC.replace("max_seq_len: 48", "max_seq_len: 16"))
    artifact = get_backend("onnx").lower(graph, LowerOptions(decode_graph=False))
    assert not artifact.meta.options.fused_scan
    assert any("could not be built here" in note for note in artifact.meta.notes)
    assert artifact.meta.extra["forward"]["mamba_scan"] == PORTABLE_SCAN
    assert "archgen" not in {
        o.domain for o in onnx.load(str(artifact.folder / FORWARD_FILE)).opset_import
    }
