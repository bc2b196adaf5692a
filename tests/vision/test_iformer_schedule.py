"""Per-block schedules in a vision stage (iFormer's frequency ramp): any mixer attribute may be a
list with one value per block of the stage. The graph takes the j-th value in block j,
``--resolved`` keeps the lists, the JSON Schema accepts them, and bad lists exit 2 with
file:line and the field path (the element's index when one element is wrong)."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from archgen import api
from archgen.ir import ops
from archgen.spec.expand import graph_from_spec
from archgen.spec.loader import parse_spec
from tests.conftest import archgen

RAMP = """\
model:
  name: ramp
  task: image-classification
  image_size: 12
  num_classes: 4
  stages:
    - width: 12
      depth: 3
      downsample: {kind: conv_bn_embed, stride: 2}
      block:
        - token_mixer: {kind: inception, heads: 6, attention_heads: [1, 2, 4], pool: [2, 2, 1]}
          channel_mixer: {kind: mlp, hidden: [8, 16, 24]}
"""


def _mixers(text: str, role: ops.Role) -> list[ops.Op]:
    graph = graph_from_spec(parse_spec(text))
    return [n.op for n in graph.nodes if n.op.role is role]


def test_each_block_takes_its_value() -> None:
    tokens = _mixers(RAMP, ops.Role.TOKEN_MIXER)
    channels = _mixers(RAMP, ops.Role.CHANNEL_MIXER)
    assert [(o.attention_heads, o.pool) for o in tokens] == [(1, 2), (2, 2), (4, 1)]  # type: ignore[attr-defined]
    assert [o.hidden for o in channels] == [8, 16, 24]  # type: ignore[attr-defined]
    assert {o.heads for o in tokens} == {6}  # type: ignore[attr-defined]


def test_a_constant_list_is_the_scalar() -> None:
    constant = RAMP.replace("[1, 2, 4]", "[2, 2, 2]").replace("[8, 16, 24]", "[8, 8, 8]")
    scalar = RAMP.replace("[1, 2, 4]", "2").replace("[8, 16, 24]", "8")
    assert _mixers(constant, ops.Role.TOKEN_MIXER) == _mixers(scalar, ops.Role.TOKEN_MIXER)
    assert _mixers(constant, ops.Role.CHANNEL_MIXER) == _mixers(scalar, ops.Role.CHANNEL_MIXER)


def test_resolved_keeps_the_lists_and_matches_the_schema(tmp_path: Path) -> None:
    spec = tmp_path / "ramp.yaml"
    # heads is auto (head width 32): resolved to 192 // 32 = 6, one value for every block
    spec.write_text(RAMP.replace("width: 12", "width: 192").replace("heads: 6, ", ""))
    done = archgen("check", str(spec), "--resolved")
    assert done.returncode == 0, done.stderr
    data = yaml.safe_load(done.stdout)
    mixer = data["model"]["stages"][0]["block"][0]["token_mixer"]
    assert mixer["attention_heads"] == [1, 2, 4] and mixer["pool"] == [2, 2, 1]
    assert mixer["heads"] == 6
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(done.stdout)
    assert api.check(resolved).total == api.check(spec).total
    validator = jsonschema.Draft202012Validator(api.json_schema())
    assert not list(validator.iter_errors(yaml.safe_load(RAMP)))
    assert not list(validator.iter_errors(data))
    bad = yaml.safe_load(RAMP)
    bad["model"]["stages"][0]["block"][0]["token_mixer"]["attention_heads"] = [1, "two", 4]
    assert list(validator.iter_errors(bad))


BAD = {
    "too-few": (
        RAMP.replace("[1, 2, 4]", "[1, 2]"),
        "ramp.yaml:11:69: model.stages[0].block[0].token_mixer.attention_heads: gives 2 values, "
        "one per block: the stage has depth 3",
    ),
    "too-many-channel": (
        RAMP.replace("[8, 16, 24]", "[8, 16, 24, 32]"),
        "ramp.yaml:12:46: model.stages[0].block[0].channel_mixer.hidden: gives 4 values",
    ),
    "empty": (
        RAMP.replace("[1, 2, 4]", "[]"),
        "model.stages[0].block[0].token_mixer.attention_heads: gives 0 values",
    ),
    "element-below-bound": (
        RAMP.replace("[1, 2, 4]", "[1, 0, 4]"),
        "ramp.yaml:11:73: model.stages[0].block[0].token_mixer.attention_heads[1]: must be >= 1, "
        "got 0",
    ),
    "element-breaks-a-rule": (
        RAMP.replace("[1, 2, 4]", "[1, 2, 6]"),
        "model.stages[0].block[0].token_mixer.attention_heads[2]: must be < heads 6",
    ),
    "element-pool-vs-grid": (
        RAMP.replace("[2, 2, 1]", "[2, 4, 1]"),
        "model.stages[0].block[0].token_mixer.pool[1]: must divide the stage's 6x6 grid, got 4",
    ),
    "element-type": (
        RAMP.replace("[1, 2, 4]", "[1, two, 4]"),
        "model.stages[0].block[0].token_mixer.attention_heads[1]: expected an integer, got 'two'",
    ),
    "list-in-language-model": (
        "model:\n  vocab_size: 256\n  d_model: 16\n  max_seq_len: 32\n"
        "  layers: [{token_mixer: {kind: attention, heads: [2, 4]}}]\n",
        "model.layers[0].token_mixer.heads: expected an integer, got a list",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_schedules_exit_2_with_the_field(case: str, tmp_path: Path) -> None:
    text, expected = BAD[case]
    (tmp_path / "ramp.yaml").write_text(text)
    done = archgen("check", "ramp.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
