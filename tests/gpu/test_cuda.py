"""The CUDA paths: every mixer's fast path on the GPU against its loop reference (float64, CPU),
forward and backward; the eager and compile (Inductor -> Triton) backends on the GPU against the
float64 reference model; onnxruntime's CUDA execution provider; search measurement on a CUDA
workload.

These need an NVIDIA GPU and are skipped without one (the CPU suite covers the same code on the
CPU; `tests/backends/test_eager.py` checks the error a missing GPU gives). Run them on a GPU
machine with ``pytest tests/gpu``; `benchmarks/results/cuda.md` records such a run.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from archgen import api
from archgen.backends.base import LowerOptions, get_backend
from archgen.backends.torch_model import build_model
from archgen.ir.ops import Role
from tests.conftest import EXAMPLES
from tests.tolerances import FLOAT32_PARAM_GRAD, assert_close

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
SEQ = 77  # odd: not a multiple of any chunk, segment or block size


def _mixers(spec: Path) -> list[tuple[str, torch.nn.Module, int]]:
    graph = api.compile_spec(spec)
    model = build_model(graph, seed=0, dtype=torch.float64)
    roles = (Role.TOKEN_MIXER, Role.CHANNEL_MIXER)
    seen: set[str] = set()
    out = []
    for node in graph.nodes:
        if node.op.role in roles and repr(node.op) not in seen:  # one module per distinct op
            seen.add(repr(node.op))
            name = f"{spec.stem}:{node.name}"
            out.append((name, model.get_submodule(node.name), graph.model.d_model))
    return out


MIXERS = [m for spec in EXAMPLES for m in _mixers(spec)]


@pytest.mark.parametrize("name,module,d", MIXERS, ids=[m[0] for m in MIXERS])
def test_fast_path_on_cuda_matches_the_float64_loop_reference_fwd_bwd(
    name: str, module: torch.nn.Module, d: int, rng_seed: int
) -> None:
    gen = torch.Generator().manual_seed(rng_seed)
    x = torch.randn(2, SEQ, d, generator=gen, dtype=torch.float64)
    upstream = torch.randn(2, SEQ, d, generator=gen, dtype=torch.float64)

    ref = module
    x_ref = x.clone().requires_grad_(True)
    y_ref = ref.reference(x_ref)  # type: ignore[operator]
    (y_ref * upstream).sum().backward()

    fast = copy.deepcopy(module).to(CUDA, torch.float32)
    fast.zero_grad()
    x_fast = x.to(CUDA, torch.float32).requires_grad_(True)
    y_fast = fast(x_fast)
    (y_fast * upstream.to(CUDA, torch.float32)).sum().backward()

    assert_close(y_fast.cpu(), y_ref.detach(), torch.float32, msg=f"{name} forward")
    assert_close(x_fast.grad.cpu(), x_ref.grad, torch.float32, msg=f"{name} input grad")
    for (pname, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(
            p_fast.grad.cpu().double(),
            p_ref.grad,
            atol=FLOAT32_PARAM_GRAD.atol,
            rtol=FLOAT32_PARAM_GRAD.rtol,
            msg=f"{name} grad of {pname}",
        )


@pytest.mark.parametrize("backend", ["eager", "compile"])
@pytest.mark.parametrize("spec", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_torch_backends_on_cuda_validate_against_the_float64_reference(
    spec: Path, backend: str
) -> None:
    from archgen import export

    # torch.compile(dynamic=False) compiles once per length: one length keeps it to a minute
    lengths = (1, 33, 160) if backend == "eager" else (97, 97, 97)
    result = export.validate(spec, backend=backend, device="cuda", profile=export.Profile(*lengths))
    assert result.report.passed, [r.failures for r in result.report.results if not r.passed]
    assert next(result.artifact.model.parameters()).is_cuda  # type: ignore[attr-defined]


def test_bfloat16_on_cuda_validates() -> None:
    from archgen import export

    spec = next(p for p in EXAMPLES if p.stem == "hybrid")
    result = export.validate(
        spec, backend="eager", device="cuda", dtype="bfloat16", profile=export.Profile(1, 33, 160)
    )
    assert result.report.passed, [r.failures for r in result.report.results if not r.passed]


def test_measure_on_cuda_reports_the_gpu() -> None:
    graph = api.compile_spec(next(p for p in EXAMPLES if p.stem == "transformer"))
    artifact = get_backend("eager").lower(graph, LowerOptions(device="cuda"))
    m = artifact.measure(torch.zeros(2, 64, dtype=torch.long), warmup=2, repeats=5)
    assert m.device == "cuda: " + torch.cuda.get_device_name() and len(m.times_s) == 5


def test_decode_steps_on_cuda_reproduce_the_forward() -> None:
    graph = api.compile_spec(next(p for p in EXAMPLES if p.stem == "hybrid"))
    model = build_model(graph, seed=0).to(CUDA).eval()
    tokens = torch.randint(0, graph.model.vocab_size, (2, 21), device=CUDA)
    with torch.no_grad():
        full = model(tokens)
        state = model.init_state(2)
        steps = []
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state, torch.tensor(t, device=CUDA))
            steps.append(logits)
    assert_close(torch.stack(steps, 1).cpu(), full.cpu().double(), torch.float32)


def test_onnxruntime_cuda_provider_validates() -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has no CUDA EP ({ort.get_available_providers()})")
    from archgen import export

    spec = next(p for p in EXAMPLES if p.stem == "transformer")
    profile = export.Profile(1, 33, 160)
    result = export.validate(spec, backend="onnx", provider="cuda", profile=profile)
    assert result.report.passed


@pytest.mark.parametrize("backend", ["eager", "compile"])
def test_search_measures_a_cuda_workload(backend: str) -> None:
    from archgen.search.measure import Measurer
    from archgen.search.timing import Workload

    graph = api.compile_spec(next(p for p in EXAMPLES if p.stem == "hybrid"))
    measurer = Measurer(Workload(seq_len=256, backend=backend, device="cuda", repeats=5))
    assert measurer.environment()["device"].startswith("cuda: ")
    seconds = measurer.measure_graph(graph)
    block = measurer.measure_block(graph, graph.blocks()[0])
    assert 0 < seconds < 1.0 and 0 <= block < seconds


@pytest.mark.parametrize("seq", [1, 77, 1000])
def test_mamba_on_cuda_runs_the_triton_scan_forward_and_backward(seq: int, rng_seed: int) -> None:
    graph = api.compile_spec(next(p for p in EXAMPLES if p.stem == "hybrid"))
    ref = build_model(graph, seed=0, dtype=torch.float64).get_submodule("layers.0.token_mixer")
    fast = copy.deepcopy(ref).to(CUDA, torch.float32)
    gen = torch.Generator().manual_seed(rng_seed)
    x = torch.randn(2, seq, graph.model.d_model, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = fast(x.to(CUDA, torch.float32))
        want = ref.reference(x)
    assert fast.last_scan_impl == "triton"  # type: ignore[union-attr]
    assert_close(y.cpu(), want, torch.float32)
    grad_y = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    x32 = x.to(CUDA, torch.float32).requires_grad_(True)
    y = fast(x32)
    assert fast.last_scan_impl == "triton"  # type: ignore[union-attr]
    got = torch.autograd.grad(y, [x32, *fast.parameters()], grad_y.to(CUDA, torch.float32))
    x64 = x.clone().requires_grad_(True)
    want_grads = torch.autograd.grad(ref.reference(x64), [x64, *ref.parameters()], grad_y)
    assert_close(got[0].cpu(), want_grads[0], torch.float32)
    tol = FLOAT32_PARAM_GRAD
    for (name, _), g, w in zip(fast.named_parameters(), got[1:], want_grads[1:], strict=True):
        torch.testing.assert_close(g.cpu().double(), w, atol=tol.atol, rtol=tol.rtol, msg=name)


def test_triton_scan_op_passes_opcheck(rng_seed: int) -> None:
    """Schema, fake implementation, autograd registration and AOT dispatch of the Triton op
    (what torch.compile relies on), forward and backward."""
    from archgen.mixers.kernels import selective_scan_triton
    from tests.mixers.triton_scan_check import random_inputs

    gen = torch.Generator().manual_seed(rng_seed)
    inputs = [t.to(CUDA, torch.float32) for t in random_inputs(gen, 2, 9, 18, 3)]
    torch.library.opcheck(
        selective_scan_triton._scan_op, tuple(t.requires_grad_(True) for t in inputs)
    )
