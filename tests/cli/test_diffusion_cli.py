"""examples/diffusion.yaml end to end (issue 15's acceptance): check, a couple of training steps,
generation with every decoder, ONNX export of the trained model (validated), the same tokens when
the decoders drive the export, `archgen validate`, and the masked-diffusion refusals (exit 2, no
traceback)."""

from __future__ import annotations

import json
from pathlib import Path

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


@pytest.fixture(scope="module")
def exported(trained: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The trained model exported to ONNX (export validates every block against eager
    float64 before it writes anything)."""
    out = tmp_path_factory.mktemp("diffusion-onnx") / "onnx"
    r = archgen("export", SPEC, "--format", "onnx", "--weights", trained, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "passed" in r.stdout and "no decode-step graph" in r.stderr + r.stdout
    return str(out)


DECODERS = ["confidence{tokens=2,block=4}", "threshold{tau=0.9,block=8}", "localleap{block=4}"]


def _generate(weights: str, decoder: str, *more: str) -> tuple[str, str]:
    r = archgen(
        "generate", SPEC, "--weights", weights, "--prompt", "def ", "--max-new-tokens", "8",
        "--decoder", decoder, *more,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def ")
    assert "8 tokens in" in r.stderr and "NFE " in r.stderr
    export = (Path(weights) / "model.onnx").is_file()
    runs_on = "torch.compile" if "compile" in more else "onnxruntime" if export else "eager"
    assert f"({runs_on}):" in r.stderr
    return r.stdout, r.stderr.split("NFE ", 1)[1]


@pytest.mark.parametrize("decoder", DECODERS)
def test_generate_with_each_decoder_eager_and_onnx_alike(
    trained: str, exported: str, decoder: str
) -> None:
    """The decoders drive the trained eager model and its ONNX export (--weights EXPORT):
    the same text and the same tokens committed per call at temperature 0."""
    assert _generate(exported, decoder) == _generate(trained, decoder)


TINY = """
model:
  name: tiny-denoiser
  task: masked-diffusion-lm
  vocab_size: 37
  d_model: 16
  max_seq_len: 32
  layers:
    - token_mixer: {kind: attention, heads: 2}
      channel_mixer: {kind: mlp}
"""


def test_the_compile_backend_denoises_as_eager(tmp_path: Path) -> None:
    """`generate --backend compile`'s denoiser (torch.compile; one graph, every call has the
    same length) commits what the eager model commits, call by call (a tiny model: Inductor's
    C++ build of the example takes minutes here)."""
    from archgen import api, decoding
    from archgen import generate as gen

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    weights = tmp_path / "built"
    api.build(spec, weights)
    policy = decoding.parse_decoder("confidence{tokens=2,block=4}")
    runs = {}
    for backend in ("eager", "compile"):
        denoiser, runs_on = gen.load_denoiser(spec, weights, backend)
        runs[runs_on] = decoding.decode(denoiser, [3, 1, 4], 8, policy, mask_token=36)
    eager, compiled = runs["eager"], runs["torch.compile"]
    assert compiled.new_tokens == eager.new_tokens
    assert compiled.committed_per_call == eager.committed_per_call


def test_validate_the_onnx_backend(trained: str) -> None:
    r = archgen(
        "validate", SPEC, "--backend", "onnx", "--weights", trained, "--max-seq", "48",
        "--opt-seq", "17",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "passed: every block within the onnx/float32 tolerance" in r.stdout


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
    bad.write_text(
        text.replace("{kind: dense, heads: 2, causal: false}", "{kind: checkpoint_attention}")
    )
    r = archgen("check", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'checkpoint_attention' is causal-only (it has no bidirectional form yet)" in r.stderr
    assert "use attention, swa, mamba or mamba2" in r.stderr
    r = archgen("generate", str(ROOT / "examples" / "transformer.yaml"), "--prompt", "x",
                "--decoder", "localleap")  # fmt: skip
    assert r.returncode == 2 and "--decoder applies to masked-diffusion-lm models" in r.stderr


def test_backend_applies_to_diffusion_denoisers_only(tmp_path) -> None:
    r = archgen("generate", str(ROOT / "examples" / "transformer.yaml"), "--prompt", "x",
                "--backend", "compile")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--backend applies to masked-diffusion-lm models" in r.stderr
    (tmp_path / "model.onnx").write_bytes(b"")
    r = archgen("generate", SPEC, "--prompt", "x", "--weights", str(tmp_path), "--backend",
                "compile", "--max-new-tokens", "8", "--decoder", "localleap{block=8}")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--backend compile with" in r.stderr and "an onnx export folder" in r.stderr


def test_an_onnx_export_folder_drives_diffusion_decoding_only(tmp_path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    r = archgen("generate", str(ROOT / "examples" / "transformer.yaml"), "--prompt", "x",
                "--weights", str(tmp_path))  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "generate drives those for masked-diffusion LMs only" in r.stderr
    r = archgen("generate", SPEC, "--prompt", "x", "--weights", str(tmp_path),
                "--max-new-tokens", "8", "--decoder", "localleap{block=8}")  # fmt: skip
    assert r.returncode == 2 and "not an archgen export folder" in r.stderr
