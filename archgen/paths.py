"""Where archgen keeps what it may rebuild: one cache folder for the whole project.

``ARCHGEN_CACHE`` when set, else the platform's user cache folder (``$XDG_CACHE_HOME/archgen``,
by default ``~/.cache/archgen`` on Linux; ``~/Library/Caches/archgen`` on macOS), as
``platformdirs`` defines it. The compiled CPU kernels, the search's block-latency table, teachers
and blockwise-distilled blocks live below it; deleting it costs only time.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    configured = os.environ.get("ARCHGEN_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_cache_dir("archgen", appauthor=False))
