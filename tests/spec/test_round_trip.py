"""Spec <-> IR round trips on random valid specs, the ``--resolved`` output, and the JSON Schema.

Canonical spec = repeat groups expanded, every default written out. For any valid spec S:
``spec_from_graph(graph_from_spec(S))`` is the canonical form of S, and building the IR again
from it gives the same graph.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archgen import api
from archgen.ir.graph import Graph
from archgen.spec.errors import SpecError
from archgen.spec.expand import graph_from_spec, resolve_spec, spec_from_graph, spec_to_data
from archgen.spec.loader import parse_spec
from archgen.spec.models import ArchSpec, LayerSpec, RepeatSpec, expand_layers

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
ATTENTION_KINDS = ("attention", "swa", "checkpoint_attention")


# -- random valid specs (as plain data, written the way a user would: defaults often omitted) ----


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def maybe(data: st.DataObject, out: dict[str, Any], key: str, strategy: st.SearchStrategy) -> None:
    """Write ``key`` about half the time (otherwise its default applies)."""
    if data.draw(st.booleans(), label=f"write {key}"):
        out[key] = data.draw(strategy, label=key)


def attention_mixer(data: st.DataObject, kind: str, d_model: int) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind}
    rope = data.draw(st.sampled_from([10000.0, 500000.0, 1.5, None]), label="rope_theta")
    if rope != 10000.0:
        out["rope_theta"] = rope
    if data.draw(st.booleans(), label="explicit head_dim"):
        heads = data.draw(st.integers(1, 16), label="heads")
        dims = st.integers(1, 64).map(lambda d: 2 * d) if rope else st.integers(1, 128)
        out["head_dim"] = data.draw(dims, label="head_dim")
    else:
        ok = [h for h in divisors(d_model) if h <= 64 and (rope is None or (d_model // h) % 2 == 0)]
        heads = data.draw(st.sampled_from(ok), label="heads")
    if heads != 8 or data.draw(st.booleans()):
        out["heads"] = heads
    maybe(data, out, "kv_heads", st.sampled_from(divisors(heads)))
    maybe(data, out, "bias", st.booleans())
    if kind == "swa":
        maybe(data, out, "window", st.integers(1, 1024))
    if kind == "checkpoint_attention":
        maybe(data, out, "segment_size", st.integers(1, 64))
    return out


def token_mixer(data: st.DataObject, d_model: int) -> dict[str, Any]:
    kind = data.draw(st.sampled_from([*ATTENTION_KINDS, "dense", "mamba", "mamba2"]), label="kind")
    if kind in ATTENTION_KINDS:
        return attention_mixer(data, kind, d_model)
    out: dict[str, Any] = {"kind": kind}
    if kind == "dense":
        maybe(data, out, "heads", st.sampled_from(divisors(d_model)))
        maybe(data, out, "causal", st.just(True))
    elif kind == "mamba":
        maybe(data, out, "d_state", st.integers(1, 64))
        maybe(data, out, "d_conv", st.integers(1, 8))
        maybe(data, out, "expand", st.integers(1, 4))
        maybe(data, out, "dt_rank", st.integers(1, 32))
        maybe(data, out, "conv_bias", st.booleans())
        maybe(data, out, "bias", st.booleans())
    else:  # mamba2: head_dim must divide expand * d_model, ngroups the number of heads
        expand = data.draw(st.integers(1, 4), label="expand")
        if expand != 2 or data.draw(st.booleans()):
            out["expand"] = expand
        inner = expand * d_model
        head_dim = data.draw(st.sampled_from(divisors(inner)), label="head_dim")
        if head_dim != 64 or data.draw(st.booleans()):
            out["head_dim"] = head_dim
        maybe(data, out, "ngroups", st.sampled_from(divisors(inner // head_dim)))
        maybe(data, out, "d_state", st.integers(1, 128))
        maybe(data, out, "d_conv", st.integers(1, 8))
        maybe(data, out, "chunk_size", st.integers(1, 256))
        maybe(data, out, "conv_bias", st.booleans())
        maybe(data, out, "bias", st.booleans())
    return out


def channel_mixer(data: st.DataObject) -> dict[str, Any] | None:
    kind = data.draw(st.sampled_from(["mlp", "swiglu", None]), label="channel kind")
    if kind is None:
        return None
    out: dict[str, Any] = {"kind": kind}
    maybe(data, out, "hidden", st.integers(1, 512))
    maybe(data, out, "bias", st.booleans())
    if kind == "mlp":
        maybe(data, out, "activation", st.sampled_from(["gelu", "silu", "relu"]))
    return out


def layer_items(data: st.DataObject, d_model: int, depth: int = 0) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for _ in range(data.draw(st.integers(1, 3), label="items")):
        if depth < 2 and data.draw(st.integers(0, 3), label="group?") == 0:
            group = layer_items(data, d_model, depth + 1)
            items.append({"repeat": data.draw(st.integers(1, 3), label="repeat"), "layers": group})
            continue
        layer: dict[str, Any] = {"token_mixer": token_mixer(data, d_model)}
        channel = channel_mixer(data)
        if channel is not None or data.draw(st.booleans(), label="explicit null"):
            layer["channel_mixer"] = channel
        items.append(layer)
    return items


def random_spec(data: st.DataObject) -> dict[str, Any]:
    d_model = 2 * data.draw(st.integers(2, 96), label="d_model / 2")
    model: dict[str, Any] = {
        "vocab_size": data.draw(st.integers(2, 70000), label="vocab_size"),
        "d_model": d_model,
        "max_seq_len": data.draw(st.integers(1, 8192), label="max_seq_len"),
    }
    name = st.text("abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=12)
    maybe(data, model, "name", name)  # never empty: a name names the default output folder
    maybe(data, model, "task", st.just("causal-lm"))
    maybe(data, model, "norm", st.sampled_from(["rmsnorm", "layernorm"]))
    maybe(data, model, "norm_eps", st.floats(1e-12, 0.5))
    maybe(data, model, "tie_embeddings", st.booleans())
    model["layers"] = layer_items(data, d_model)
    return {"model": model}


# -- helpers -------------------------------------------------------------------------------------


def canonical(spec: ArchSpec) -> ArchSpec:
    """``spec`` resolved, with its repeat groups expanded into one flat list of layers."""
    resolved = resolve_spec(spec)
    flat = [layer for _, layer in expand_layers(resolved.model.layers, ())]
    return resolved.model_copy(update={"model": resolved.model.model_copy(update={"layers": flat})})


def expanded_count(items: list[Any]) -> int:
    """Layers after expanding repeat groups, counted independently of ``expand_layers``."""
    return sum(
        item.repeat * expanded_count(item.layers) if isinstance(item, RepeatSpec) else 1
        for item in items
    )


def parse(data: dict[str, Any]) -> ArchSpec:
    return parse_spec(yaml.safe_dump(data, sort_keys=False), "random.yaml")


# -- properties ----------------------------------------------------------------------------------

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=st.data())
def test_spec_to_ir_to_spec_is_canonical(data: st.DataObject) -> None:
    spec = parse(random_spec(data))
    graph = graph_from_spec(spec)
    back = spec_from_graph(graph)

    assert back == canonical(spec)
    assert all(isinstance(item, LayerSpec) for item in back.model.layers)  # no repeat groups
    assert len(back.model.layers) == expanded_count(spec.model.layers)
    assert graph_from_spec(back) == graph  # spec -> IR -> spec -> IR: the same graph
    assert spec_from_graph(graph_from_spec(back)) == back
    # The canonical spec survives its own YAML form.
    assert parse(spec_to_data(back)) == back


@SETTINGS
@given(data=st.data())
def test_resolved_output_reparses_to_the_same_graph(data: st.DataObject) -> None:
    spec = parse(random_spec(data))
    text = api.resolved_yaml(spec)  # what `archgen check --resolved` prints
    again = parse_spec(text, "resolved.yaml")

    assert again == resolve_spec(spec)  # repeat groups kept, defaults filled in
    assert graph_from_spec(again) == graph_from_spec(spec)
    assert api.resolved_yaml(again) == text  # resolving is idempotent


@functools.cache
def schema_validator() -> jsonschema.protocols.Validator:
    schema = api.json_schema()
    return jsonschema.validators.validator_for(schema)(schema)


@SETTINGS
@given(data=st.data())
def test_random_specs_satisfy_the_json_schema(data: st.DataObject) -> None:
    raw = random_spec(data)
    parse(raw)
    schema_validator().validate(raw)


def test_graph_equality_notices_a_change() -> None:
    """Guard for the properties above: graph ``==`` is not vacuous."""
    spec = parse_spec((ROOT / "examples" / "transformer.yaml").read_text(), "t.yaml")
    wider = spec.model_copy(update={"model": spec.model.model_copy(update={"d_model": 512})})
    graph: Graph = graph_from_spec(spec)
    assert graph_from_spec(wider) != graph
    layers = spec_from_graph(graph).model.layers
    assert spec_from_graph(graph) != spec_from_graph(graph_from_spec(wider))
    assert len(layers) == 4
    assert layers[0].token_mixer.head_dim == 32  # auto: d_model 256 / 8 heads
    assert layers[0].channel_mixer.hidden == 704  # auto: 8/3 * 256 rounded up to 64


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_round_trip(path: Path) -> None:
    spec = parse_spec(path.read_text(), str(path))
    graph = graph_from_spec(spec)
    # The IR holds the model only (a ``search:`` section, say, does not survive the trip).
    assert spec_from_graph(graph).model == canonical(spec).model
    assert graph_from_spec(parse_spec(api.resolved_yaml(spec), "resolved.yaml")) == graph


def test_cli_check_resolved_reparses(tmp_path: Path) -> None:
    example = ROOT / "examples" / "transformer.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "archgen.cli.main", "check", "--resolved", str(example)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    again = parse_spec(proc.stdout, "resolved.yaml")
    original = parse_spec(example.read_text(), str(example))
    assert graph_from_spec(again) == graph_from_spec(original)
    mixer = again.model.layers[0].layers[0].token_mixer
    assert (mixer.kind, mixer.heads, mixer.kv_heads, mixer.head_dim) == ("attention", 8, 4, 32)


# -- the JSON Schema -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return api.json_schema()


def test_json_schema_is_a_valid_schema(schema: dict[str, Any]) -> None:
    validator = jsonschema.validators.validator_for(schema)
    assert validator is jsonschema.Draft202012Validator
    validator.check_schema(schema)


def test_example_validates_against_the_schema(schema: dict[str, Any]) -> None:
    data = yaml.safe_load((ROOT / "examples" / "transformer.yaml").read_text())
    jsonschema.validate(data, schema)


def _transformer_with(change: Any) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "examples" / "transformer.yaml").read_text())
    change(data)
    return data


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(comment="unknown top-level key"),
        lambda d: d["model"].update(d_modle=256),
        lambda d: d["model"]["layers"][0]["layers"][0]["token_mixer"].update(windw=3),
        lambda d: d["model"]["layers"][0]["layers"][0]["token_mixer"].update(kind="mamaba"),
        lambda d: d["model"]["layers"][0]["layers"][0]["channel_mixer"].update(kind="mamba"),
        lambda d: d["model"].update(d_model=0),
        lambda d: d["model"].update(norm="rmsnrom"),
        lambda d: d["model"].update(layers=[]),
        lambda d: d["model"]["layers"][0].update(repeat=0),
        lambda d: d["model"].pop("vocab_size"),
    ],
    ids=[
        "unknown-top-level-key",
        "unknown-model-key",
        "unknown-mixer-attribute",
        "unknown-kind",
        "token-kind-in-channel-slot",
        "d-model-zero",
        "norm-typo",
        "empty-layers",
        "repeat-zero",
        "missing-vocab-size",
    ],
)
def test_schema_rejects_what_the_loader_rejects(schema: dict[str, Any], change: Any) -> None:
    data = _transformer_with(change)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)
    with pytest.raises(SpecError):
        parse(data)
