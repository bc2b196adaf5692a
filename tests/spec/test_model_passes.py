"""``model.passes``: rewrites recorded in the spec, applied by every compile of it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from archgen import api
from archgen.ir.ops import CheckpointAttention, SlidingWindowAttention
from archgen.spec.errors import SpecError
from archgen.spec.loader import load_spec, parse_spec
from tests.conftest import EXAMPLES

TRANSFORMER = next(p for p in EXAMPLES if p.stem == "transformer")
COMPRESS = "compress_segments{s=16,local=swa}"

TINY = """\
model:
  vocab_size: 256
  d_model: 64
  max_seq_len: 64
  layers:
    - token_mixer: {kind: attention, heads: 4}
      channel_mixer: {kind: swiglu}
"""


def _with_passes(passes: str) -> str:
    return TINY + f'  passes: "{passes}"\n'


def test_spec_without_passes_dumps_and_hashes_as_before() -> None:
    spec = load_spec(TRANSFORMER)
    assert spec.model.passes is None
    assert "passes" not in yaml.safe_load(api.resolved_yaml(spec))["model"]
    recorded = api.with_passes(spec, COMPRESS)
    assert recorded.model.passes == COMPRESS
    assert api.spec_hash(recorded) != api.spec_hash(spec)  # the hash covers model.passes


def test_recorded_passes_round_trip_through_resolved_yaml() -> None:
    spec = api.with_passes(TRANSFORMER, COMPRESS)
    text = api.resolved_yaml(spec)
    assert yaml.safe_load(text)["model"]["passes"] == COMPRESS
    again = parse_spec(text)
    assert again.model.passes == COMPRESS and api.spec_hash(again) == api.spec_hash(spec)
    # appending keeps what was there, in order
    twice = api.with_passes(spec, "compress_segments{s=1}")
    assert twice.model.passes == f"{COMPRESS},compress_segments{{s=1}}"


def test_compile_applies_the_spec_passes_then_the_argument() -> None:
    graph = api.compile_spec(parse_spec(_with_passes(COMPRESS)))
    assert isinstance(graph.node("layers.0.token_mixer").op, CheckpointAttention)
    assert isinstance(graph.node("layers.0.local_mixer").op, SlidingWindowAttention)
    # the argument runs after: this replace_mixer sees the inserted local mixer's block layout
    graph = api.compile_spec(
        parse_spec(_with_passes(COMPRESS)), passes="replace_mixer{kind=swa,window=8}"
    )
    op = graph.node("layers.0.token_mixer").op
    assert isinstance(op, SlidingWindowAttention) and op.window == 8
    assert isinstance(graph.node("layers.0.local_mixer").op, SlidingWindowAttention)


def test_schema_describes_model_passes() -> None:
    schema = api.json_schema()
    model = schema["$defs"]["ModelSpec"]["properties"]
    assert "passes" in model and "compress_segments" in model["passes"]["description"]


@pytest.mark.parametrize(
    ("passes", "message"),
    [
        ("compres_segments{s=4}", "unknown pass 'compres_segments'; did you mean"),
        ("compress_segments{s=x}", "option s: expected an integer, got 'x'"),
        ("compress_segments{seg=4}", "unknown option 'seg'"),
        ("", "is empty"),
    ],
)
def test_bad_passes_are_spec_errors_at_their_line(
    tmp_path: Path, passes: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(_with_passes(passes))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    (issue,) = info.value.issues
    assert issue.path == ("model", "passes")
    assert issue.position is not None and issue.position.line == 8
    assert str(issue).startswith(f"{path}:8:")
    assert message in issue.message
