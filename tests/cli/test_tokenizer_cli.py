"""``archgen train`` with a BPE tokenizer, then ``archgen generate`` from the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, archgen

SPEC = """model:
  name: tiny-bpe
  vocab_size: {vocab}
  d_model: 16
  max_seq_len: 64
  layers:
    - token_mixer: {{kind: attention, heads: 2}}
      channel_mixer: {{kind: swiglu}}
data:
  kind: text
  paths: [{corpus}]
  tokenizer: {{kind: bpe, vocab_size: 300}}
"""


def _env(tmp: Path) -> dict[str, str]:
    return {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "ARCHGEN_CACHE": str(tmp / "cache")}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bpe")
    (tmp / "m.yaml").write_text(SPEC.format(vocab=300, corpus=ROOT / "README.md"))
    out = tmp / "run"
    r = archgen(
        "train", str(tmp / "m.yaml"), "--steps", "2", "--batch-size", "2", "--seq-len", "32",
        "--out", str(out), "--threads", "1", "--no-progress", env=_env(tmp),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "BPE of 300 ids" in r.stdout + r.stderr
    vals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [v["step"] for v in vals if v["kind"] == "val"] == [0, 2]
    assert all(0 < v["bpb"] < 20 for v in vals if v["kind"] == "val")
    assert (out / "tokenizer.json").is_file()
    return out


def test_generate_reads_the_run_folders_tokenizer(run: Path) -> None:
    r = archgen(
        "generate", str(run / "spec.yaml"), "--weights", str(run), "--prompt", "The model",
        "--max-new-tokens", "8", "--seed", "1", env=_env(run.parent),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The model") and len(r.stdout.strip()) > len("The model")
    assert "8 tokens in" in r.stderr


def test_generate_without_the_tokenizer_is_refused(run: Path) -> None:
    r = archgen("generate", str(run / "spec.yaml"), "--prompt", "x", env=_env(run.parent))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no --weights folder" in r.stderr and "tokenizer.json" in r.stderr


def test_a_vocab_size_that_does_not_match_is_refused_at_its_line(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(SPEC.format(vocab=256, corpus=ROOT / "README.md"))
    r = archgen("train", str(tmp_path / "m.yaml"), "--steps", "1", env=_env(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "m.yaml:3:15: model.vocab_size: 256 does not fit the tokenizer's 300" in r.stderr
