"""Output folders (``archgen/staging.py``): build and export never replace what they did not
write (a training run, a user's files, a file, a link), ``--force`` replaces only their own
previous output, and staging folders of dead processes are cleaned up (issue 16, item 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archgen import api
from archgen import export as export_api
from archgen.errors import ArchgenError
from archgen.staging import OutputFolder, new_staging, remove_stale, replace_folder
from tests.backends.conformance import TINY_SPEC
from tests.conftest import archgen

PROFILE = export_api.Profile(max_seq=16)


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPEC)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def fake_run_folder(path: Path) -> None:
    """What ``archgen train --out path`` leaves (without training, to stay fast)."""
    (path / "checkpoints" / "step_0000002").mkdir(parents=True)
    (path / "checkpoints" / "step_0000002" / "state.pt").write_bytes(b"optimizer state")
    (path / "checkpoints" / "latest").write_text("step_0000002\n")
    (path / "metrics.jsonl").write_text('{"step": 2, "loss": 3.1}\n')
    (path / "weights.safetensors").write_bytes(b"trained weights")
    (path / "spec.yaml").write_text(TINY_SPEC)
    files = ["weights.safetensors", "spec.yaml", "metrics.jsonl", "loss.png", "checkpoints/"]
    (path / "manifest.json").write_text(json.dumps({"spec_hash": "x", "files": files}))


def test_cli_build_refuses_a_training_run_folder_even_with_force(spec: Path, tmp_path: Path):
    run = tmp_path / "runs" / "m"
    fake_run_folder(run)
    before = snapshot(run)
    for extra in ([], ["--force"]):
        result = archgen("build", str(spec), "-o", str(run), *extra)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr and "built" not in result.stdout
        assert str(run) in result.stderr and "checkpoints/" in result.stderr
        assert "hint: choose another output folder" in result.stderr
    assert snapshot(run) == before
    assert hidden(run.parent) == []


def test_cli_build_force_replaces_only_a_previous_build(spec: Path, tmp_path: Path):
    out = api.build(spec, tmp_path / "m").out_dir
    first = snapshot(out)
    again = archgen("build", str(spec), "-o", str(out), "--seed", "1")
    assert again.returncode == 2 and "already holds a previous `archgen build`" in again.stderr
    assert "--force" in again.stderr and snapshot(out) == first
    forced = archgen("build", str(spec), "-o", str(out), "--seed", "1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert snapshot(out)["weights.safetensors"] != first["weights.safetensors"]
    assert hidden(tmp_path) == []


def test_a_users_file_survives_build_and_export(spec: Path, tmp_path: Path):
    users = tmp_path / "u"
    users.mkdir()
    (users / "notes.txt").write_text("precious\n")
    with pytest.raises(ArchgenError, match=r"not empty.*notes\.txt"):
        api.build(spec, users)
    with pytest.raises(ArchgenError, match=r"not empty.*notes\.txt"):
        export_api.export(spec, users, fmt="torch", profile=PROFILE)
    with pytest.raises(ArchgenError, match=r"not empty.*notes\.txt"):
        api.build(spec, users, force=True)
    with pytest.raises(ArchgenError, match=r"not empty.*notes\.txt"):
        export_api.export(spec, users, fmt="torch", profile=PROFILE, force=True)
    assert snapshot(users) == {"notes.txt": b"precious\n"}
    assert hidden(tmp_path) == []
    (tmp_path / "empty").mkdir()  # an empty folder is no one's work: it is filled
    api.build(spec, tmp_path / "empty")
    assert {"manifest.json", "spec.yaml", "weights.safetensors"} == set(
        snapshot(tmp_path / "empty")
    )


def test_a_file_given_as_output_is_refused_and_left_alone(spec: Path, tmp_path: Path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"not a folder")
    with pytest.raises(ArchgenError, match="exists and is not a folder"):
        api.build(spec, target)
    with pytest.raises(ArchgenError, match="exists and is not a folder"):
        api.build(spec, target, force=True)
    assert target.is_file() and target.read_bytes() == b"not a folder"
    assert hidden(tmp_path) == []  # no .model.bin.old


def test_a_symbolic_link_is_refused(spec: Path, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(ArchgenError, match="symbolic link"):
        api.build(spec, tmp_path / "link")
    with pytest.raises(ArchgenError, match="symbolic link"):
        api.build(spec, tmp_path / "link", force=True)
    assert (tmp_path / "link").is_symlink() and list((tmp_path / "empty").iterdir()) == []


def test_force_never_replaces_another_commands_output_or_added_files(spec: Path, tmp_path: Path):
    built = api.build(spec, tmp_path / "b").out_dir
    with pytest.raises(ArchgenError, match=r"the output of `archgen build`"):
        export_api.export(spec, built, fmt="torch", profile=PROFILE)
    (built / "notes.txt").write_text("mine")
    with pytest.raises(ArchgenError, match=r"files it did not write: notes\.txt"):
        api.build(spec, built, force=True)
    assert (built / "notes.txt").read_text() == "mine"


def test_export_refuses_before_any_work(spec: Path, tmp_path: Path, monkeypatch):
    users = tmp_path / "u"
    users.mkdir()
    (users / "notes.txt").write_text("precious\n")

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled the spec before checking the output folder")

    monkeypatch.setattr(export_api, "compile_spec", no_work)
    monkeypatch.setattr(api, "compile_spec", no_work)
    with pytest.raises(ArchgenError, match="not empty"):
        export_api.export(spec, users, fmt="torch", profile=PROFILE)
    with pytest.raises(ArchgenError, match="not empty"):
        api.build(spec, users)


def test_export_force_replaces_its_previous_export(spec: Path, tmp_path: Path):
    out = tmp_path / "e"
    export_api.export(spec, out, fmt="torch", profile=PROFILE)
    assert json.loads((out / "manifest.json").read_text())["command"] == "export"
    with pytest.raises(ArchgenError, match="already holds a previous `archgen export`"):
        export_api.export(spec, out, fmt="torch", profile=PROFILE, seed=3)
    export_api.export(spec, out, fmt="torch", profile=PROFILE, seed=3, force=True)
    assert json.loads((out / "manifest.json").read_text())["options"]["seed"] == 3
    assert hidden(tmp_path) == []


def test_a_build_from_before_manifests_named_their_command_is_recognised(
    spec: Path, tmp_path: Path
):
    out = api.build(spec, tmp_path / "m").out_dir
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["command"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    api.build(spec, out, seed=2, force=True)
    assert json.loads((out / "manifest.json").read_text())["seed"] == 2


def test_a_failed_build_leaves_the_previous_one_and_no_staging(
    spec: Path, tmp_path: Path, monkeypatch
):
    from archgen.backends import weights

    out = api.build(spec, tmp_path / "m").out_dir
    before = snapshot(out)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights, "save_weights", disk_full)
    with pytest.raises(OSError, match="No space"):
        api.build(spec, out, seed=1, force=True)
    assert snapshot(out) == before and hidden(tmp_path) == []


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_staging_of_a_dead_process_is_removed_a_live_ones_kept(tmp_path: Path, dead_pid):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_staging = tmp_path / f".m.staging-{dead_pid}-0a1b2c3d"
        dead_aside = tmp_path / f".e.old-{dead_pid}-0a1b2c3d"
        live_staging = tmp_path / f".m.staging-{live.pid}-0a1b2c3d"
        for folder in (dead_staging, dead_aside, live_staging):
            folder.mkdir()
            (folder / "weights.safetensors").write_bytes(b"half a file")
        (tmp_path / ".hidden-user-folder").mkdir()  # not ours: kept
        staging = new_staging(tmp_path / "m")  # what every build or export does first
        assert staging.name.startswith(f".m.staging-{os.getpid()}-")
        assert hidden(tmp_path) == sorted([".hidden-user-folder", live_staging.name, staging.name])
        assert remove_stale(tmp_path) == []
    finally:
        live.kill()
        live.wait()


def test_replace_folder_sets_the_old_folder_aside_under_a_unique_name(tmp_path: Path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (tmp_path / ".m.old").mkdir()  # the name the old code used: not touched
    staging = new_staging(out)
    (staging / "new.txt").write_text("new")
    replace_folder(staging, out)
    assert snapshot(out) == {"new.txt": b"new"}
    assert hidden(tmp_path) == [".m.old"]


def test_output_folder_rechecks_at_publish_time(tmp_path: Path):
    out = tmp_path / "m"
    target = OutputFolder(out, "build")
    refused = pytest.raises(ArchgenError, match=r"not empty.*late\.txt")
    with refused, target.staging() as staging:
        (staging / "manifest.json").write_text('{"command": "build", "files": []}')
        out.mkdir()
        (out / "late.txt").write_text("written while we worked")
    assert snapshot(out) == {"late.txt": b"written while we worked"}
    assert hidden(tmp_path) == []
