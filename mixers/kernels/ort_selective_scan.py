"""archgen's onnxruntime custom-op library (the Mamba-1 selective scan), built on first use.

``ort_selective_scan.cpp`` registers ``archgen.SelectiveScan`` with onnxruntime; its math is
``selective_scan_core.h``, the same code as the eager kernel (:mod:`.selective_scan`). It is
compiled with the system C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``) against
onnxruntime's C API header vendored in ``third_party/onnxruntime`` (no onnxruntime package ships
its headers; see the README there), with no torch and no OpenMP runtime: the library needs
nothing but onnxruntime, and runs on the session's own thread pool.

The library goes to ``<cache>/ort_extensions/<name>/`` (:func:`archgen.paths.cache_dir`); the
name carries a hash of the sources, flags, compiler and CPU, so a ``-march=native`` binary is
never handed to another CPU. Concurrent builds (test workers, two sessions) wait on a file
lock and reuse the first one's result. A failed build is remembered for the process.

>>> from archgen.mixers.kernels import ort_selective_scan
>>> path = ort_selective_scan.library_path()  # doctest: +SKIP
>>> so = onnxruntime.SessionOptions(); so.register_custom_ops_library(str(path))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from archgen.mixers.kernels.selective_scan import CORE_PATH, cpu_tag
from archgen.paths import cache_dir

DOMAIN = "archgen"
OP_TYPE = "SelectiveScan"
SOURCE_PATH = Path(__file__).with_name("ort_selective_scan.cpp")
ORT_INCLUDE = Path(__file__).parent / "third_party" / "onnxruntime"
# -fopenmp-simd: honour the core's `omp simd` loops without linking an OpenMP runtime
CFLAGS = (
    "-O3",
    "-march=native",
    "-mprefer-vector-width=512",
    "-ffast-math",
    "-fopenmp-simd",
    "-std=c++17",
    "-fPIC",
    "-fvisibility=hidden",
)
# Linked in a second step, without -ffast-math: a -ffast-math link adds gcc's crtfastmath.o,
# whose constructor turns on flush-to-zero / denormals-are-zero for the whole process when the
# library is loaded (every later float op in the user's program, numpy's and torch's included,
# would flush subnormals; hypothesis refuses to run under it).
LDFLAGS = ("-shared", "-fPIC")
LIBRARY_NAME = "libarchgen_ort_scan.so"

_path: Path | None = None
_error: str | None = None  # set after a failed build; not retried in this process


class LibraryBuildError(RuntimeError):
    """The custom-op library cannot be built here (no compiler, or the compiler failed)."""


def compiler() -> str | None:
    """The C++ compiler to use: ``$CXX`` when set (even if it does not exist: then the build
    fails and says so), else the first of ``c++``, ``g++``, ``clang++`` on the PATH."""
    configured = os.environ.get("CXX")
    if configured:
        return configured
    return next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)


def _build_dir(cxx: str) -> Path:
    parts = [SOURCE_PATH.read_text(), CORE_PATH.read_text(), " ".join(CFLAGS + LDFLAGS), cxx]
    parts.append(cpu_tag())
    parts.append((ORT_INCLUDE / "onnxruntime_c_api.h").read_text())
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    return cache_dir() / "ort_extensions" / f"archgen_ort_scan_{digest}"


def _build() -> Path:
    cxx = compiler()
    if cxx is None:
        raise LibraryBuildError("no C++ compiler found (looked for $CXX, c++, g++, clang++)")
    folder = _build_dir(cxx)
    target = folder / LIBRARY_NAME
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    import fcntl  # POSIX only, like the -march=native .so this builds

    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same library
        if target.is_file():
            return target
        partial = folder / f".{LIBRARY_NAME}.{os.getpid()}"
        obj = folder / f".{SOURCE_PATH.stem}.{os.getpid()}.o"
        compile_ = [cxx, *CFLAGS, "-I", str(CORE_PATH.parent), "-I", str(ORT_INCLUDE), "-c"]
        compile_ += [str(SOURCE_PATH), "-o", str(obj)]
        try:
            for command in (compile_, [cxx, *LDFLAGS, str(obj), "-o", str(partial)]):
                _run_compiler(cxx, command)
        except LibraryBuildError:
            partial.unlink(missing_ok=True)
            raise
        finally:
            obj.unlink(missing_ok=True)
        partial.replace(target)  # atomic: a reader never sees half a library
    return target


def _run_compiler(cxx: str, command: list[str]) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except OSError as exc:  # the compiler named by $CXX does not exist or cannot run
        raise LibraryBuildError(f"cannot run the C++ compiler {cxx!r}: {exc}") from exc
    if done.returncode != 0:
        log = (done.stderr or done.stdout).strip()
        raise LibraryBuildError(f"{cxx} failed (exit {done.returncode}): {log[-1500:]}")


def library_path() -> Path:
    """The built library (building it on first use); raises :class:`LibraryBuildError` with the
    reason when it cannot be built here."""
    global _path, _error
    if _path is None and _error is None:
        try:
            _path = _build()
        except (LibraryBuildError, subprocess.TimeoutExpired) as exc:
            _error = str(exc)
    if _path is None:
        raise LibraryBuildError(_error or "unknown build failure")
    return _path


def available() -> tuple[bool, str]:
    """Whether the library builds here, and if not, why (never raises)."""
    try:
        library_path()
    except LibraryBuildError as exc:
        return False, str(exc)
    return True, "ok"


def reset() -> None:
    """Forget the build result so the next call tries again (tests)."""
    global _path, _error
    _path, _error = None, None
