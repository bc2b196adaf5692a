"""Fuzzing the spec front end: mutated valid specs must parse or fail with a clean SpecError.

Each example takes a valid spec (the shipped example or one below), applies a few random mutations
to its data (drop, rename, retype, re-value, duplicate keys and list items, change ``kind``),
sometimes also to the YAML text itself, and parses the result. Any exception other than
:class:`SpecError` is a bug; so is an issue without a message, an issue spanning several lines,
or a position outside the file. A spec that does parse must also build its IR graph.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archgen.spec.errors import SpecError
from archgen.spec.expand import graph_from_spec
from archgen.spec.loader import parse_spec
from archgen.spec.models import CHANNEL_MIXER_SPECS, TOKEN_MIXER_SPECS, ModelSpec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "transformer.yaml"

INLINE_SPECS = [
    """\
model:
  name: tiny-mamba
  vocab_size: 512
  d_model: 64
  max_seq_len: 256
  norm: layernorm
  norm_eps: 1.0e-6
  tie_embeddings: false
  layers:
    - token_mixer: {kind: mamba, d_state: 8, d_conv: 3, expand: 2}
      channel_mixer: {kind: mlp, hidden: 128, activation: silu, bias: false}
    - token_mixer: {kind: mamba2, head_dim: 32, d_state: 16, chunk_size: 16}
      channel_mixer: null
""",
    """\
model:
  name: hybrid
  vocab_size: 256
  d_model: 96
  max_seq_len: 128
  layers:
    - repeat: 2
      layers:
        - token_mixer: {kind: swa, heads: 6, kv_heads: 2, window: 32}
          channel_mixer: {kind: swiglu, hidden: 192}
        - token_mixer: {kind: checkpoint_attention, heads: 4, segment_size: 8}
    - token_mixer: {kind: dense, heads: 2, causal: true}
      channel_mixer: {kind: mlp}
""",
    """\
model:
  vocab_size: 300
  d_model: 32
  max_seq_len: 64
  layers:
    - repeat: 2
      layers:
        - repeat: 3
          layers:
            - token_mixer: {kind: attention, heads: 2, head_dim: 16, rope_theta: null, bias: true}
        - token_mixer: {kind: mamba, dt_rank: 4}
          channel_mixer: {kind: swiglu, bias: true}
""",
]

SEEDS: list[Any] = [yaml.safe_load(EXAMPLE.read_text()), *map(yaml.safe_load, INLINE_SPECS)]

KINDS = [*TOKEN_MIXER_SPECS, *CHANNEL_MIXER_SPECS]
MIXER_SPECS = [*TOKEN_MIXER_SPECS.values(), *CHANNEL_MIXER_SPECS.values()]
KEYS = sorted(
    {
        "model",
        "layers",
        "repeat",
        "token_mixer",
        "channel_mixer",
        *ModelSpec.model_fields,
        *(f for spec in MIXER_SPECS for f in spec.model_fields),
    }
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2, 3, 7, 2**16, 2**16 + 1, 2**24 + 1, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, 2.5, 1e-300, 1e300, 64.0]),
    st.text(max_size=12),
    st.sampled_from(["", " ", "64", "1e-5", "true", "null", "é", "🦀", "ﬁ", "\u202e", "a\nb"]),
    st.sampled_from([*KINDS, "mamaba", "MLP", "Attention", "swa ", "causal_lm", "rmsnrom"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, (*path, i))


def get(root: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        root = root[part]
    return root


def near_miss(data: st.DataObject, word: str) -> str:
    """A plausible typo of ``word``."""
    if not word:
        return "x"
    how = data.draw(st.sampled_from(["drop", "swap", "add", "case", "dash", "space"]))
    i = data.draw(st.integers(0, len(word) - 1))
    if how == "drop":
        return word[:i] + word[i + 1 :]
    if how == "swap" and len(word) > 1:
        i = min(i, len(word) - 2)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if how == "add":
        return word[:i] + data.draw(st.sampled_from(string.ascii_lowercase)) + word[i:]
    if how == "case":
        return word.upper()
    if how == "dash":
        return word.replace("_", "-")
    return f" {word}"


def retype(data: st.DataObject, value: Any) -> Any:
    """The same value as another type: 64 -> '64' / 64.0 / [64] / {value: 64} / None / True."""
    how = data.draw(st.sampled_from(["str", "float", "list", "dict", "none", "bool", "int"]))
    if how == "str":
        return str(value)
    if how == "float":
        return float(value) if isinstance(value, int | float) else 1.5
    if how == "list":
        return [value]
    if how == "dict":
        return {"value": value}
    if how == "none":
        return None
    if how == "bool":
        return bool(value) if not isinstance(value, dict | list) else True
    return len(value) if isinstance(value, str | list | dict) else 3


def mutate(data: st.DataObject, root: Any) -> Any:
    """One random change somewhere in ``root`` (a copy; the seed is never touched)."""
    root = copy.deepcopy(root)
    paths = [p for p, _ in walk(root)]
    deep = [p for p in paths if len(p) >= 3]  # inside layers: where most attributes live
    if deep and data.draw(st.integers(0, 3), label="go deep") > 0:
        paths = deep
    path = data.draw(st.sampled_from(paths), label="path")
    node = get(root, path)
    parent = get(root, path[:-1]) if path else None
    ops = ["value", "retype"]
    if isinstance(node, int) and not isinstance(node, bool):
        ops += ["nudge"] * 3  # small plausible numbers: divisibility and causality rules
    if isinstance(node, dict):
        ops += ["add_key", "drop_all"]
        if "kind" in node:
            ops += ["kind"] * 3
    if isinstance(node, list):
        ops += ["dup_item", "drop_item", "empty", "add_item"] if node else ["add_item"]
    if isinstance(parent, dict):
        ops += ["drop_key", "rename_key", "rename_key"]
    op = data.draw(st.sampled_from(ops), label="op")

    def replace(new: Any) -> Any:
        if not path:
            return new
        get(root, path[:-1])[path[-1]] = new
        return root

    if op == "value":
        return replace(data.draw(values, label="value"))
    if op == "retype":
        return replace(retype(data, node))
    if op == "nudge":
        return replace(data.draw(st.integers(-1, max(2 * node, 0) + 8), label="number"))
    if op == "add_key":
        key = data.draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), label="key")
        node[key] = data.draw(values, label="value")
    elif op == "drop_all":
        node.clear()
    elif op == "kind":
        node["kind"] = data.draw(st.one_of(st.sampled_from(KINDS), scalars), label="kind")
    elif op == "dup_item":
        i = data.draw(st.integers(0, len(node) - 1))
        # The same object twice dumps as a YAML anchor and alias (``&id001`` / ``*id001``).
        shared = data.draw(st.booleans(), label="alias")
        node.insert(i, node[i] if shared else copy.deepcopy(node[i]))
    elif op == "drop_item":
        del node[data.draw(st.integers(0, len(node) - 1))]
    elif op == "empty":
        node.clear()
    elif op == "add_item":
        node.append(data.draw(values, label="item"))
    elif op == "drop_key":
        del parent[path[-1]]
    elif op == "rename_key":
        old = path[-1]
        new = data.draw(
            st.one_of(
                st.just(near_miss(data, str(old))),
                st.sampled_from(KEYS),
                st.text(max_size=10),
                st.sampled_from([0, 1, True, None, 2.5]),
            ),
            label="new key",
        )
        value = parent.pop(old)
        parent[new] = value
    return root


SNIPPETS = [*":[]{},-#&*!|>'\"\t\n ?%@`\x00\ufeff", "!!int ", "!!float ", "!!binary ", "!!set "]
SNIPPETS += ["!!python/name:os.system ", "!custom ", "&a ", "*a", "<<: ", "<<: *a", "? ", "---\n"]


def mutate_text(data: st.DataObject, text: str) -> str:
    """A slip in the text: YAML punctuation, a tab, a tag, an anchor or alias, a lost character."""
    i = data.draw(st.integers(0, max(0, len(text) - 1)), label="offset")
    how = data.draw(st.sampled_from(["insert", "delete", "replace"]), label="text op")
    char = data.draw(st.sampled_from(SNIPPETS), label="snippet")
    if how == "insert":
        return text[:i] + char + text[i:]
    if how == "delete":
        return text[:i] + text[i + 1 :]
    return text[:i] + char + text[i + 1 :]


def check_outcome(text: str) -> None:
    """Parse ``text``: success (and then the IR builds) or a well-formed SpecError."""
    try:
        spec = parse_spec(text, "fuzz.yaml")
    except SpecError as exc:
        assert exc.issues
        lines = text.split("\n")
        for issue in exc.issues:
            assert issue.filename == "fuzz.yaml"
            assert issue.message.strip(), issue
            assert isinstance(issue.path, tuple)
            assert all(isinstance(p, str | int) for p in issue.path), issue.path
            assert "\n" not in str(issue), f"issue spans several lines: {issue!r}"
            if issue.position is not None:
                assert 1 <= issue.position.line <= len(lines) + 1, issue
                assert issue.position.column >= 1, issue
        assert str(exc).split("\n") == [str(i) for i in exc.issues]
        return
    graph_from_spec(spec)  # a spec that validates must also build


def test_seeds_are_valid() -> None:
    for seed in SEEDS:
        graph_from_spec(parse_spec(yaml.safe_dump(seed, sort_keys=False), "seed.yaml"))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_specs_parse_or_fail_cleanly(data: st.DataObject) -> None:
    spec = data.draw(st.sampled_from(SEEDS), label="seed")
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        spec = mutate(data, spec)
    text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=data.draw(st.booleans()))
    for _ in range(data.draw(st.sampled_from([0, 0, 0, 0, 1, 2]), label="text slips")):
        text = mutate_text(data, text)
    check_outcome(text)
