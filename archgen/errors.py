"""User-facing errors. The CLI prints these without a traceback and exits with ``exit_code``."""

from __future__ import annotations


class ArchgenError(Exception):
    """A mistake the user can fix (bad spec, missing file, unavailable backend...)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UnavailableError(ArchgenError):
    """An optional dependency or device that this machine lacks."""

    exit_code = 3
