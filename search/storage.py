"""Optuna storages from URLs, opened eagerly so a bad URL fails before any work.

* ``sqlite:///path/study.db`` (the default, in the output folder) and ``postgresql://...``:
  Optuna's RDB storage; many processes on many machines may share a PostgreSQL URL.
* ``journal:///path/study.journal`` (or a path ending in ``.journal``): Optuna's journal file
  storage, safe for several processes on one file system without a server.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import unquote_plus, urlsplit

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage

from archgen.errors import ArchgenError

CONNECT_TIMEOUT_S = 5


_SECRET_KEYS = {"password", "passwd", "pass", "sslpassword"}


def redact(text: str, url: str) -> str:
    """``text`` with the secrets of storage ``url`` (``user:PASSWORD@host``, ``?password=``)
    replaced by ``***``; ``redact(url, url)`` is the URL safe to print or store. The one place
    that decides what a storage URL may show: the start line, errors and ``report.json``."""
    try:
        parts = urlsplit(url)
        secrets = [parts.password or ""]
    except ValueError:  # a malformed port: the netloc's password is still text before "@"
        parts = urlsplit(url.split("?", 1)[0].split("#", 1)[0])
        userinfo = parts.netloc.rpartition("@")[0]
        secrets = [userinfo.partition(":")[2]]
    for pair in url.partition("?")[2].partition("#")[0].split("&"):
        key, _, value = pair.partition("=")
        if unquote_plus(key).lower() in _SECRET_KEYS:
            secrets.append(value)
    # as written in the URL and as a driver's message may quote it, decoded
    secrets += [unquote_plus(s) for s in secrets]
    for secret in sorted(set(filter(None, secrets)), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def open_storage(url: str) -> BaseStorage:
    try:
        if url.startswith("journal://") or url.endswith(".journal"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url.removeprefix("journal://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        engine_kwargs: dict = {}
        if url.startswith("postgresql"):
            engine_kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
        elif url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs = {"connect_args": {"timeout": 60}}
        return _rdb_with_retry(url, engine_kwargs)
    except ImportError as exc:
        raise ArchgenError(
            f"cannot open the study storage {redact(url, url)!r}: {redact(str(exc), url)}",
            hint="PostgreSQL storage needs psycopg (v3): pip install 'archgen[search]'",
        ) from None
    except Exception as exc:  # SQLAlchemy/driver errors have many types; all mean the same here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArchgenError(
            f"cannot open the study storage {redact(url, url)!r}: {redact(first, url)}",
            hint="check the URL, that the server is running and reachable, and the credentials",
        ) from None


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _rdb_with_retry(url: str, engine_kwargs: dict) -> RDBStorage:
    """Workers starting together on a fresh database race to create Optuna's tables; the loser
    sees a duplicate-key error and simply retries once the tables exist."""
    for attempt in range(5):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as exc:
            text = str(exc).lower()
            racing = "duplicate key" in text or "already exists" in text or "locked" in text
            if not racing or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")
