"""Output folders that appear complete or not at all, and never over someone else's files.

Commands that write several files (build, export, a training checkpoint) fill a hidden staging
folder beside the target, named after the writing process (``.NAME.staging-PID-RANDOM``), and
rename it into place once everything is written and checked. A later run removes the staging
folders of processes that died (killed mid-write); a live process's are never touched.

:class:`OutputFolder` adds the rule for user-chosen targets (``-o``), checked before any work and
again at publish time: a missing target or an empty folder is (re)placed; a folder holding a
previous output of the *same* command (recognised by its ``manifest.json``, which records the
command, and holding nothing else) is replaced only with ``force``; anything else -- a training
run, a folder with a user's files, a file, a symbolic link -- is refused, ``force`` or not.

>>> target = OutputFolder(Path("out/m"), "build")  # doctest: +SKIP
>>> target.check()  # before any expensive work  # doctest: +SKIP
>>> with target.staging() as folder:  # doctest: +SKIP
...     write_files(folder)  # published to out/m when the block ends without error
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from archgen.errors import ArchgenError

# ``.NAME.staging-PID-RANDOM`` (being written) and ``.NAME.old-PID-RANDOM`` (an old folder set
# aside while --force replaces it): both belong to process PID and die with it.
_OWNED = re.compile(r"^\.(?P<name>.+)\.(?:staging|old)-(?P<pid>\d+)-[0-9a-f]+$")
_NAME_MAX = 120  # of the target name inside a staging name (file names stop at 255 bytes)


def _owned_name(out: Path, what: str) -> Path:
    return out.parent / f".{out.name[:_NAME_MAX]}.{what}-{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return True  # pid 0 would signal our process group: never ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(parent: Path) -> list[Path]:
    """Remove the staging and set-aside folders in ``parent`` whose process has died (a killed
    build, export or checkpoint write); return what was removed."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _OWNED.match(entry.name)
        if match is None or _alive(int(match["pid"])) or entry.is_symlink() or not entry.is_dir():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def unwritable(path: Path, exc: OSError, parent: Path | None = None) -> ArchgenError:
    """The error for an output place the system refuses (``/proc/x``, a read-only disk, a
    path through a file), naming the place rather than a staging folder's name."""
    where = f" (the system refuses new folders in {parent})" if parent is not None else ""
    return ArchgenError(
        f"cannot write to {path}: {exc.strerror or exc}{where}",
        hint="choose an output folder (-o) in a place you can write to",
    )


def probe_writable(path: Path, *, inside: bool = False) -> None:
    """Raise :class:`~archgen.errors.ArchgenError` unless a folder can be created at ``path``:
    its nearest existing ancestor must be a folder that accepts a new entry. Tried for real
    (``access()`` says yes to root on ``/proc``), and before any expensive work. ``inside``:
    files are written into ``path`` itself when it exists (training), not beside it."""
    path = Path(path)
    parent = Path(os.path.abspath(path))
    parent = parent if inside and parent.is_dir() else parent.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ArchgenError(f"cannot write to {path}: {parent} is not a folder")
    try:
        # a plain mkdir: temporary files have one helper (archgen.atomic)
        probe = parent / f".archgen-probe-{os.getpid()}-{secrets.token_hex(4)}"
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise unwritable(path, exc, parent) from None


def check_output_file(path: Path, option: str) -> None:
    """Refuse, before any work, a single-file output (``schema -o``, ``validate --json``) that
    names a folder or lies where no file can be written (``/proc/x``, below a file or a missing
    folder)."""
    path = Path(path)
    if path.is_dir():
        raise ArchgenError(
            f"{option} {path} is a folder", hint=f"name a file, e.g. {option} {path / 'out.json'}"
        )
    parent = Path(os.path.abspath(path)).parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise ArchgenError(f"cannot write {path}: {parent} {what}", hint=f"choose another {option}")
    try:
        probe_writable(path)
    except ArchgenError as exc:  # its hint is about output folders
        raise ArchgenError(exc.message, hint=f"choose another {option}") from None


def new_staging(out: Path) -> Path:
    """A fresh empty hidden folder beside ``out``, owned by this process. Created with
    ``mkdir`` (not ``tempfile``, whose folders are 0700) so it gets the permissions the umask
    gives any new folder."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(out, exc) from None
    remove_stale(out.parent)
    while True:
        staging = _owned_name(out, "staging")
        try:
            staging.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise unwritable(out, exc) from None
        return staging


@contextmanager
def output_folder(path: Path) -> Iterator[Path]:
    """Create ``path`` (and its missing parents) for a command that writes into it as it goes
    (a search, whose study must survive a crash). If the block fails, the folders created here
    that are still empty are removed again, deepest first: a failed command leaves no empty
    output folder, and never touches a folder that existed or holds anything."""
    path = Path(path)
    created: list[Path] = []
    folder = Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(path, exc) from None
    try:
        yield path
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
        raise


def replace_folder(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``. An existing ``out`` folder is first renamed aside under a
    unique name and deleted once the new one is in place (renamed back if that fails): at every
    instant ``out`` is the old folder or the new one, except between the two renames."""
    try:
        os.rename(staging, out)  # out missing, or an empty folder
        return
    except OSError:
        if not out.is_dir() or out.is_symlink():
            raise
    aside = _owned_name(out, "old")
    os.rename(out, aside)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


# -- user-chosen output folders ----------------------------------------------------------------
def _manifest_command(manifest: dict[str, object]) -> str | None:
    """The command that wrote ``manifest``. Folders written before manifests recorded it are
    recognised by their exact layout."""
    command = manifest.get("command")
    if isinstance(command, str):
        return command
    if "format" in manifest and "validation" in manifest:
        return "export"
    if manifest.get("files") == ["weights.safetensors", "spec.yaml"] and "seed" in manifest:
        return "build"
    return None


def _listing(entries: list[str], limit: int = 5) -> str:
    shown = ", ".join(entries[:limit])
    return shown if len(entries) <= limit else f"{shown} and {len(entries) - limit} more"


@dataclass(frozen=True)
class OutputFolder:
    """The folder ``command`` (``"build"``, ``"export"``) publishes to, and whether it may.

    ``force`` allows replacing a previous output of the same command, nothing else."""

    path: Path
    command: str
    force: bool = False

    def _refusal(self) -> ArchgenError | None:
        """None when the target may receive the output (now), else the error saying why not."""
        path, command = self.path, self.command
        other = (
            "choose another output folder (-o); --force only replaces a previous "
            f"`archgen {command}` output, never anything else"
        )
        if path.is_symlink():
            return ArchgenError(f"{path} is a symbolic link (to {os.readlink(path)})", hint=other)
        here, target = Path.cwd().resolve(), path.resolve()
        if here == target or target in here.parents:
            # The output is published by renaming a folder over the target: the shell would be
            # left in a deleted folder, showing nothing of what was written.
            return ArchgenError(
                f"{path} is the current folder or holds it; `archgen {command}` writes a new "
                "folder in place of its output folder",
                hint=f"name a new folder, e.g. -o {command}-out",
            )
        if not path.exists():
            return None
        if not path.is_dir():
            return ArchgenError(f"{path} exists and is not a folder", hint=other)
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        if not entries:
            return None
        listing = _listing(entries)
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = None
        wrote = _manifest_command(manifest) if isinstance(manifest, dict) else None
        if wrote != command:
            what = f"it is the output of `archgen {wrote}` and holds" if wrote else "it holds"
            return ArchgenError(
                f"{path} is not empty and not a previous `archgen {command}` output: "
                f"{what} {listing}",
                hint=other,
            )
        listed = {str(f).rstrip("/") for f in manifest.get("files", [])} | {"manifest.json"}
        extra = [e for e in entries if e.rstrip("/") not in listed]
        if extra:
            return ArchgenError(
                f"{path} holds a previous `archgen {command}` output and files it did not "
                f"write: {_listing(extra)}",
                hint=other,
            )
        if not self.force:
            return ArchgenError(
                f"{path} already holds a previous `archgen {command}` output ({listing})",
                hint="choose another output folder (-o), or pass --force to replace it",
            )
        return None

    def check(self) -> None:
        """Raise :class:`~archgen.errors.ArchgenError` unless the output may be published."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        probe_writable(self.path)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A staging folder to fill; published to ``path`` when the block ends without an error
        (after checking the target again), removed in every case."""
        self.check()
        target = Path(os.path.abspath(self.path))  # "-o ." has no name to stage beside
        staging = new_staging(target)
        try:
            yield staging
            self.check()
            try:
                replace_folder(staging, target)
            except OSError:
                self.check()  # the target changed since the check: say how
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


LOCK_FILE = ".archgen.lock"


@contextmanager
def run_folder_lock(folder: Path, doing: str = "training") -> Iterator[None]:
    """Hold the run folder ``folder`` for this process while the block runs: a second archgen
    process on the same run (two ``train --resume``) is refused, naming the holder, instead of
    interleaving checkpoints and metrics. An advisory ``flock`` on ``FOLDER/.archgen.lock``
    (the kernel drops it when the holder dies, so a killed run never leaves the folder locked);
    the file is removed when the block ends. Created folders are removed again if the block
    fails before writing anything (:func:`output_folder`)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): runs are not guarded there
        yield
        return
    with output_folder(folder):
        lock = Path(folder) / LOCK_FILE
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ArchgenError(
                    f"another archgen process is {doing} in {folder} (pid {holder})",
                    hint="wait for it to finish or stop it; two processes writing one run "
                    "would mix their checkpoints",
                ) from None
            # The previous holder removes the file before releasing it: if that happened
            # between our open and our lock, we hold a file nobody else sees. Start over.
            try:
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.unlink(lock)  # before the release: see the check above
            os.close(fd)


def check_run_folder(path: Path, command: str) -> None:
    """Refuse, before any work, a training output (``--out``) that is not a folder, cannot be
    written, or holds files that are not a run's: training writes ``weights.safetensors``,
    ``spec.yaml``, ``config.json``... in place, over whatever has those names. A run folder
    (``config.json`` or ``checkpoints/``, e.g. of a killed run) is the loop's to judge: it asks
    for ``--resume``."""
    other = f"choose a new or empty folder for `archgen {command}` (-o)"
    if path.exists() and not path.is_dir():
        raise ArchgenError(f"{path} exists and is not a folder", hint=other)
    if path.is_dir():
        entries = sorted(
            p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if p.name != LOCK_FILE
        )  # a run just starting holds only its lock: the lock then names the holder
        is_run = (path / "checkpoints").is_dir() or (path / "config.json").is_file()
        if entries and not is_run:
            raise ArchgenError(
                f"{path} is not empty and not a training run folder: it holds {_listing(entries)}",
                hint=other,
            )
    probe_writable(path, inside=True)
