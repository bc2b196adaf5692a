"""Output folders that appear complete or not at all.

Commands that write several files (build, export) fill a hidden staging folder next to the
target and call :func:`publish_folder` only once everything is written and checked.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def publish_folder(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``, replacing an existing folder only once the new one is
    complete (the old one is moved aside first, then deleted)."""
    if out.exists():
        backup = out.with_name(f".{out.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        out.rename(backup)
        staging.rename(out)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        staging.rename(out)
