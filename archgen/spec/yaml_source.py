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


def _yaml_word(value: Any) -> str:
    """A scalar as YAML spells it (``null``, ``true``), else its repr."""
    if value is None or isinstance(value, bool):
        return yaml.safe_dump(value).split("\n")[0]
    return repr(value)


def _mark(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


# Generous for any hand-written spec (repeat groups keep real ones small), small enough that an
# alias "billion laughs" fails fast instead of expanding without end.
MAX_VALUES = 200_000

# The tags PyYAML resolves untagged collections to: any other was written by hand.
_PLAIN_COLLECTIONS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")

_TOKENS = {
    "<stream end>": "the end of the file",
    "<scalar>": "a value",
    "<block mapping start>": "a new indented block",
    "<block sequence start>": "a new indented list",
    "<block end>": "the end of a block",
    "?": "a key",
    "-": "a list item",
}


def _found(problem: str) -> str:
    """The token PyYAML found (``... but found '-'`` / ``but got '<scalar>'``), in words."""
    for sep in ("but found ", "but got "):
        if sep in problem:
            token = problem.rsplit(sep, 1)[1].strip("'")
            return _TOKENS.get(token, repr(token))
    return "something unexpected"


def _syntax_message(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's parser vocabulary, reworded for spec authors; unknown cases pass through."""
    problem = exc.problem or str(exc)
    context = exc.context or ""
    mark = exc.context_mark
    at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "above"
    if "'\\t'" in problem:
        return "a tab character is not allowed here; indent with spaces"
    if problem == "mapping values are not allowed here":
        return (
            "unexpected ':' (check the indentation of this line, "
            "or quote a value that contains ': ')"
        )
    if context in ("while parsing a flow sequence", "while parsing a flow mapping"):
        opener, closer, what = (
            ("[", "]", "list") if "sequence" in context else ("{", "}", "mapping")
        )
        return (
            f"expected ',' or '{closer}' in the {what} opened with '{opener}' at {at}, "
            f"found {_found(problem)} (is a '{closer}' missing?)"
        )
    if context in ("while parsing a block mapping", "while parsing a block collection"):
        what = "mapping" if "mapping" in context else "list"
        found = _found(problem)
        if found in ("a new indented block", "a new indented list"):
            return "bad indentation: this line lines up with no enclosing key or list item"
        if found == "a list item" and what == "mapping":
            return f"a list item cannot follow the keys of the mapping at {at}"
        if found == "a key" and what == "list":
            return f"a key cannot follow the items of the list at {at}"
        return f"unexpected {found} in the {what} that starts at {at}"
    if "quoted scalar" in context and "end of stream" in problem:
        return f"the quoted string that starts at {at} is never closed"
    return f"{context}, {problem}" if context else problem


def _reader_error(exc: yaml.reader.ReaderError, text: str) -> tuple[Position, str]:
    """Position and words of a character YAML does not accept (``exc.position`` is an index)."""
    before = text[: exc.position]
    line = before.count("\n") + 1
    column = exc.position - (before.rfind("\n") + 1) + 1
    char = exc.character if isinstance(exc.character, str) else chr(exc.character)
    return Position(line, column), f"character {char!r} is not allowed in YAML"


def load_yaml(text: str, filename: str) -> tuple[Any, SourceMap]:
    source = SourceMap(filename)
    loader: yaml.SafeLoader | None = None  # what yaml.compose does, keeping the loader's mark
    try:
        loader = yaml.SafeLoader(text)  # checks every character up front (ReaderError)
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Position(mark.line + 1, mark.column + 1) if mark else None
        message = f"invalid YAML: {_syntax_message(exc)}"
        raise SpecError([SpecIssue(filename, pos, (), message)]) from None
    except yaml.reader.ReaderError as exc:
        pos, message = _reader_error(exc, text)
        raise SpecError([SpecIssue(filename, pos, (), f"invalid YAML: {message}")]) from None
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise SpecError([SpecIssue(filename, None, (), f"invalid YAML: {message}")]) from None
    except RecursionError:
        raise SpecError(
            [SpecIssue(filename, None, (), "invalid YAML: the spec is nested too deeply")]
        ) from None
    except Exception as exc:
        # PyYAML's scanner lets some conversions fail raw, e.g. ValueError for "\U00FFFFFF".
        mark = loader.get_mark() if loader else None
        pos = Position(mark.line + 1, mark.column + 1) if mark else None
        problem = " ".join(str(exc).split())
        if "chr()" in problem:
            problem = "this escape sequence is beyond the last Unicode character (\\U0010FFFF)"
        raise SpecError([SpecIssue(filename, pos, (), f"invalid YAML: {problem}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        raise SpecError([SpecIssue(filename, Position(1, 1), (), "the spec is empty")])
    constructor = yaml.SafeLoader("")
    active: set[int] = set()  # nodes being built: an alias back into one of them is a cycle
    count = 0

    def build(node: yaml.Node, path: Path) -> Any:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise SpecError(
                [
                    SpecIssue(
                        filename,
                        _mark(node),
                        path,
                        f"the spec has more than {MAX_VALUES} values (aliases expanded)",
                    )
                ]
            )
        if id(node) in active:
            # The alias itself has no mark after composing; its key (if any) is the best place.
            pos = source.keys.get(path) or _mark(node)
            message = "recursive alias (a value that contains itself)"
            raise SpecError([SpecIssue(filename, pos, path, message)])
        source.values[path] = _mark(node)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            if node.tag not in _PLAIN_COLLECTIONS:
                # Built here as a plain dict/list, a tag would be silently dropped: refuse it
                # as a tag on a scalar is refused (``!!python/tuple``, ``!!set``, ``!custom``).
                message = f"invalid value: unsupported YAML tag {node.tag!r}"
                raise SpecError([SpecIssue(filename, _mark(node), path, message)])
            active.add(id(node))
            try:
                return build_collection(node, path)
            finally:
                active.discard(id(node))
        return scalar(node, path)

    def scalar(node: yaml.Node, path: Path) -> Any:
        try:
            return constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            problem = exc.problem or str(exc)
            if problem.startswith("could not determine a constructor"):
                problem = f"unsupported YAML tag {node.tag!r}"
            message = f"invalid value: {problem}"
        except Exception:
            # PyYAML's constructors for the standard tags raise whatever the conversion raises
            # (ValueError for ``!!int x``, IndexError for an empty ``!!int``...).
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            message = f"invalid value: {node.value!r} is not a valid {tag}"
        raise SpecError([SpecIssue(filename, _mark(node), path, " ".join(message.split()))])

    def build_collection(node: yaml.Node, path: Path) -> Any:
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*path, i)) for i, item in enumerate(node.value)]
        own = {id(key) for key, _ in node.value}  # keys written here, not merged in by '<<'
        try:
            constructor.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
        except yaml.MarkedYAMLError as exc:
            message = f"invalid merge key: {exc.problem}"
            mark = exc.problem_mark or node.start_mark
            pos = Position(mark.line + 1, mark.column + 1)
            raise SpecError([SpecIssue(filename, pos, path, message)]) from None
        out: dict[Any, Any] = {}
        written: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            merged = id(key_node) not in own
            if isinstance(key_node, yaml.MappingNode | yaml.SequenceNode):
                key: Any = "a mapping" if isinstance(key_node, yaml.MappingNode) else "a list"
                raise SpecError(
                    [SpecIssue(filename, _mark(key_node), path, f"keys must be strings, got {key}")]
                )
            key = scalar(key_node, path)
            if not isinstance(key, str):
                raise SpecError(
                    [
                        SpecIssue(
                            filename,
                            _mark(key_node),
                            path,
                            f"keys must be strings, got {_yaml_word(key)}",
                        )
                    ]
                )
            if key in out and not merged and id(written[key]) in own:
                raise SpecError(
                    [SpecIssue(filename, _mark(key_node), (*path, key), f"duplicate key {key!r}")]
                )
            # A written key overrides a merged one, and earlier merge sources win over later ones
            # (PyYAML lists them in reverse), as the YAML merge-key spec says.
            written[key] = key_node
            source.keys[(*path, key)] = _mark(key_node)
            out[key] = build(value_node, (*path, key))
        return out

    return build(root, ()), source
