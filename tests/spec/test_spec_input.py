"""Spec input the loader must refuse rather than read forever or accept silently (issue 16):
endless or huge files, tags on lists and mappings."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from archgen.spec.errors import SpecError
from archgen.spec.loader import MAX_SPEC_BYTES, load_spec, parse_spec
from tests.conftest import TINY_LM, archgen

SPEC = TINY_LM


def test_endless_file_is_refused_after_one_mib() -> None:
    with pytest.raises(SpecError, match="larger than 1 MiB: not a spec"):
        load_spec("/dev/zero")


def test_huge_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(SPEC + "#" * MAX_SPEC_BYTES)
    with pytest.raises(SpecError, match=r"big\.yaml: <root>: the file is larger than 1 MiB"):
        load_spec(big)


def test_check_dev_zero_exits_2() -> None:
    result = archgen("check", "/dev/zero")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "larger than 1 MiB" in result.stderr


@pytest.mark.parametrize(
    ("line", "tag", "where"),
    [
        ("  layers: !!python/tuple", "python/tuple", "bad.yaml:6:11: model.layers:"),
        ("  layers: !!set", "set", "bad.yaml:6:11: model.layers:"),
        ("  layers: !custom", "!custom", "bad.yaml:6:11: model.layers:"),
    ],
)
def test_tag_on_a_list_is_refused_like_a_scalar_tag(line: str, tag: str, where: str) -> None:
    text = SPEC.replace("  layers:", line)
    with pytest.raises(SpecError) as info:
        parse_spec(text, "bad.yaml")
    assert str(info.value).startswith(where) and "unsupported YAML tag" in str(info.value)
    assert tag in str(info.value)


def test_tag_on_a_mapping_is_refused() -> None:
    text = SPEC.replace("token_mixer: {", "token_mixer: !!python/object:os.system {")
    with pytest.raises(SpecError) as info:
        parse_spec(text, "bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml:7:20: model.layers[0].token_mixer: invalid value: ")
    assert "unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system'" in message


def test_explicit_plain_tags_are_fine() -> None:
    text = SPEC.replace("  layers:", "  layers: !!seq").replace("model:", "model: !!map", 1)
    assert parse_spec(textwrap.dedent(text)).model.d_model == 16
