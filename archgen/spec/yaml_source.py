"""YAML -> plain data plus the source position of every key and value.

PyYAML's composer keeps line/column marks on nodes; we build the Python data ourselves from the
node tree so each field path (``("model", "layers", 3, "token_mixer", "window")``) maps to where
it was written. Duplicate keys, which PyYAML silently accepts, are reported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from archgen.spec.errors import SpecError, SpecIssue

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


@dataclass
class SourceMap:
    filename: str
    values: dict[Path, Position] = field(default_factory=dict)
    keys: dict[Path, Position] = field(default_factory=dict)

    def locate(self, path: Path, *, key: bool = False) -> Position | None:
        """Position of ``path`` (its key when ``key``), else of the nearest enclosing value."""
        table = self.keys if key else self.values
        if path in table:
            return table[path]
        for cut in range(len(path) - 1, -1, -1):
            if path[:cut] in self.values:
                return self.values[path[:cut]]
        return None


def _mark(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def load_yaml(text: str, filename: str) -> tuple[Any, SourceMap]:
    source = SourceMap(filename)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Position(mark.line + 1, mark.column + 1) if mark else None
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{exc.context}, {problem}"
        raise SpecError([SpecIssue(filename, pos, (), f"invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([SpecIssue(filename, None, (), f"invalid YAML: {exc}")]) from None
    if root is None:
        raise SpecError([SpecIssue(filename, Position(1, 1), (), "the spec is empty")])
    constructor = yaml.SafeLoader("")

    def build(node: yaml.Node, path: Path) -> Any:
        source.values[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            constructor.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise SpecError(
                        [
                            SpecIssue(
                                filename,
                                _mark(key_node),
                                path,
                                f"keys must be strings, got {key!r}",
                            )
                        ]
                    )
                if key in out:
                    raise SpecError(
                        [
                            SpecIssue(
                                filename, _mark(key_node), (*path, key), f"duplicate key {key!r}"
                            )
                        ]
                    )
                source.keys[(*path, key)] = _mark(key_node)
                out[key] = build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*path, i)) for i, item in enumerate(node.value)]
        try:
            return constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise SpecError(
                [SpecIssue(filename, _mark(node), path, f"invalid value: {exc}")]
            ) from None

    return build(root, ()), source
