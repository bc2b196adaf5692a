"""Fused CPU selective scan for Mamba-1, built on first use with ``load_inline``.

The C++ source is ``selective_scan.cpp`` beside this file (the torch binding) and
``selective_scan_core.h`` (the math, shared with the onnxruntime custom op of
:mod:`archgen.mixers.kernels.ort_selective_scan`). The build goes to
``<cache>/torch_extensions/<name>`` (:func:`archgen.paths.cache_dir`: ``ARCHGEN_CACHE``, else
the platform's cache folder); the extension name carries a hash of the source, the flags and
the CPU, so a cache shared between different machines never hands a ``-march=native`` binary
to the wrong CPU. A failed build (no compiler, no ninja, ...) is recorded once:
``load(required=False)`` then returns ``None`` after one warning, ``load(required=True)`` raises
with the build error.

>>> import torch
>>> from archgen.mixers.kernels import selective_scan as ss
>>> if ss.load(required=False) is not None:
...     x, dt = torch.randn(1, 5, 3), torch.rand(1, 5, 3)
...     a, b, c, d = -torch.rand(3, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 4), torch.ones(3)
...     y = ss.selective_scan(x, dt, a, b, c, d)
...     assert y.shape == (1, 5, 3)
"""

from __future__ import annotations

import contextlib
import hashlib
import platform
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from archgen.mixers.kernels import register_scan_backward
from archgen.paths import cache_dir

SOURCE_PATH = Path(__file__).with_name("selective_scan.cpp")
CORE_PATH = Path(__file__).with_name("selective_scan_core.h")
CFLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp")

_module: ModuleType | None = None
_error: str | None = None  # set after a failed build; not retried in this process
_warned = False


def cpu_tag() -> str:
    """The CPU model and flags, so a ``-march=native`` build is only reused on the same CPU."""
    info = platform.processor() + platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info += "".join(ln for ln in lines if ln.startswith(("model name", "flags")))[:8192]
    except OSError:
        pass
    return info


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    source = SOURCE_PATH.read_text()
    core = CORE_PATH.read_text()
    key = "\n".join([source, core, " ".join(CFLAGS), torch.__version__, cpu_tag()])
    name = "archgen_selective_scan_" + hashlib.sha256(key.encode()).hexdigest()[:12]
    build_dir = cache_dir() / "torch_extensions" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about compiler versions on every build
        return cpp_extension.load_inline(
            name=name,
            cpp_sources=[source],
            functions=["scan_fwd", "scan_bwd"],
            extra_cflags=list(CFLAGS),
            extra_ldflags=["-fopenmp"],
            extra_include_paths=[str(CORE_PATH.parent)],
            build_directory=str(build_dir),
            verbose=False,
        )


def load(*, required: bool) -> ModuleType | None:
    """The compiled extension, building it on first use; ``None`` (or raise) when it cannot."""
    global _module, _error, _warned
    if _module is None and _error is None:
        try:
            _module = _build()
        except Exception as exc:  # compiler missing, ninja missing, build error...
            _error = f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"
    if _module is not None:
        return _module
    if required:
        raise RuntimeError(f"the fused selective-scan kernel could not be built: {_error}")
    if not _warned:
        _warned = True
        warnings.warn(
            "archgen: the fused selective-scan kernel could not be built, Mamba(scan='auto') "
            f"uses the chunked torch scan instead ({_error.splitlines()[0] if _error else ''})",
            RuntimeWarning,
            stacklevel=3,
        )
    return None


_export_as_op = False


@contextlib.contextmanager
def exported_as_custom_op() -> Iterator[None]:
    """Inside this context, ``torch.export`` records a Mamba scan (``scan='auto'`` or
    ``'fused'``, float32) as this module's custom op ``archgen::selective_scan`` instead of the
    chunked scan's standard ops: the ONNX backend lowers that op to onnxruntime's
    ``archgen.SelectiveScan`` (:mod:`archgen.backends.onnx_scan`). Tracing calls only the op's
    fake implementation, so nothing is built here."""
    global _export_as_op
    previous, _export_as_op = _export_as_op, True
    try:
        yield
    finally:
        _export_as_op = previous


def exports_as_custom_op() -> bool:
    """Whether an export now records the scan as the custom op (:func:`exported_as_custom_op`)."""
    return _export_as_op


def reset() -> None:
    """Forget the build result so the next ``load`` tries again (tests)."""
    global _module, _error, _warned
    _module, _error, _warned = None, None, False


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the kernel builds here (warns once when not). Under torch.compile the answer is
    computed once while tracing and baked into the graph, so ``load`` is never traced."""
    return load(required=False) is not None


def _ext() -> ModuleType:
    ext = load(required=True)
    assert ext is not None
    return ext


# Registered as torch custom ops (not an autograd.Function) so torch.compile keeps the kernel in
# one graph (fullgraph=True works) instead of breaking the graph around it.
@torch.library.custom_op("archgen::selective_scan", mutates_args=())
def _scan_op(
    x: torch.Tensor,
    dt: torch.Tensor,
    a_mat: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d_skip: torch.Tensor,
) -> torch.Tensor:
    return _ext().scan_fwd(*(t.contiguous() for t in (x, dt, a_mat, b, c, d_skip)))


@_scan_op.register_fake
def _(
    x: torch.Tensor,
    dt: torch.Tensor,
    a_mat: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d_skip: torch.Tensor,
) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("archgen::selective_scan_backward", mutates_args=())
def _scan_backward_op(
    x: torch.Tensor,
    dt: torch.Tensor,
    a_mat: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d_skip: torch.Tensor,
    grad_y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    inputs = (x, dt, a_mat, b, c, d_skip, grad_y)
    return tuple(_ext().scan_bwd(*(t.contiguous() for t in inputs)))


@_scan_backward_op.register_fake
def _(
    x: torch.Tensor,
    dt: torch.Tensor,
    a_mat: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d_skip: torch.Tensor,
    grad_y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(
        torch.empty_like(t, memory_format=torch.contiguous_format)
        for t in (x, dt, a_mat, b, c, d_skip)
    )


register_scan_backward(_scan_op, _scan_backward_op)


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    a_mat: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d_skip: torch.Tensor,
) -> torch.Tensor:
    """``y_t = C_t · h_t + D x_t`` with ``h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_t``.

    ``x, dt [B, L, D]``, ``a_mat [D, N]``, ``b, c [B, L, N]``, ``d_skip [D]``, one float dtype
    (float32 or float64), CPU. Differentiable in all inputs (C++ reverse scan).
    """
    return _scan_op(x, dt, a_mat, b, c, d_skip)


# Export only (inside exported_as_custom_op): the scan with Δ = softplus(dt + dt_bias) folded in,
# mamba-ssm's delta_softplus. backends/onnx_scan.py lowers it to archgen.SelectiveScan with
# delta_softplus=1, whose kernel computes the softplus in float32 inside the scan; this eager
# body (softplus in torch, then the plain scan) only serves tracing checks, and has no autograd:
# exports are for inference.
@torch.library.custom_op("archgen::selective_scan_softplus", mutates_args=())
def _scan_softplus_op(
    x: torch.Tensor,
    dt: torch.Tensor,
    a_mat: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d_skip: torch.Tensor,
    dt_bias: torch.Tensor,
) -> torch.Tensor:
    delta = torch.nn.functional.softplus(dt + dt_bias)
    return _ext().scan_fwd(*(t.contiguous() for t in (x, delta, a_mat, b, c, d_skip)))


@_scan_softplus_op.register_fake
def _(
    x: torch.Tensor,
    dt: torch.Tensor,
    a_mat: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d_skip: torch.Tensor,
    dt_bias: torch.Tensor,
) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def selective_scan_softplus(
    x: torch.Tensor,
    dt: torch.Tensor,
    a_mat: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    d_skip: torch.Tensor,
    dt_bias: torch.Tensor,
) -> torch.Tensor:
    """:func:`selective_scan` with ``Δ = softplus(dt + dt_bias)`` (``dt_bias [D]``): the op a
    Mamba export records (:func:`exported_as_custom_op`); no autograd."""
    return _scan_softplus_op(x, dt, a_mat, b, c, d_skip, dt_bias)
