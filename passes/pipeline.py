"""Pipelines from text, MLIR/xDSL style: ``compress_segments{s=16,local=swa},replace_mixer{...}``.

Option values are typed by the pass's dataclass fields: ``int``, ``float``, ``bool``
(``true``/``false``), ``str``, a ``Literal`` (one of its values), ``X | None`` (``null``) and
lists of ints (``[0,2,5]`` or a single ``3``). Every mistake -- an unknown pass or option, a value
of the wrong type, a missing required option -- is a :class:`PassOptionError` naming the pass and
the option, with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Collection, Sequence
from typing import Any, Literal

from archgen.errors import ArchgenError
from archgen.passes.annotate_cost import AnnotateCost
from archgen.passes.base import PASS_REGISTRY, Pass
from archgen.passes.infer_shapes import InferShapes
from archgen.passes.verify import Verify


class PassOptionError(ArchgenError):
    """A pipeline string that names an unknown pass or option, or gives a bad value."""


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside braces and brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                raise PassOptionError(f"unbalanced {ch!r} at character {i + 1} of {text!r}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise PassOptionError(f"unclosed brace or bracket in {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_pipeline(text: str) -> list[Pass]:
    """``"p1{a=1,b=x},p2"`` -> pass instances, in order."""
    if not text.strip():
        raise PassOptionError("--passes is empty", hint=f"passes: {', '.join(PASS_REGISTRY)}")
    return [_parse_item(item) for item in split_top_level(text)]


def _parse_item(item: str) -> Pass:
    name, raw = split_item(item, "pass", PASS_REGISTRY)
    return build_pass(PASS_REGISTRY[name], raw)


def split_item(item: str, kind: str, names: Collection[str]) -> tuple[str, dict[str, str]]:
    """``"name{a=1,b=x}"`` -> ``("name", {"a": "1", "b": "x"})``, ``name`` one of ``names``;
    ``kind`` names the thing in errors (``pass``, ``--decoder``). Shared by ``--passes`` and
    ``--decoder``, which use the same syntax."""
    name, _, rest = item.strip().partition("{")
    name = name.strip()
    if name not in names:
        raise PassOptionError(
            f"unknown {kind.lstrip('-')} {name!r}", hint=suggest(name, list(names))
        )
    raw: dict[str, str] = {}
    if rest:
        if not rest.endswith("}"):
            raise PassOptionError(f"{kind} {name}: options must end with '}}': {item!r}")
        for pair in split_top_level(rest[:-1]):
            if not pair:
                continue
            key, eq, value = pair.partition("=")
            if not eq:
                raise PassOptionError(
                    f"{kind} {name}: option {pair!r} has no value", hint=f"write {pair}=VALUE"
                )
            raw[key.strip()] = value.strip()
    return name, raw


def build_pass(cls: type[Pass], raw: dict[str, str]) -> Pass:
    """An instance of ``cls`` from string-valued options (typed by its fields)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in cls.options()}
    values: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for key, value in raw.items():
        if key not in fields:
            if getattr(cls, "extra_options", False):
                extra[key] = value
                continue
            raise PassOptionError(
                f"pass {cls.name}: unknown option {key!r}", hint=suggest(key, list(fields))
            )
        values[key] = convert_value(value, hints[key], f"pass {cls.name}: option {key}")
    missing = [
        f.name
        for f in fields.values()
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name != "extra"
    ]
    if missing:
        raise PassOptionError(
            f"pass {cls.name}: option {missing[0]!r} is required",
            hint=f"write {cls.name}{{{missing[0]}=...}}; `archgen passes` lists the options",
        )
    if extra:
        values["extra"] = tuple(sorted(extra.items()))
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise PassOptionError(f"pass {cls.name}: {exc}") from None


def convert_value(raw: str, hint: Any, where: str) -> Any:
    """The string ``raw`` as a value of type ``hint`` (see the module docstring)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("null", "none") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for arg in inner:
            try:
                return convert_value(raw, arg, where)
            except PassOptionError as exc:
                errors.append(exc.message)
        raise PassOptionError(errors[0] if len(errors) == 1 else f"{where}: bad value {raw!r}")
    if origin is Literal:
        for choice in args:
            if str(choice) == raw:
                return choice
        raise PassOptionError(
            f"{where}: {raw!r} is not one of {', '.join(map(str, args))}",
            hint=suggest(raw, [str(a) for a in args]),
        )
    if origin in (tuple, list) and args and args[0] is int:
        body = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
        items = [x for x in split_top_level(body) if x]
        return tuple(convert_value(x, int, where) for x in items)
    if hint is bool:
        lowered = raw.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise PassOptionError(f"{where}: expected true or false, got {raw!r}")
    if hint in (int, float):
        try:
            return hint(raw)
        except ValueError:
            kind = "an integer" if hint is int else "a number"
            raise PassOptionError(f"{where}: expected {kind}, got {raw!r}") from None
    if hint is str:
        return raw
    raise PassOptionError(f"{where}: options of type {hint} cannot be given as text")


def suggest(word: str, choices: Sequence[str]) -> str:
    """'did you mean X? (choices: ...)' for a hint."""
    close = difflib.get_close_matches(word, choices, n=1)
    listed = ", ".join(choices) if choices else "(none)"
    return f"did you mean {close[0]!r}? (choices: {listed})" if close else f"choices: {listed}"


def analysis_passes(seq_len: int | None = None) -> list[Pass]:
    return [Verify(), InferShapes(), AnnotateCost(seq_len=seq_len)]


def full_pipeline(user: Sequence[Pass], seq_len: int | None = None) -> list[Pass]:
    """``verify, infer_shapes, <user passes>, verify, infer_shapes, annotate_cost``: the user's
    rewrites run on a checked, typed graph, and their result is checked, typed and costed."""
    if not user:
        return analysis_passes(seq_len)
    return [Verify(), InferShapes(), *user, *analysis_passes(seq_len)]


__all__ = [
    "PassOptionError",
    "analysis_passes",
    "build_pass",
    "convert_value",
    "full_pipeline",
    "parse_pipeline",
]
