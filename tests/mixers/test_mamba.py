"""Mamba-1 mixer: chunked and fused scans against the float64 token loop, fwd + bwd; decode;
mamba-ssm checkpoint layout; ONNX export with a dynamic sequence length; kernel fallback."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

from archgen.mixers.kernels import selective_scan as fused_kernel
from archgen.mixers.mamba import Mamba, selective_scan_chunked
from tests.tolerances import assert_close

F64 = torch.float64
# Odd sizes: d_inner = 42 is not a multiple of the kernel's 16-channel block, L = 37 is not a
# multiple of any chunk size, dt_rank = ceil(21/16) = 2.
B, L, D_MODEL, D_STATE, D_CONV = 2, 37, 21, 5, 3


def fused_available() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fused_kernel.load(required=False) is not None


needs_fused = pytest.mark.skipif(not fused_available(), reason="fused kernel did not build here")


def make(scan: str = "chunked", dtype: torch.dtype = F64, seed: int = 0, **kw) -> Mamba:
    """A mixer whose SSM parameters are moved off their init so that decays span from ~1 to ~0
    per step (init has A = -(1..N) for every channel, which would hide channel mix-ups)."""
    torch.manual_seed(seed)
    m = Mamba(D_MODEL, d_state=D_STATE, d_conv=D_CONV, scan=scan, dtype=dtype, **kw)
    with torch.no_grad():
        m.A_log.add_(torch.randn_like(m.A_log))
        m.dt_proj.bias.add_(2 * torch.randn_like(m.dt_proj.bias))
        m.D.normal_()
    return m


def grads(m: Mamba, fn, u: torch.Tensor, gy: torch.Tensor) -> list[torch.Tensor]:
    u = u.detach().requires_grad_(True)
    y = fn(u)
    return [y, *torch.autograd.grad(y, [u, *m.parameters()], gy)]


# -- checkpoint compatibility ------------------------------------------------------------------
def mamba_ssm_shapes(d_model: int, d_state: int, d_conv: int, expand: int, bias: bool) -> dict:
    """Key -> shape of mamba-ssm's ``Mamba`` (mamba_simple.py), written from its formulas."""
    di, rank = expand * d_model, math.ceil(d_model / 16)
    shapes = {
        "A_log": (di, d_state),
        "D": (di,),
        "in_proj.weight": (2 * di, d_model),
        "conv1d.weight": (di, 1, d_conv),
        "conv1d.bias": (di,),
        "x_proj.weight": (rank + 2 * d_state, di),
        "dt_proj.weight": (di, rank),
        "dt_proj.bias": (di,),
        "out_proj.weight": (d_model, di),
    }
    if bias:
        shapes |= {"in_proj.bias": (2 * di,), "out_proj.bias": (d_model,)}
    return shapes


@pytest.mark.parametrize("bias", [False, True])
def test_loads_mamba_ssm_state_dict_strict(bias: bool):
    expected = mamba_ssm_shapes(40, 16, 4, 2, bias)
    m = Mamba(40, bias=bias)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    sd = {k: torch.randn(s) for k, s in expected.items()}
    m.load_state_dict(sd, strict=True)
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_init_follows_mamba_ssm():
    m = Mamba(40, d_state=7, dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4)
    n = torch.arange(1, 8, dtype=torch.float32)
    assert torch.allclose(m.A_log, torch.log(n).expand(80, 7))
    assert torch.equal(m.D, torch.ones(80))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert dt.std() > 0.01  # log-uniform, not constant
    assert m.dt_proj.weight.abs().max() <= 3**-0.5  # dt_rank = ceil(40/16) = 3
    assert m.A_log._no_weight_decay and m.D._no_weight_decay


# -- forward and backward against the loop -----------------------------------------------------
@pytest.mark.parametrize(
    "scan,chunk_size",
    [("chunked", 1), ("chunked", 8), ("chunked", 64), pytest.param("fused", 8, marks=needs_fused)],
)
def test_matches_reference_float64_fwd_bwd(scan: str, chunk_size: int):
    m = make(scan, chunk_size=chunk_size)
    u = torch.randn(B, L, D_MODEL, dtype=F64)
    gy = torch.randn(B, L, D_MODEL, dtype=F64)
    got, want = grads(m, m.forward, u, gy), grads(m, m.reference, u, gy)
    assert m.last_scan_impl == scan
    names = ["y", "u", *(n for n, _ in m.named_parameters())]
    for name, g, w in zip(names, got, want, strict=True):
        assert_close(g, w, msg=f"{scan}: {name}")


@pytest.mark.parametrize("scan", ["chunked", pytest.param("fused", marks=needs_fused)])
def test_float32_matches_float64_reference(scan: str):
    m64 = make(scan)
    m32 = copy.deepcopy(m64).float()
    u = torch.randn(B, L, D_MODEL, dtype=F64)
    assert_close(m32(u.float()), m64.reference(u))


def test_bfloat16_module_scans_in_float32():
    m64 = make()
    m16 = copy.deepcopy(m64).bfloat16()
    u = torch.randn(B, L, D_MODEL, dtype=F64)
    y = m16(u.bfloat16())
    assert y.dtype == torch.bfloat16
    assert_close(y, m64.reference(u))


@pytest.mark.parametrize("scan", ["chunked", pytest.param("fused", marks=needs_fused)])
def test_extreme_decays_stay_exact(scan: str):
    """Per-step log-decays of -1e3..-1e-4 in the same channel: a log-space cumsum scan overflows
    here (chunk totals far beyond exp's range); the doubling scan and the kernel must not."""
    m = make(scan, chunk_size=16)
    with torch.no_grad():
        m.A_log.uniform_(-3.0, 6.0)  # |A| in [0.05, 400]
        m.dt_proj.bias.uniform_(-8.0, 3.0)  # dt in [3e-4, 3]
    u = torch.randn(B, L, D_MODEL, dtype=F64)
    y = m(u)
    assert torch.isfinite(y).all()
    assert_close(y, m.reference(u))
    assert_close(m.float()(u.float()), y)


def test_selective_scan_chunked_matches_loop_directly():
    """The scan alone, at an L spanning several chunks plus a ragged tail, with non-zero D."""
    torch.manual_seed(1)
    bsz, seq, dim, n = 3, 29, 6, 4
    x, dt = torch.randn(bsz, seq, dim, dtype=F64), torch.rand(bsz, seq, dim, dtype=F64)
    a_mat = -torch.rand(dim, n, dtype=F64) * 3
    b, c = torch.randn(bsz, seq, n, dtype=F64), torch.randn(bsz, seq, n, dtype=F64)
    d_skip = torch.randn(dim, dtype=F64)
    h = torch.zeros(bsz, dim, n, dtype=F64)
    want = []
    for t in range(seq):
        h = (
            torch.exp(dt[:, t, :, None] * a_mat) * h
            + (dt[:, t] * x[:, t])[..., None] * b[:, t, None]
        )
        want.append(torch.einsum("bdn,bn->bd", h, c[:, t]) + d_skip * x[:, t])
    got = selective_scan_chunked(x, dt, a_mat, b, c, d_skip, chunk_size=4)
    assert_close(got, torch.stack(want, 1))


def test_inference_path_equals_autograd_path():
    """Without autograd the chunked scan writes into buffers instead of concatenating: same
    operations in the same order, so the outputs must be bitwise equal."""
    m = make("chunked", dtype=torch.float32)
    u = torch.randn(B, L, D_MODEL)
    with_grad = m(u)
    assert with_grad.requires_grad
    with torch.inference_mode():
        assert torch.equal(m(u), with_grad.detach())


# -- decoding ----------------------------------------------------------------------------------
@pytest.mark.parametrize("d_conv", [1, 3])
def test_step_matches_forward(d_conv: int):
    torch.manual_seed(0)
    m = Mamba(D_MODEL, d_state=D_STATE, d_conv=d_conv, scan="chunked", dtype=F64)
    u = torch.randn(B, L, D_MODEL, dtype=F64)
    state = m.init_state(B, dtype=F64)
    assert [tuple(s.shape) for s in state] == [(B, 42, d_conv - 1), (B, 42, D_STATE)]
    ys = []
    for t in range(L):
        y, state = m.step(u[:, t], state, torch.tensor(t))
        ys.append(y)
    assert_close(torch.stack(ys, 1), m(u))
    assert [tuple(s.shape) for s in state] == [(B, 42, d_conv - 1), (B, 42, D_STATE)]


def test_bf16_state_is_float32():
    m = Mamba(16, dtype=torch.bfloat16)
    conv, ssm = m.init_state(1)
    assert conv.dtype == torch.bfloat16 and ssm.dtype == torch.float32


# -- implementation choice ---------------------------------------------------------------------
def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="scan must be one of"):
        Mamba(8, scan="cuda")
    with pytest.raises(ValueError, match="power of two"):
        Mamba(8, chunk_size=12)


def test_fused_refuses_export(monkeypatch):
    m = Mamba(8, scan="fused")
    monkeypatch.setattr(torch.compiler, "_is_exporting_flag", True)
    with pytest.raises(RuntimeError, match="cannot be exported"):
        m(torch.randn(1, 5, 8))


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A fresh build directory and a C++ compiler that does not exist. The loader's state is
    restored afterwards, so later tests get the real kernel back without rebuilding it."""
    monkeypatch.setenv("ARCHGEN_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    for name in ("_module", "_error", "_warned"):
        monkeypatch.setattr(fused_kernel, name, getattr(fused_kernel, name))
    fused_kernel.reset()


def test_auto_falls_back_with_one_warning(no_compiler):
    m = make("auto")
    u = torch.randn(B, L, D_MODEL, dtype=F64)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        y = m(u)
    assert m.last_scan_impl == "chunked"
    assert_close(y, m.reference(u))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not on every call
        m(u)


def test_fused_without_compiler_is_an_error(no_compiler):
    m = make("fused")
    with pytest.raises(RuntimeError, match="fused selective-scan kernel could not be built"):
        m(torch.randn(B, L, D_MODEL, dtype=F64))


@needs_fused
def test_auto_uses_fused_when_built():
    m = make("auto")
    m(torch.randn(1, 3, D_MODEL, dtype=F64))
    assert m.last_scan_impl == "fused"


@pytest.mark.slow
@pytest.mark.parametrize(
    "scan,fullgraph", [("chunked", False), pytest.param("fused", True, marks=needs_fused)]
)
def test_torch_compile(scan: str, fullgraph: bool):
    """torch.compile, forward and backward. The chunked scan is a graph break (Inductor cannot
    lower the scan op); the fused kernel is a custom op and compiles in one graph."""
    m = make(scan, dtype=torch.float32)
    u = torch.randn(B, L, D_MODEL, dtype=F64, requires_grad=True)
    gy = torch.randn(B, L, D_MODEL, dtype=F64)
    u32 = u.detach().float().requires_grad_(True)
    y = torch.compile(m, fullgraph=fullgraph)(u32)
    (gu,) = torch.autograd.grad(y, u32, gy.float())
    want = copy.deepcopy(m).double().reference(u)
    assert_close(y, want)
    assert_close(gu, torch.autograd.grad(want, u, gy)[0])


@needs_fused
def test_fused_custom_op_passes_opcheck():
    """Schema, fake (meta) implementation and autograd registration of the kernel's op."""
    torch.manual_seed(0)
    bsz, seq, dim, n = 2, 9, 18, 3
    args = (
        torch.randn(bsz, seq, dim, dtype=F64),  # x
        torch.rand(bsz, seq, dim, dtype=F64),  # dt >= 0
        -2 * torch.rand(dim, n, dtype=F64),  # A < 0
        torch.randn(bsz, seq, n, dtype=F64),  # B
        torch.randn(bsz, seq, n, dtype=F64),  # C
        torch.randn(dim, dtype=F64),  # D
    )
    torch.library.opcheck(fused_kernel._scan_op, tuple(t.requires_grad_(True) for t in args))


# -- ONNX --------------------------------------------------------------------------------------
def _export(m: Mamba, seq: int, path):
    dyn = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            m,
            (torch.randn(2, seq, m.d_model),),
            dynamo=True,
            dynamic_shapes=({**dyn},),
            verbose=False,
        )
    prog.save(str(path))
    return prog.model_proto


def _count_nodes(graph) -> int:
    """Nodes of the graph and of every subgraph (the Scan body)."""
    total = 0
    for node in graph.node:
        total += 1
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                total += _count_nodes(attr.g)
    return total


def test_onnx_dynamic_length_and_constant_graph(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = Mamba(16, d_state=4, scan="chunked", chunk_size=8).eval()
    proto = _export(m, 64, tmp_path / "m64.onnx")
    assert "Scan" in {n.op_type for n in proto.graph.node}
    sess = ort.InferenceSession(str(tmp_path / "m64.onnx"), providers=["CPUExecutionProvider"])
    for bsz, seq in [(1, 37), (3, 101)]:
        u = torch.randn(bsz, seq, 16)
        (got,) = sess.run(None, {sess.get_inputs()[0].name: u.numpy()})
        with torch.no_grad():
            assert_close(torch.from_numpy(got), m(u), dtype=torch.float32)
    proto256 = _export(m, 256, tmp_path / "m256.onnx")
    assert _count_nodes(proto.graph) == _count_nodes(proto256.graph)


def test_exporting_is_true_under_torch_export_and_false_under_torch_compile():
    """archgen's export check must not follow torch <= 2.11's is_exporting(), which Dynamo
    folded to True under torch.compile (pytorch/pytorch#176347)."""
    from archgen.mixers.base import exporting

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1 if exporting() else x - 1

    x = torch.zeros(2)
    assert torch.equal(torch.compile(Probe(), fullgraph=True)(x), x - 1)
    exported = torch.export.export(Probe(), (x,))
    assert torch.equal(exported.module()(x), x + 1)
    assert torch.equal(Probe()(x), x - 1)
