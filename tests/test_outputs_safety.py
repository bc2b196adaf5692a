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


def test_one_helper_makes_temporary_files() -> None:
    found = []
    for folder in ("archgen", "backends", "train", "search"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            code = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
            if any(re.search(r"\bmk(s|d)temp\(", ln) for ln in code):
                found.append(rel)
    assert found == ["archgen/atomic.py"]


# -- item 4: where outputs go, who may write them, what they show ------------------------------
SPEC = """model:
  name: {name}
  vocab_size: 64
  d_model: 16
  max_seq_len: 64
  layers:
    - token_mixer: {{kind: attention, heads: 2}}
"""


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", ".hidden", "'a\\\\b'"])
def test_a_model_name_that_is_not_a_file_name_is_refused_at_its_line(name: str) -> None:
    from archgen.spec.errors import SpecError
    from archgen.spec.loader import parse_spec

    with pytest.raises(SpecError) as info:
        parse_spec(SPEC.format(name=name), "m.yaml")
    assert str(info.value).startswith("m.yaml:2:9: model.name: must be a plain file name")


def test_a_spec_built_in_python_cannot_move_the_default_folder() -> None:
    from archgen.errors import ArchgenError
    from archgen.training import default_folder

    assert default_folder("tiny", "-distilled") == Path("runs/tiny-distilled")
    with pytest.raises(ArchgenError, match=r"model\.name must be a plain file name"):
        default_folder("../../etc", prefix="search-")


def test_storage_passwords_are_redacted() -> None:
    from archgen.search.storage import redact

    url = "postgresql+psycopg://bob:s3cr%40t@db:5432/x?sslmode=require&password=pw2"
    assert redact(url, url) == "postgresql+psycopg://bob:***@db:5432/x?sslmode=require&password=***"
    assert redact("auth failed: s3cr@t, pw2", url) == "auth failed: ***, ***"
    assert redact("sqlite:////tmp/s.db", "sqlite:////tmp/s.db") == "sqlite:////tmp/s.db"


def test_a_failed_search_shows_no_password_and_leaves_no_folder(tmp_path: Path) -> None:
    from archgen.errors import ArchgenError
    from archgen.search_api import SearchOptions, run_search
    from tests.search.test_search_cli import SPEC as SEARCH_SPEC

    spec = tmp_path / "s.yaml"
    spec.write_text(SEARCH_SPEC)
    out = tmp_path / "new" / "out"
    storage = "postgresql://bob:hunter2@127.0.0.1:1/none"
    with pytest.raises(ArchgenError) as info:
        run_search(spec, SearchOptions(out=out, storage=storage), log=lambda _: None)
    assert "hunter2" not in str(info.value) and "bob:***@" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # new/out removed


def test_the_start_line_and_report_show_no_password(tmp_path: Path, monkeypatch) -> None:
    import contextlib

    from archgen.search import certify, storage
    from archgen.search_api import SearchOptions, run_search
    from tests.search.test_search_cli import SPEC as SEARCH_SPEC

    # a PostgreSQL URL as the user gives it, served by SQLite (no server in the test)
    sqlite = f"sqlite:///{tmp_path / 'study.db'}"
    real_open = storage.open_storage
    monkeypatch.setattr(storage, "open_storage", lambda url: real_open(sqlite))
    monkeypatch.setattr(certify, "study_lock", lambda *a: contextlib.nullcontext())
    monkeypatch.setenv("ARCHGEN_CACHE", str(tmp_path / "cache"))
    spec = tmp_path / "s.yaml"
    spec.write_text(SEARCH_SPEC.replace("trials: 10", "trials: 3"))
    lines: list[str] = []
    url = "postgresql://bob:hunter2@db/none"
    options = SearchOptions(out=tmp_path / "out", storage=url, finalize_steps=0)
    run_search(spec, options, log=lines.append)
    report = (tmp_path / "out" / "report.json").read_text()
    assert any("in postgresql://bob:***@db/none" in ln for ln in lines)
    assert "hunter2" not in "\n".join(lines) + report and "bob:***@db" in report


def test_a_second_process_on_a_run_folder_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    from archgen.errors import ArchgenError
    from archgen.staging import LOCK_FILE, check_run_folder, run_folder_lock

    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from archgen.staging import run_folder_lock\n"
         "with run_folder_lock(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(60)",
         str(run)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        check_run_folder(run, "train")  # a run just starting holds only its lock: not refused
        with pytest.raises(ArchgenError) as info, run_folder_lock(run):
            pass
        message = str(info.value).splitlines()[0]
        assert message == f"another archgen process is training in {run} (pid {holder.pid})"
    finally:
        holder.kill()
        holder.wait()
    with run_folder_lock(run):  # the kernel dropped the dead holder's lock
        assert (run / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert not (run / LOCK_FILE).exists()
