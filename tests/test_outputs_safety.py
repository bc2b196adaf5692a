"""Outputs are safe to publish: written atomically by one helper, with the permissions the umask
gives any new file (issue 16 items 4 and 5)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from archgen.atomic import write_atomic, write_text_atomic
from tests.conftest import ROOT


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_follow_the_umask(tmp_path: Path, mask: int) -> None:
    from archgen.backends.weights import save_weights

    os.umask(mask)
    write_text_atomic(tmp_path / "a.json", "{}\n")
    save_weights(torch.nn.Linear(2, 2), tmp_path / "w.safetensors")
    assert _mode(tmp_path / "a.json") == 0o666 & ~mask
    assert _mode(tmp_path / "w.safetensors") == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "w.safetensors"]


@pytest.mark.usefixtures("umask")
def test_a_checkpoint_folder_follows_the_umask(tmp_path: Path) -> None:
    from archgen.train.checkpoint import save_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = save_checkpoint(tmp_path, 1, model, opt, {}, {}, keep=1)
    assert _mode(ckpt.path) == 0o755
    assert {_mode(p) for p in ckpt.path.iterdir()} == {0o644}
    assert _mode(tmp_path / "latest") == 0o644


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")

    def fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


# The ONNX exporter's own temporary file predates archgen.atomic; it moves there with the
# deploy-graph change that owns backends/onnx_export.py.
_NOT_YET = {"backends/onnx_export.py"}


def test_one_helper_makes_temporary_files() -> None:
    found = []
    for folder in ("archgen", "backends", "train", "search"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            code = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
            if any(re.search(r"\bmk(s|d)temp\(", ln) for ln in code) and rel not in _NOT_YET:
                found.append(rel)
    assert found == ["archgen/atomic.py"]
