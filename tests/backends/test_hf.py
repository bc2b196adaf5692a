"""Hugging Face interop (archgen.hf, archgen.hf_io): logits equal both ways on tiny random models.

archgen -> export hf -> transformers' ``from_pretrained`` gives archgen's logits, and a random
transformers model -> ``save_pretrained`` -> import gives transformers' logits, for every family
that maps (Mamba, Mamba-2, Llama, Bamba). What does not map is refused naming the layer or the
attribute, through the CLI with exit 2 and no traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from archgen.api import build, compile_spec
from archgen.backends.torch_model import build_model
from archgen.errors import ArchgenError
from archgen.hf import hf_layout, spec_from_hf_config
from archgen.hf_io import export_hf, import_hf
from archgen.training import load_trained
from tests.conftest import archgen
from tests.tolerances import assert_close

transformers = pytest.importorskip("transformers")
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

VOCAB, D = 50, 32
M2 = {"kind": "mamba2", "d_state": 8, "head_dim": 16, "ngroups": 2, "chunk_size": 8}
ATTN = {"kind": "attention", "heads": 4, "kv_heads": 2, "rope_theta": 500000.0}
SWIGLU = {"kind": "swiglu", "hidden": 40}


def _spec(tmp_path: Path, layers: list[dict[str, Any]], **model: Any) -> Path:
    data = {"name": "tiny", "vocab_size": VOCAB, "d_model": D, "max_seq_len": 64, **model}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"model": {**data, "layers": layers}}))
    return path


def _layer(token: dict[str, Any], channel: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"token_mixer": token, "channel_mixer": channel}


SPECS: dict[str, tuple[str, list[dict[str, Any]], dict[str, Any]]] = {
    "mamba": ("MambaForCausalLM", [_layer({"kind": "mamba", "d_state": 4, "dt_rank": 3})] * 2, {}),
    "mamba2": ("Mamba2ForCausalLM", [_layer(M2)] * 2, {"tie_embeddings": False}),
    # every Llama config detail off its default: bias flags, head_dim, eps, theta, untied head
    "llama": (
        "LlamaForCausalLM",
        [_layer({**ATTN, "head_dim": 6, "bias": True}, {**SWIGLU, "bias": True})] * 2,
        {"norm_eps": 1e-6, "tie_embeddings": False},
    ),
    "llama-tied": ("LlamaForCausalLM", [_layer(ATTN, SWIGLU)] * 2, {}),
    "bamba": ("BambaForCausalLM", [_layer(M2, SWIGLU), _layer(ATTN, SWIGLU)], {}),
}


def _tokens() -> torch.Tensor:
    return torch.randint(VOCAB, (2, 19), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", sorted(SPECS))
def test_export_loads_in_transformers_with_equal_logits(tmp_path: Path, family: str) -> None:
    architecture, layers, model = SPECS[family]
    spec = _spec(tmp_path, layers, **model)
    result = export_hf(spec, tmp_path / "hf", seed=3)
    assert result.architecture == architecture
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == sorted(result.files)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == architecture
    ours = build_model(compile_spec(spec), seed=3).double().eval()  # same draws as the export
    with torch.no_grad():
        assert_close(hf(_tokens()).logits, ours(_tokens()), dtype=torch.float32)


def _hf_configs() -> dict[str, Any]:
    common = {"vocab_size": VOCAB, "hidden_size": D, "num_hidden_layers": 2}
    rope = {"rope_type": "default", "rope_theta": 20000.0}
    return {
        "mamba": transformers.MambaConfig(**common, state_size=4, time_step_rank=3),
        "mamba2": transformers.Mamba2Config(
            **common, num_heads=4, head_dim=16, state_size=8, n_groups=2, chunk_size=16
        ),
        "llama": transformers.LlamaConfig(
            **common,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=40,
            attention_bias=True,
            rms_norm_eps=1e-6,
            max_position_embeddings=64,
            rope_parameters=rope,
        ),
        "bamba": transformers.BambaConfig(
            **common,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=40,
            mamba_n_heads=4,
            mamba_d_head=16,
            mamba_d_state=8,
            mamba_n_groups=1,
            attn_layer_indices=[1],
            rope_parameters={**rope, "partial_rotary_factor": 1.0},
        ),
    }


@pytest.mark.parametrize("family", ["mamba", "mamba2", "llama", "bamba"])
def test_import_of_a_transformers_model_gives_its_logits(tmp_path: Path, family: str) -> None:
    torch.manual_seed(0)
    config = _hf_configs()[family]
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    result = import_hf(tmp_path / "hf", tmp_path / "model")
    assert result.architecture == type(hf).__name__
    ours = load_trained(tmp_path / "model").double()
    with torch.no_grad():
        assert_close(hf(_tokens()).logits, ours(_tokens()), dtype=torch.float32)


def test_cli_round_trip_keeps_every_tensor(tmp_path: Path) -> None:
    _, layers, model = SPECS["bamba"]
    spec = _spec(tmp_path, layers, **model)
    build(spec, tmp_path / "built", seed=5)
    done = archgen("export", str(tmp_path / "built"), "--format", "hf", "-o", str(tmp_path / "hf"))
    assert done.returncode == 0, done.stderr
    assert "BambaForCausalLM" in done.stdout
    done = archgen("import", str(tmp_path / "hf"), "-o", str(tmp_path / "back"))
    assert done.returncode == 0, done.stderr
    before, after = load_trained(tmp_path / "built"), load_trained(tmp_path / "back")
    assert after.state_dict().keys() == before.state_dict().keys()
    for name, tensor in before.state_dict().items():
        assert torch.equal(after.state_dict()[name], tensor), name


def test_cli_refuses_a_mamba_model_with_channel_mixers(tmp_path: Path) -> None:
    done = archgen("export", "examples/hybrid.yaml", "--format", "hf", "-o", str(tmp_path / "o"))
    assert done.returncode == 2
    assert "layers.0.channel_mixer (swiglu)" in done.stderr
    assert "channel_mixer: null" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("layers", "model", "named"),
    [
        ([_layer(ATTN, {"kind": "mlp"})], {}, "layers.0.channel_mixer (mlp)"),
        ([_layer(ATTN, SWIGLU)], {"norm": "layernorm"}, "layers.0.token_norm (layernorm)"),
        ([_layer({**ATTN, "rope_theta": None}, SWIGLU)], {}, "layers.0.token_mixer.rope_theta"),
        ([_layer(ATTN, SWIGLU), _layer({**ATTN, "kv_heads": 4}, SWIGLU)], {}, ".kv_heads"),
        ([_layer({**ATTN, "kind": "swa"}, SWIGLU)], {}, "layers.0.token_mixer (swa)"),
        ([_layer(M2)], {"norm_eps": 1e-6}, "model.norm_eps"),
        ([_layer(M2, SWIGLU), _layer(M2)], {}, "layers.1.token_mixer"),
        ([_layer(M2, SWIGLU), _layer({**ATTN, "head_dim": 6}, SWIGLU)], {}, ".head_dim"),
    ],
)
def test_what_does_not_map_is_named(
    tmp_path: Path, layers: list[dict[str, Any]], model: dict[str, Any], named: str
) -> None:
    with pytest.raises(ArchgenError, match="cannot export to Hugging Face") as info:
        hf_layout(compile_spec(_spec(tmp_path, layers, **model)))
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("family", "change", "named"),
    [
        ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4}}, "rope_type"),
        ("llama", {"hidden_act": "gelu"}, "hidden_act"),
        ("mamba2", {"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
        ("mamba2", {"time_step_limit": [0.0, 0.5]}, "time_step_limit"),
    ],
)
def test_config_that_does_not_map_is_named(family: str, change: dict[str, Any], named: str) -> None:
    cfg = {**_hf_configs()[family].to_dict(), **change}
    with pytest.raises(ArchgenError, match=f"cannot import: config.json {named}"):
        spec_from_hf_config(cfg, name="x")


def test_bamba_with_its_default_half_rotary_heads_is_refused() -> None:
    config = transformers.BambaConfig(
        hidden_size=D, num_attention_heads=4, mamba_n_heads=4, attn_layer_indices=[1]
    )
    with pytest.raises(ArchgenError, match=r"partial_rotary_factor = 0\.5: archgen's attention"):
        spec_from_hf_config(config.to_dict(), name="x")


def test_bamba_without_attention_layers_imports(tmp_path: Path) -> None:
    # Its config keeps Bamba's default half-rotary heads, unused without attention layers.
    # transformers' own forward needs use_cache=False then (its cache wants an attention layer),
    # which is why archgen refuses to export such a model.
    torch.manual_seed(0)
    config = _hf_configs()["bamba"]
    config.attn_layer_indices = []
    config.rope_parameters["partial_rotary_factor"] = 0.5
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "model")
    ours = load_trained(tmp_path / "model").double()
    with torch.no_grad():
        expected = hf(_tokens(), use_cache=False).logits
        assert_close(expected, ours(_tokens()), dtype=torch.float32)
    with pytest.raises(ArchgenError, match="needs an attention layer too"):
        export_hf(tmp_path / "model", tmp_path / "again")
