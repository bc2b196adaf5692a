"""The import layering of DESIGN.md: imports point one way, and ir/passes never import torch."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# folder -> archgen subpackages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "ir": set(),
    "passes": {"ir", "errors"},
    "mixers": {"ir", "paths"},  # paths: the one cache folder (compiled kernels)
    # atomic: the one atomic-write helper (weights, engines, reports; archgen/atomic.py)
    "backends": {"ir", "passes", "mixers", "errors", "atomic"},
    # staging: the one staging-folder helper (build, export and checkpoints share it)
    "train": {"ir", "passes", "mixers", "backends", "errors", "staging", "atomic"},
    # the search loop (search/run.py) reads the typed spec's search section and drives the
    # training and export APIs (teacher, blockwise table, the winner's weights, its export)
    "search": {
        "ir",
        "passes",
        "mixers",
        "backends",
        "train",
        "errors",
        "spec",
        "training",
        "export",
        "staging",
        "atomic",
    },
}
TORCH_FREE = {"ir", "passes"}
GPU_ONLY = {"tensorrt": "backends/tensorrt.py", "onnxruntime": "backends/onnx"}


def _imports(path: str) -> list[str]:
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _files(folder: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_point_one_way(folder: str) -> None:
    bad = []
    for path in _files(folder):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "archgen" or len(parts) < 2:
                continue
            target = parts[1]
            if target in (folder, *ALLOWED[folder]):
                continue
            bad.append(f"{path} imports {name}")
            if folder in TORCH_FREE and name.startswith("torch"):
                bad.append(f"{path} imports torch")
    for path in _files(folder) if folder in TORCH_FREE else []:
        bad += [f"{path} imports {n}" for n in _imports(path) if n.split(".")[0] == "torch"]
    assert not bad, "\n".join(bad)


def test_gpu_packages_are_imported_only_by_their_backend() -> None:
    bad = []
    for folder in ("archgen", *ALLOWED):
        for path in _files(folder):
            for name in _imports(path):
                root = name.split(".")[0]
                if root in GPU_ONLY and not path.startswith(GPU_ONLY[root]):
                    bad.append(f"{path} imports {name}")
    assert not bad, "\n".join(bad)


def test_ir_and_passes_import_without_torch() -> None:
    code = (
        "import sys, archgen.ir, archgen.passes, archgen.spec.loader, archgen.spec.expand;"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_cache_folder_follows_archgen_cache_then_xdg(monkeypatch, tmp_path) -> None:
    from archgen.paths import cache_dir

    monkeypatch.setenv("ARCHGEN_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("ARCHGEN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "archgen"
