"""Files that appear whole or not at all, with the permissions any new file would get.

The one atomic write of the project (weights, engines, reports, plots, metrics, the checkpoint
pointer): the content goes to a hidden temporary file beside the target, is flushed to disk,
gets the mode the umask gives a new file, and is renamed over the target; the folder is then
synced so the rename survives a power cut. A reader sees the old file or the new one, never
half of one.

``mkstemp`` creates its file 0600 whatever the umask; renamed into place it would leave every
output private to its writer. :func:`new_file_mode` is what ``open()`` would have given.

>>> write_text_atomic(Path("out/report.json"), "{}\\n")  # doctest: +SKIP
>>> write_atomic(Path("out/w.safetensors"), lambda tmp: save_file(tensors, tmp))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux says it (``/proc``); elsewhere
    set and restored under a lock (the only portable way to read it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask."""
    return 0o666 & ~current_umask()


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename itself is still atomic
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary path)`` (a writer that opens the file by name, e.g. safetensors'
    ``save_file``), then sync it, give it the umask's mode and rename it to ``path``. The
    temporary file is removed if anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # the writer may have closed its own handle unsynced
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_folder(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`write_atomic`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    write_atomic(path, write)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`write_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))
