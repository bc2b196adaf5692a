"""Acceptance tests of the spec front end: bad specs and the exact error text a user sees.

Every expected message below is written by hand: file:line:column, field path, and words. Line and
column are 1-based and point at the offending value (or key, for unknown and duplicate keys; or the
enclosing mapping when the culprit is a default the user did not write).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from archgen.spec.errors import SpecError, SpecIssue
from archgen.spec.loader import load_spec, parse_spec
from archgen.spec.models import ArchSpec
from archgen.spec.yaml_source import Position

FILE = "bad.yaml"
# Other sections (search:, data:, train:...) join the top level as the project grows; the words
# around the list are what these tests pin down.
TOP_LEVEL_KEYS = ", ".join(sorted(ArchSpec.model_fields))


def error_text(text: str) -> str:
    """Parse ``text`` (dedented) and return the SpecError's text; fail on success or crash."""
    with pytest.raises(SpecError) as info:
        parse_spec(textwrap.dedent(text), FILE)
    assert type(info.value) is SpecError
    issues = info.value.issues
    assert issues, "a SpecError must name at least one issue"
    for issue in issues:
        assert isinstance(issue, SpecIssue)
        assert issue.filename == FILE
        assert issue.message.strip()
    return str(info.value)


# (test id, spec text, the exact error text: one line per issue)
CASES: list[tuple[str, str, str]] = [
    # -- YAML syntax --------------------------------------------------------------------------
    (
        "tab-indent",
        "model:\n\tname: tiny\n",
        "bad.yaml:2:1: <root>: invalid YAML: a tab character is not allowed here; "
        "indent with spaces",
    ),
    (
        "under-indented-key",
        """\
        model:
          name: tiny
         vocab_size: 256
        """,
        "bad.yaml:3:2: <root>: invalid YAML: bad indentation: this line lines up with no "
        "enclosing key or list item",
    ),
    (
        "over-indented-key",
        """\
        model:
          name: tiny
            vocab_size: 256
        """,
        "bad.yaml:3:15: <root>: invalid YAML: unexpected ':' (check the indentation of this "
        "line, or quote a value that contains ': ')",
    ),
    (
        "unclosed-bracket",
        """\
        model:
          name: tiny
          layers: [{token_mixer: {kind: mamba}}
          d_model: 64
        """,
        "bad.yaml:4:3: <root>: invalid YAML: expected ',' or ']' in the list opened with '[' "
        "at line 3, column 11, found a value (is a ']' missing?)",
    ),
    (
        "unclosed-brace-at-end-of-file",
        """\
        model:
          layers:
            - token_mixer: {kind: mamba
        """,
        "bad.yaml:4:1: <root>: invalid YAML: expected ',' or '}' in the mapping opened with '{' "
        "at line 3, column 20, found the end of the file (is a '}' missing?)",
    ),
    (
        "list-item-among-keys",
        """\
        model:
          name: tiny
          - layers
        """,
        "bad.yaml:3:3: <root>: invalid YAML: a list item cannot follow the keys of the mapping "
        "at line 2, column 3",
    ),
    (
        "unclosed-quote",
        """\
        model:
          name: 'tiny
        """,
        "bad.yaml:3:1: <root>: invalid YAML: the quoted string that starts at line 2, column 9 "
        "is never closed",
    ),
    (
        "duplicate-key",
        """\
        model:
          name: tiny
          d_model: 64
          vocab_size: 256
          d_model: 128
        """,
        "bad.yaml:5:3: model.d_model: duplicate key 'd_model'",
    ),
    (
        "duplicate-key-in-flow-mapping",
        """\
        model:
          layers:
            - token_mixer: {kind: mamba, d_state: 16, d_state: 32}
        """,
        "bad.yaml:3:47: model.layers[0].token_mixer.d_state: duplicate key 'd_state'",
    ),
    (
        "recursive-alias",
        """\
        model: &m
          name: tiny
          inner: *m
        """,
        "bad.yaml:3:3: model.inner: recursive alias (a value that contains itself)",
    ),
    (
        "bad-int-tag",
        """\
        model:
          d_model: !!int wide
        """,
        "bad.yaml:2:12: model.d_model: invalid value: 'wide' is not a valid !!int",
    ),
    (
        "escape-beyond-unicode",
        """\
        model:
          name: "tiny \\U00110000"
        """,
        "bad.yaml:2:17: <root>: invalid YAML: this escape sequence is beyond the last Unicode "
        "character (\\U0010FFFF)",
    ),
    (
        "nul-character",
        "model:\n  name: t\x00\n",
        "bad.yaml:2:10: <root>: invalid YAML: character '\\x00' is not allowed in YAML",
    ),
    (
        "empty-int-tag",
        """\
        model:
          d_model: !!int
          vocab_size: 256
        """,
        "bad.yaml:2:12: model.d_model: invalid value: '' is not a valid !!int",
    ),
    (
        "non-string-key",
        """\
        model:
          name: tiny
          64: d_model
        """,
        "bad.yaml:3:3: model: keys must be strings, got 64",
    ),
    # -- shape of the file ----------------------------------------------------------------------
    ("empty-file", "", "bad.yaml:1:1: <root>: the spec is empty"),
    ("only-comments", "# TODO: write the model\n", "bad.yaml:1:1: <root>: the spec is empty"),
    (
        "top-level-list",
        "- model: {}\n",
        "bad.yaml:1:1: <root>: the spec must be a mapping with a 'model' key",
    ),
    (
        "missing-model",
        """\
        comment: nothing here
        """,
        "bad.yaml:1:1: model: missing required key\n"
        f"bad.yaml:1:1: comment: unknown key 'comment'; valid keys: {TOP_LEVEL_KEYS}",
    ),
    (
        "model-fields-at-top-level",
        """\
        name: tiny
        d_model: 64
        """,
        "bad.yaml:1:1: model: missing required key\n"
        "bad.yaml:1:1: name: unknown key 'name'; 'name' belongs under 'model:'\n"
        "bad.yaml:2:1: d_model: unknown key 'd_model'; 'd_model' belongs under 'model:'",
    ),
    (
        "unknown-top-level-key",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers: [{token_mixer: {kind: mamba}}]
        comment: a tiny mamba
        """,
        f"bad.yaml:6:1: comment: unknown key 'comment'; valid keys: {TOP_LEVEL_KEYS}",
    ),
    (
        "model-is-a-list",
        """\
        model:
          - d_model: 64
        """,
        "bad.yaml:2:3: model: expected a mapping, got a list",
    ),
    (
        "unknown-model-key-suggests",
        # One mistake, one message: no separate "model.d_model: missing required key".
        """\
        model:
          vocab_size: 256
          d_modle: 64
          max_seq_len: 128
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:3:3: model.d_modle: unknown key 'd_modle' (did you mean 'd_model'?)",
    ),
    (
        "missing-required-model-keys",
        """\
        model:
          name: tiny
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:2:3: model.vocab_size: missing required key\n"
        "bad.yaml:2:3: model.d_model: missing required key\n"
        "bad.yaml:2:3: model.max_seq_len: missing required key",
    ),
    # -- wrong types -----------------------------------------------------------------------------
    (
        "string-for-int",
        """\
        model:
          vocab_size: 256
          d_model: wide
          max_seq_len: 128
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:3:12: model.d_model: expected an integer, got 'wide'",
    ),
    (
        "quoted-number-for-int",
        """\
        model:
          vocab_size: '256'
          d_model: 64
          max_seq_len: 128
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:2:15: model.vocab_size: expected an integer, got '256'",
    ),
    (
        "float-for-int",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 2.5
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:4:16: model.max_seq_len: expected an integer, got 2.5",
    ),
    (
        "bool-for-int",
        """\
        model:
          vocab_size: 256
          d_model: true
          max_seq_len: 128
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:3:12: model.d_model: expected an integer, got true",
    ),
    (
        "maybe-for-bool",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          tie_embeddings: maybe
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:5:19: model.tie_embeddings: expected true or false, got 'maybe'",
    ),
    (
        "int-for-bool",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: mamba}
              channel_mixer: {kind: mlp, bias: 1}
        """,
        "bad.yaml:7:40: model.layers[0].channel_mixer.bias: expected true or false, got 1",
    ),
    (
        "list-for-mapping",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: [attention]
        """,
        "bad.yaml:6:20: model.layers[0].token_mixer: expected a mapping, got a list",
    ),
    (
        "layers-is-a-mapping",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            token_mixer: {kind: mamba}
        """,
        "bad.yaml:6:5: model.layers: expected a list, got a mapping",
    ),
    (
        "layer-is-a-word",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - mamba
        """,
        "bad.yaml:6:7: model.layers[0]: expected a mapping, got 'mamba'",
    ),
    (
        "nan-norm-eps",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          norm_eps: .nan
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:5:13: model.norm_eps: expected a finite number, got nan",
    ),
    (
        "date-for-name",
        """\
        model:
          name: 2024-05-01
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:2:9: model.name: expected a string, got the date 2024-05-01 "
        "(quote it to make it a string)",
    ),
    # -- out of range ----------------------------------------------------------------------------
    (
        "d-model-zero",
        """\
        model:
          vocab_size: 256
          d_model: 0
          max_seq_len: 128
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:3:12: model.d_model: must be >= 1, got 0",
    ),
    (
        "vocab-size-one",
        """\
        model:
          vocab_size: 1
          d_model: 64
          max_seq_len: 128
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:2:15: model.vocab_size: must be >= 2, got 1",
    ),
    (
        "d-model-huge",
        """\
        model:
          vocab_size: 256
          d_model: 1000000
          max_seq_len: 128
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:3:12: model.d_model: must be <= 65536, got 1000000",
    ),
    (
        "norm-eps-zero",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          norm_eps: 0
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:5:13: model.norm_eps: must be > 0, got 0",
    ),
    (
        "window-zero",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: swa, heads: 4, window: 0}
        """,
        "bad.yaml:6:50: model.layers[0].token_mixer.window: must be >= 1, got 0",
    ),
    (
        "negative-heads",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: attention, heads: -4}
        """,
        "bad.yaml:6:45: model.layers[0].token_mixer.heads: must be >= 1, got -4",
    ),
    (
        "repeat-zero",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - repeat: 0
              layers:
                - token_mixer: {kind: mamba}
        """,
        "bad.yaml:6:15: model.layers[0].repeat: must be >= 1, got 0",
    ),
    (
        "too-many-layers",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - repeat: 4096
              layers:
                - token_mixer: {kind: mamba}
                - token_mixer: {kind: mamba}
        """,
        "bad.yaml:6:5: model.layers: expands to more than 4096 layers",
    ),
    (
        "empty-layers",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers: []
        """,
        "bad.yaml:5:11: model.layers: must not be empty",
    ),
    # -- mixer kinds and attributes -----------------------------------------------------------
    (
        "unknown-kind-suggests",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: mamaba}
        """,
        "bad.yaml:6:27: model.layers[0].token_mixer.kind: unknown token mixer kind 'mamaba' "
        "(did you mean 'mamba'?); known: attention, swa, checkpoint_attention, dense, mamba, "
        "mamba2",
    ),
    (
        "channel-mixer-in-token-slot",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: swiglu}
        """,
        "bad.yaml:6:27: model.layers[0].token_mixer.kind: 'swiglu' is a channel mixer, not a "
        "token mixer; a token mixer is one of: attention, swa, checkpoint_attention, dense, "
        "mamba, mamba2",
    ),
    (
        "token-mixer-in-channel-slot",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: mamba}
              channel_mixer: {kind: attention}
        """,
        "bad.yaml:7:29: model.layers[0].channel_mixer.kind: 'attention' is a token mixer, not a "
        "channel mixer; a channel mixer is one of: mlp, swiglu, layerscale_mlp",
    ),
    (
        "missing-kind",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {heads: 4}
        """,
        "bad.yaml:6:20: model.layers[0].token_mixer: missing 'kind'; a token mixer is one of: "
        "attention, swa, checkpoint_attention, dense, mamba, mamba2",
    ),
    (
        "null-kind",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: mamba}
              channel_mixer: {kind: null}
        """,
        "bad.yaml:7:29: model.layers[0].channel_mixer.kind: expected a channel mixer kind, "
        "got null; known: mlp, swiglu, layerscale_mlp",
    ),
    (
        "missing-token-mixer",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - channel_mixer: {kind: mlp}
        """,
        "bad.yaml:6:7: model.layers[0].token_mixer: missing required key",
    ),
    (
        "unknown-attribute-suggests",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: swa, windw: 64}
        """,
        "bad.yaml:6:32: model.layers[0].token_mixer.windw: unknown key 'windw' "
        "(did you mean 'window'?)",
    ),
    (
        "unknown-attribute-lists-valid-keys",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: mamba}
              channel_mixer: {kind: swiglu, dropout: 0.1}
        """,
        "bad.yaml:7:37: model.layers[0].channel_mixer.dropout: unknown key 'dropout'; "
        "valid keys: bias, hidden, kind",
    ),
    (
        "layer-key-typo",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: mamba}
              chanel_mixer: {kind: mlp}
        """,
        "bad.yaml:7:7: model.layers[0].chanel_mixer: unknown key 'chanel_mixer' "
        "(did you mean 'channel_mixer'?)",
    ),
    # -- enums -----------------------------------------------------------------------------------
    (
        "norm-typo",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          norm: rmsnrom
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:5:9: model.norm: must be one of rmsnorm, layernorm; got 'rmsnrom' "
        "(did you mean 'rmsnorm'?)",
    ),
    (
        "activation-typo",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: mamba}
              channel_mixer: {kind: mlp, activation: gleu}
        """,
        "bad.yaml:7:46: model.layers[0].channel_mixer.activation: must be one of gelu, silu, "
        "relu; got 'gleu' (did you mean 'gelu'?)",
    ),
    (
        "task-underscore",
        """\
        model:
          task: causal_lm
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:2:9: model.task: must be one of causal-lm, masked-diffusion-lm, "
        "image-classification; got 'causal_lm' (did you mean 'causal-lm'?)",
    ),
    (
        "diffusion-causal-only-mixer",
        """\
        model:
          task: masked-diffusion-lm
          vocab_size: 257
          d_model: 64
          max_seq_len: 128
          layers: [{token_mixer: {kind: checkpoint_attention}}]
        """,
        "bad.yaml:6:33: model.layers[0].token_mixer.kind: 'checkpoint_attention' is causal-only "
        "(it has no bidirectional form yet), but task 'masked-diffusion-lm' needs bidirectional "
        "token mixers: use attention, swa, mamba or mamba2 (bidirectional in this task), or "
        "dense with causal: false",
    ),
    (
        "diffusion-causal-dense",
        """\
        model:
          task: masked-diffusion-lm
          vocab_size: 257
          d_model: 64
          max_seq_len: 128
          layers: [{token_mixer: {kind: dense, causal: true}}]
        """,
        "bad.yaml:6:48: model.layers[0].token_mixer.causal: 'dense' is causal here, but task "
        "'masked-diffusion-lm' needs bidirectional token mixers (set causal: false)",
    ),
    # -- the model's own rules -------------------------------------------------------------------
    (
        "width-not-divisible-by-heads",
        """\
        model:
          vocab_size: 256
          d_model: 96
          max_seq_len: 128
          layers:
            - token_mixer: {kind: attention, heads: 5}
        """,
        "bad.yaml:6:45: model.layers[0].token_mixer.heads: d_model 96 is not divisible by heads 5",
    ),
    (
        "heads-not-multiple-of-kv-heads",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: attention, heads: 8, kv_heads: 3}
        """,
        "bad.yaml:6:58: model.layers[0].token_mixer.kv_heads: heads 8 is not a multiple of "
        "kv_heads 3",
    ),
    (
        "odd-head-dim-with-rope",
        # rope_theta is a default here, so the position falls back to the mixer's mapping.
        """\
        model:
          vocab_size: 256
          d_model: 40
          max_seq_len: 128
          layers:
            - token_mixer: {kind: attention, heads: 8}
        """,
        "bad.yaml:6:20: model.layers[0].token_mixer.rope_theta: RoPE needs an even head_dim, got 5",
    ),
    (
        "mamba2-inner-width-not-divisible-by-head-dim",
        """\
        model:
          vocab_size: 256
          d_model: 48
          max_seq_len: 128
          layers:
            - token_mixer: {kind: mamba2, head_dim: 64}
        """,
        "bad.yaml:6:45: model.layers[0].token_mixer.head_dim: inner width 96 (expand*d_model) "
        "is not divisible by 64",
    ),
    (
        "non-causal-dense-in-causal-lm",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: dense, causal: false}
        """,
        "bad.yaml:6:42: model.layers[0].token_mixer.causal: 'dense' is not causal here, but "
        "task 'causal-lm' needs causal token mixers (set causal: true)",
    ),
    # -- repeat groups and later lines -----------------------------------------------------------
    (
        "error-inside-repeat-group",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - repeat: 3
              layers:
                - token_mixer: {kind: mamba}
                - token_mixer: {kind: swa, window: 0}
                  channel_mixer: {kind: swiglu}
        """,
        "bad.yaml:9:44: model.layers[0].layers[1].token_mixer.window: must be >= 1, got 0",
    ),
    (
        "unknown-key-inside-repeat-group",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: mamba}
            - repeat: 2
              layers:
                - token_mixer: {kind: attention, heads: 4, kv_head: 2}
        """,
        "bad.yaml:9:52: model.layers[1].layers[0].token_mixer.kv_head: unknown key 'kv_head' "
        "(did you mean 'kv_heads'?)",
    ),
    (
        "repeat-group-without-layers",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - repeat: 2
        """,
        "bad.yaml:6:7: model.layers[0].layers: missing required key",
    ),
    (
        "repeat-group-key-typo",
        """\
        model:
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - repeat: 2
              layres:
                - token_mixer: {kind: mamba}
        """,
        "bad.yaml:7:7: model.layers[0].layres: unknown key 'layres' (did you mean 'layers'?)",
    ),
    (
        "several-errors-on-later-lines-in-file-order",
        """\
        model:
          name: tiny
          vocab_size: 256
          d_model: 64
          max_seq_len: 128
          layers:
            - token_mixer: {kind: mamba}
              channel_mixer: {kind: mlp}
            - token_mixer: {kind: mamba, d_state: 0}
              channel_mixer: {kind: swiglu, hidden: 0}
            - token_mixer: {kind: checkpoint_attention, segment_size: 0}
        """,
        "bad.yaml:9:43: model.layers[1].token_mixer.d_state: must be >= 1, got 0\n"
        "bad.yaml:10:45: model.layers[1].channel_mixer.hidden: must be >= 1, got 0\n"
        "bad.yaml:11:63: model.layers[2].token_mixer.segment_size: must be >= 1, got 0",
    ),
    (
        "type-and-range-errors-together",
        """\
        model:
          vocab_size: 1
          d_model: x
          max_seq_len: 128
          layers: [{token_mixer: {kind: mamba}}]
        """,
        "bad.yaml:2:15: model.vocab_size: must be >= 2, got 1\n"
        "bad.yaml:3:12: model.d_model: expected an integer, got 'x'",
    ),
]


def test_case_ids_are_distinct() -> None:
    ids = [c[0] for c in CASES]
    texts = [c[1] for c in CASES]
    assert len(set(ids)) == len(ids)
    assert len(set(texts)) == len(texts)
    assert len(CASES) >= 30


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_spec_error_text(text: str, expected: str) -> None:
    assert error_text(text) == expected


def test_issue_fields() -> None:
    text = """\
    model:
      vocab_size: 256
      d_model: 64
      max_seq_len: 128
      layers:
        - token_mixer: {kind: mamba}
        - token_mixer: {kind: swa, window: 0}
    """
    with pytest.raises(SpecError) as info:
        parse_spec(textwrap.dedent(text), "f.yaml")
    (issue,) = info.value.issues
    assert issue.filename == "f.yaml"
    assert issue.position == Position(7, 40)
    assert issue.path == ("model", "layers", 1, "token_mixer", "window")
    assert issue.message == "must be >= 1, got 0"
    assert str(issue) == "f.yaml:7:40: model.layers[1].token_mixer.window: must be >= 1, got 0"


def test_a_valid_spec_parses() -> None:
    """The fixture specs above differ from this one only in their mistakes."""
    spec = parse_spec(
        textwrap.dedent(
            """\
            model:
              vocab_size: 256
              d_model: 64
              max_seq_len: 128
              norm_eps: 1e-5
              layers:
                - repeat: 2
                  layers:
                    - token_mixer: {kind: swa, heads: 4, window: 64}
                      channel_mixer: {kind: mlp, activation: silu}
            """
        ),
        FILE,
    )
    assert spec.model.norm_eps == 1e-5  # YAML 1.1 reads `1e-5` as a string; it is still a number
    assert spec.model.layers[0].repeat == 2


def test_merge_key_may_be_overridden() -> None:
    """``<<: *anchor`` followed by an explicit key is an override, not a duplicate key."""
    spec = parse_spec(
        textwrap.dedent(
            """\
            model:
              vocab_size: 256
              d_model: 64
              max_seq_len: 128
              layers:
                - token_mixer: &swa {kind: swa, heads: 4, window: 64}
                - token_mixer: {<<: *swa, window: 32}
            """
        ),
        FILE,
    )
    windows = [layer.token_mixer.window for layer in spec.model.layers]
    assert windows == [64, 32]


def test_alias_bomb_is_refused_quickly() -> None:
    rows = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(SpecError) as info:
        parse_spec("\n".join(rows) + "\n", FILE)
    (issue,) = info.value.issues
    assert issue.message == "the spec has more than 200000 values (aliases expanded)"


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec("model: " + "[" * 5000 + "]" * 5000 + "\n", FILE)
    assert str(info.value) == "bad.yaml: <root>: invalid YAML: the spec is nested too deeply"


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(missing)
    assert str(info.value) == f"{missing}: <root>: file not found"


# -- the command line: exit code 2, the message on stderr, no traceback -------------------------

CLI_CASES = [
    (
        "model:\n\tname: tiny\n",
        ["2:1: <root>: invalid YAML: a tab character is not allowed here; indent with spaces"],
    ),
    (
        "model:\n  vocab_size: 256\n  d_modle: 64\n  max_seq_len: 8\n"
        "  layers: [{token_mixer: {kind: mamba}}]\n",
        ["3:3: model.d_modle: unknown key 'd_modle' (did you mean 'd_model'?)"],
    ),
    (
        "model:\n  vocab_size: 256\n  d_model: 96\n  max_seq_len: 8\n"
        "  layers:\n    - token_mixer: {kind: attention, heads: 5}\n"
        "    - token_mixer: {kind: swa, heads: 8, kv_heads: 5}\n",
        [
            "6:45: model.layers[0].token_mixer.heads: d_model 96 is not divisible by heads 5",
            "7:52: model.layers[1].token_mixer.kv_heads: heads 8 is not a multiple of kv_heads 5",
        ],
    ),
]


@pytest.mark.parametrize(("text", "lines"), CLI_CASES, ids=["syntax", "unknown-key", "semantic"])
def test_cli_check_reports_spec_errors(tmp_path: Path, text: str, lines: list[str]) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "archgen.cli.main", "check", str(spec)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    reported = proc.stderr.splitlines()
    assert reported == [f"error: {spec}:{line}" for line in lines]


def test_cli_check_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "archgen.cli.main", "check", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [f"error: {missing}: <root>: file not found"]
