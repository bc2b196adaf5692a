"""examples/diffusion.yaml end to end: check, a couple of training steps, generation with every
decoder, and the masked-diffusion refusals (exit 2, no traceback)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, archgen

SPEC = str(ROOT / "examples" / "diffusion.yaml")


def test_check_shows_the_cost_per_denoiser_call() -> None:
    r = archgen("check", SPEC)
    assert r.returncode == 0, r.stderr
    assert "masked-diffusion-lm" in r.stdout and "per denoiser call" in r.stdout
    assert "mask token 256" in r.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("diffusion") / "run"
    r = archgen(
        "train", SPEC, "--steps", "2", "--batch-size", "4", "--seq-len", "32",
        "--data", str(ROOT / "README.md"), "--out", str(out), "--threads", "1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    vals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [v for v in vals if v["kind"] == "val"]
    assert [v["step"] for v in vals] == [0, 2] and all(v["loss"] > 0 for v in vals)
    return str(out)


@pytest.mark.parametrize(
    "decoder", ["confidence{tokens=2,block=4}", "threshold{tau=0.9,block=8}", "localleap{block=4}"]
)
def test_generate_with_each_decoder(trained: str, decoder: str) -> None:
    r = archgen(
        "generate", SPEC, "--weights", trained, "--prompt", "def ", "--max-new-tokens", "8",
        "--decoder", decoder,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def ")
    assert "8 tokens in" in r.stderr and "NFE " in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--decoder", "localleap{tau=0.8,tau_relax=0.9}"], "tau_relax (0.9) must be <= tau"),
        (["--decoder", "localleap{radius=-1}"], "radius must be >= 0, got -1"),
        (["--decoder", "threshold{block=5}"], "block 5 does not divide the generation length 8"),
        (["--temperature", "0.7", "--decoder", "localleap{block=8}"], "decoding is greedy"),
    ],
)
def test_bad_decoder_options_exit_2(args: list[str], message: str) -> None:
    r = archgen("generate", SPEC, "--prompt", "x", "--max-new-tokens", "8", *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_a_causal_only_mixer_is_refused_with_the_reason(tmp_path) -> None:
    text = (ROOT / "examples" / "diffusion.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("{kind: dense, heads: 2, causal: false}", "{kind: mamba}"))
    r = archgen("check", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'mamba' is causal-only (it has no bidirectional form yet)" in r.stderr
    r = archgen("generate", str(ROOT / "examples" / "transformer.yaml"), "--prompt", "x",
                "--decoder", "localleap")  # fmt: skip
    assert r.returncode == 2 and "--decoder applies to masked-diffusion-lm models" in r.stderr


def test_export_is_refused_until_supported(tmp_path) -> None:
    r = archgen("export", SPEC, "--format", "onnx", "-o", str(tmp_path / "x"))
    assert r.returncode == 2, r.stderr
    assert "export does not support masked-diffusion-lm models yet" in r.stderr
