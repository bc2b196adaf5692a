"""Spec errors: what is wrong, where (file:line:column and field path), and a suggestion."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from archgen.errors import ArchgenError

if TYPE_CHECKING:
    from archgen.spec.yaml_source import Position


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_path(path: Sequence[str | int]) -> str:
    """``("model", "layers", 3, "window")`` -> ``model.layers[3].window``; odd keys are quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _PLAIN_KEY.fullmatch(part):
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def closest(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    match = closest(word, candidates)
    return f" (did you mean {match!r}?)" if match else ""


@dataclass(frozen=True)
class SpecIssue:
    filename: str
    position: Position | None
    path: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        where = self.filename
        if self.position is not None:
            where += f":{self.position.line}:{self.position.column}"
        return f"{where}: {format_path(self.path)}: {self.message}"


class SpecError(ArchgenError):
    """One or more mistakes in a spec, each with its location."""

    def __init__(self, issues: Sequence[SpecIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))
