"""Hugging Face transformers interop: which archgen models are which transformers models.

This module is the whole mapping, in both directions, and imports no torch:

* :func:`hf_layout` reads a compiled graph and returns the transformers class, its
  ``config.json`` and the module renames (archgen module path -> transformers module path), or
  raises :class:`~archgen.errors.ArchgenError` naming the first node or attribute that has no
  counterpart;
* :func:`spec_from_hf_config` reads a transformers config and returns archgen's ``model:``
  section, or raises naming the config attribute that archgen cannot represent.

The writing and reading of folders (with the numerics check against transformers) is
:mod:`archgen.hf_io`. Parameter names inside a mixer need no rename: archgen's Mamba and Mamba-2
use mamba-ssm's names, attention and SwiGLU use Llama's, exactly as transformers does.

What maps (every layer a pre-norm residual block with RMSNorm; one value per config attribute,
so every layer's mixer must have the same attributes):

==========================  ==========================================================
transformers class          archgen layers
==========================  ==========================================================
``MambaForCausalLM``        ``token_mixer: mamba``, ``channel_mixer: null``
``Mamba2ForCausalLM``       ``token_mixer: mamba2``, ``channel_mixer: null``; norm_eps 1e-5
``LlamaForCausalLM``        ``token_mixer: attention`` (RoPE), ``channel_mixer: swiglu``
``BambaForCausalLM``        ``mamba2`` and ``attention`` layers (at least one), each with
                            ``swiglu``; attention head_dim = d_model / heads; norm_eps 1e-5
==========================  ==========================================================

transformers' Mamba and Mamba-2 blocks are ``x + mixer(norm(x))`` with no MLP, so an archgen
Mamba model maps only without channel mixers (``examples/mamba.yaml``, ``examples/mamba2.yaml``).
Mamba-2's gated norm inside the mixer has eps 1e-5 in archgen and the config's one eps in
transformers, hence the norm_eps condition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from archgen.errors import ArchgenError
from archgen.ir import ops
from archgen.ir.graph import TOKENS, Graph, Node

MAMBA2_GATED_NORM_EPS = 1e-5  # archgen.mixers.mamba2.Mamba2(norm_eps=...) default, not an attr
HINT = "README.md, section 'Hugging Face', lists what maps"


@dataclass(frozen=True)
class HFLayout:
    """How one archgen graph is laid out as a transformers model."""

    architecture: str  # e.g. "MambaForCausalLM"
    config: dict[str, Any]  # config.json, every field that changes the math written out
    modules: dict[str, str]  # archgen module path -> transformers module path
    tied: bool

    def hf_name(self, name: str) -> str:
        """The transformers name of archgen tensor ``name`` (``layers.0.token_mixer.D``)."""
        module, _, param = name.rpartition(".")
        while module and module not in self.modules:  # a tensor of a submodule (q_proj.weight)
            module, _, sub = module.rpartition(".")
            param = f"{sub}.{param}"
        if not module:
            raise ArchgenError(f"{name}: no transformers name for this tensor", hint=HINT)
        return f"{self.modules[module]}.{param}"


@dataclass(frozen=True)
class _Block:
    """One layer: its token branch and, if any, its channel branch (norm node, mixer node)."""

    token_norm: Node
    token: Node
    channel_norm: Node | None
    channel: Node | None


def _refuse(node: Node | str, why: str) -> ArchgenError:
    where = node if isinstance(node, str) else f"{node.name} ({node.op.kind})"
    return ArchgenError(f"cannot export to Hugging Face: {where}: {why}", hint=HINT)


def _walk(graph: Graph) -> tuple[Node, list[_Block], Node, Node]:
    """(embedding, blocks, final norm, head) of a plain pre-norm residual LM, checking the
    wiring node by node: anything a rewrite added (fused nodes, taps, dense connections) is
    named as the first node that does not fit."""
    nodes = list(graph.nodes)
    if not nodes or not isinstance(nodes[0].op, ops.Embedding) or nodes[0].inputs != (TOKENS,):
        raise _refuse(nodes[0] if nodes else "graph", "expected the token embedding first")
    embedding, stream, i = nodes[0], nodes[0].output, 1
    blocks: list[_Block] = []
    branches: list[tuple[Node, Node]] = []
    while i + 1 < len(nodes) and not isinstance(nodes[i + 1].op, ops.LMHead):
        norm, mixer = nodes[i], nodes[i + 1]
        residual = nodes[i + 2] if i + 2 < len(nodes) else None
        if not isinstance(norm.op, ops.RMSNorm | ops.LayerNorm) or norm.inputs != (stream,):
            raise _refuse(norm, "expected the pre-norm of a residual branch")
        if mixer.op.role not in (ops.Role.TOKEN_MIXER, ops.Role.CHANNEL_MIXER):
            raise _refuse(mixer, "has no transformers counterpart")
        if mixer.inputs != (norm.output,):
            raise _refuse(mixer, f"expected its input to be {norm.name}")
        if (
            residual is None
            or not isinstance(residual.op, ops.ResidualAdd)
            or residual.inputs != (stream, mixer.output)
        ):
            raise _refuse(residual or mixer, "expected the residual add of the branch")
        branches.append((norm, mixer))
        stream, i = residual.output, i + 3
    if i + 1 >= len(nodes) or nodes[i].inputs != (stream,):
        raise _refuse(nodes[min(i, len(nodes) - 1)], "expected the final norm then the LM head")
    final_norm, head = nodes[i], nodes[i + 1]
    if i + 2 != len(nodes) or graph.outputs != (head.output,):
        extra = nodes[i + 2] if i + 2 < len(nodes) else head
        raise _refuse(extra, "expected the LM head to be the only output")
    for k, (norm, mixer) in enumerate(branches):
        if mixer.op.role is ops.Role.CHANNEL_MIXER:
            continue
        nxt = branches[k + 1] if k + 1 < len(branches) else None
        channel = nxt if nxt is not None and nxt[1].op.role is ops.Role.CHANNEL_MIXER else None
        blocks.append(_Block(norm, mixer, *(channel or (None, None))))
    if branches and branches[0][1].op.role is ops.Role.CHANNEL_MIXER:
        raise _refuse(branches[0][1], "a channel mixer without a token mixer before it")
    return embedding, blocks, final_norm, head


def _same(nodes: Sequence[Node], ignore: tuple[str, ...] = ()) -> None:
    """Every node's op equals the first's (transformers' config holds one value per attribute)."""
    first = nodes[0]
    for node in nodes[1:]:
        if type(node.op) is not type(first.op):
            raise _refuse(node, f"differs from {first.name} ({first.op.kind})")
        for key, value in node.op.attributes().items():
            if key not in ignore and value != getattr(first.op, key):
                raise _refuse(
                    f"{node.name}.{key}",
                    f"{value!r} differs from {first.name}'s {getattr(first.op, key)!r} "
                    "(a transformers config holds one value for every layer)",
                )


def _rope(node: Node, attn: ops.Attention, family: str) -> float:
    if attn.rope_theta is None:
        raise _refuse(f"{node.name}.rope_theta", f"null (no RoPE); {family} always applies RoPE")
    return attn.rope_theta


def _attention_fields(node: Node, family: str) -> dict[str, Any]:
    attn = node.op
    assert isinstance(attn, ops.Attention)
    if attn.d_model % attn.heads:
        raise _refuse(
            f"{node.name}.heads",
            f"d_model {attn.d_model} is not a multiple of {attn.heads}, which {family} requires",
        )
    theta = _rope(node, attn, family)
    return {
        "num_attention_heads": attn.heads,
        "num_key_value_heads": attn.kv_heads,
        "attention_bias": attn.bias,
        # both spellings: rope_theta for transformers < 5, rope_parameters from 5 on
        "rope_theta": theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
    }


def _swiglu_fields(nodes: Sequence[Node], family: str) -> dict[str, Any]:
    for node in nodes:
        if not isinstance(node.op, ops.SwiGLU):
            raise _refuse(node, f"{family}'s MLP is SwiGLU (gate/up/down projections)")
    _same(nodes)
    mlp = nodes[0].op
    assert isinstance(mlp, ops.SwiGLU)
    return {"intermediate_size": mlp.hidden, "mlp_bias": mlp.bias, "hidden_act": "silu"}


# Mamba2Config's attribute names -> Bamba's, which are prefixed with mamba_
_BAMBA_MAMBA2 = {
    "num_heads": "n_heads",
    "head_dim": "d_head",
    "state_size": "d_state",
    "n_groups": "n_groups",
    "conv_kernel": "d_conv",
    "expand": "expand",
    "chunk_size": "chunk_size",
    "use_conv_bias": "conv_bias",
    "use_bias": "proj_bias",
}


def _mamba2_key(name: str, bamba: bool) -> str:
    return "mamba_" + _BAMBA_MAMBA2[name] if bamba else name


def _mamba2_fields(node: Node, eps: float, *, bamba: bool = False) -> dict[str, Any]:
    m = node.op
    assert isinstance(m, ops.Mamba2)
    if eps != MAMBA2_GATED_NORM_EPS:
        raise _refuse(
            "model.norm_eps",
            f"{eps} with Mamba-2 layers: transformers uses it inside the Mamba-2 mixer too "
            f"(gated norm), where archgen's eps is {MAMBA2_GATED_NORM_EPS}",
        )
    values = {
        "num_heads": m.expand * m.d_model // m.head_dim,
        "head_dim": m.head_dim,
        "state_size": m.d_state,
        "n_groups": m.ngroups,
        "conv_kernel": m.d_conv,
        "expand": m.expand,
        "chunk_size": m.chunk_size,
        "use_conv_bias": m.conv_bias,
        "use_bias": m.bias,
    }
    # time_step_limit stays at its default (0, inf), i.e. no clamp, as in archgen
    return {_mamba2_key(k, bamba): v for k, v in values.items()}


def _mamba_family(m: ops.Mamba, eps: float) -> dict[str, Any]:
    return {
        "state_size": m.d_state,
        "conv_kernel": m.d_conv,
        "expand": m.expand,
        "time_step_rank": m.dt_rank,
        "use_conv_bias": m.conv_bias,
        "use_bias": m.bias,
        "hidden_act": "silu",
        "layer_norm_epsilon": eps,
        # archgen adds residuals in the model dtype; equal in float32, closer in float64/bf16
        "residual_in_fp32": False,
    }


def _family(blocks: Sequence[_Block], reading: bool) -> str:
    """The transformers class of these layers, or the refusal naming the first that does not
    fit."""
    kinds = [b.token.op.kind for b in blocks]
    for block in blocks:
        if block.token.op.kind not in ("mamba", "mamba2", "attention"):
            raise _refuse(block.token, "no transformers class maps this token mixer")
    first, with_mlp = blocks[0], blocks[0].channel is not None
    for block in blocks:
        if (block.channel is not None) != with_mlp:
            has = "has" if block.channel is not None else "has no"
            raise _refuse(
                block.token,
                f"its layer {has} a channel mixer, {first.token.name}'s "
                f"{'has' if with_mlp else 'has no'} (transformers' classes use one layer shape)",
            )
    if with_mlp and "mamba" in kinds:
        mamba = blocks[kinds.index("mamba")]
        raise _refuse(
            mamba.channel,  # type: ignore[arg-type]
            "no transformers class has Mamba-1 layers with a channel mixer: MambaForCausalLM "
            "blocks are norm + mixer only (every layer `channel_mixer: null`, as "
            "examples/mamba.yaml); the hybrid that maps is BambaForCausalLM: mamba2 and "
            "attention layers, each with a swiglu channel mixer",
        )
    if not with_mlp and "attention" in kinds:
        attn = blocks[kinds.index("attention")]
        raise _refuse(attn.token, "LlamaForCausalLM/BambaForCausalLM need a SwiGLU after it")
    if not with_mlp:
        other = next((b for b in blocks if b.token.op.kind != kinds[0]), None)
        if other is not None:
            raise _refuse(other.token, f"differs from {first.token.name} ({kinds[0]})")
        return "MambaForCausalLM" if kinds[0] == "mamba" else "Mamba2ForCausalLM"
    if "attention" not in kinds and not reading:
        raise _refuse(
            first.token,
            "Mamba-2 layers with a channel mixer map to BambaForCausalLM, which needs an "
            "attention layer too (transformers' Bamba cache fails without one)",
        )
    return "LlamaForCausalLM" if set(kinds) == {"attention"} else "BambaForCausalLM"


def hf_layout(graph: Graph, *, reading: bool = False) -> HFLayout:
    """The transformers model of ``graph``, or an :class:`ArchgenError` naming the first node
    or attribute that does not fit (see the module docstring for what maps). ``reading``: the
    layout of a checkpoint being imported, which may also be a Bamba model without attention
    layers (transformers loads it, but its cache cannot run it: not written by export)."""
    if graph.model.task != "causal-lm":  # its bidirectional mixers are no causal LM's
        raise _refuse(
            "model.task",
            f"the transformers classes here are causal LMs; this is a {graph.model.task}",
        )
    embedding, blocks, final_norm, head = _walk(graph)
    if not blocks:
        raise _refuse("model.layers", "no layers")
    for norm in [b.token_norm for b in blocks] + [final_norm]:
        if not isinstance(norm.op, ops.RMSNorm):
            raise _refuse(norm, "every transformers model here uses RMSNorm, not layernorm")
    assert isinstance(final_norm.op, ops.RMSNorm) and isinstance(head.op, ops.LMHead)
    eps, info, tied = final_norm.op.eps, graph.model, head.op.tied
    tokens = [b.token for b in blocks]
    channels = [b.channel for b in blocks]
    family = _family(blocks, reading)
    first = tokens[0]
    config: dict[str, Any] = {
        "architectures": [family],
        "vocab_size": info.vocab_size,
        "hidden_size": info.d_model,
        "num_hidden_layers": len(blocks),
        "tie_word_embeddings": tied,
        "dtype": "float32",
    }
    if family in ("MambaForCausalLM", "Mamba2ForCausalLM"):
        _same(tokens, ignore=("chunk_size",))
        if family == "MambaForCausalLM":
            assert isinstance(first.op, ops.Mamba)
            config |= {"model_type": "mamba", **_mamba_family(first.op, eps)}
        else:
            config |= {"model_type": "mamba2", **_mamba2_fields(first, eps)}
            config |= {"layer_norm_epsilon": eps, "hidden_act": "silu", "residual_in_fp32": False}
        prefixes = {"embedding": "backbone.embeddings", "norm": "backbone.norm_f"}
        layer, slots = "backbone.layers.{}.", {"token_norm": "norm", "token": "mixer"}
    elif family == "LlamaForCausalLM":
        _same(tokens)
        config |= {"model_type": "llama", **_attention_fields(first, "LlamaForCausalLM")}
        config |= _swiglu_fields(channels, "LlamaForCausalLM")  # type: ignore[arg-type]
        attn = first.op
        assert isinstance(attn, ops.Attention)
        config |= {"head_dim": attn.head_dim, "rms_norm_eps": eps}
        config["max_position_embeddings"] = info.max_seq_len
        prefixes = {"embedding": "model.embed_tokens", "norm": "model.norm"}
        layer = "model.layers.{}."
        slots = {"token_norm": "input_layernorm", "token": "self_attn",
                 "channel_norm": "post_attention_layernorm", "channel": "mlp"}  # fmt: skip
    else:
        config |= _bamba_config(blocks, eps, info.max_seq_len)
        prefixes = {"embedding": "model.embed_tokens", "norm": "model.final_layernorm"}
        layer = "model.layers.{}."
        slots = {"token_norm": "input_layernorm", "token": "{mixer}",
                 "channel_norm": "pre_ff_layernorm", "channel": "feed_forward"}  # fmt: skip
    modules = {
        embedding.weight_path: prefixes["embedding"],
        final_norm.weight_path: prefixes["norm"],
    }
    if not tied:
        modules[head.weight_path] = "lm_head"
    for i, block in enumerate(blocks):
        mixer = "self_attn" if isinstance(block.token.op, ops.Attention) else "mamba"
        for slot, hf in slots.items():
            node = getattr(block, slot)
            modules[node.weight_path] = layer.format(i) + hf.format(mixer=mixer)
    return HFLayout(family, config, modules, tied)


def _bamba_config(blocks: Sequence[_Block], eps: float, max_seq_len: int) -> dict[str, Any]:
    attention = [b.token for b in blocks if isinstance(b.token.op, ops.Attention)]
    mamba = [b.token for b in blocks if isinstance(b.token.op, ops.Mamba2)]
    _same(mamba, ignore=("chunk_size",))
    # Mamba-2 + SwiGLU layers without attention are a Bamba model with no attention layers.
    fields: dict[str, Any] = {"num_attention_heads": 1, "num_key_value_heads": 1}
    if attention:
        _same(attention)
        attn = attention[0].op
        assert isinstance(attn, ops.Attention)
        if attn.head_dim != attn.d_model // attn.heads:
            raise _refuse(
                f"{attention[0].name}.head_dim",
                f"{attn.head_dim}: Bamba's attention head width is d_model / heads "
                f"= {attn.d_model // attn.heads}",
            )
        fields = _attention_fields(attention[0], "BambaForCausalLM")
        # Bamba rotates half of each head unless told otherwise; archgen rotates the whole head.
        fields["rope_parameters"]["partial_rotary_factor"] = 1.0
    return {
        "model_type": "bamba",
        **fields,
        **_swiglu_fields([b.channel for b in blocks], "BambaForCausalLM"),  # type: ignore[misc]
        **_mamba2_fields(mamba[0], eps, bamba=True),
        "attn_layer_indices": [i for i, b in enumerate(blocks) if b.token in attention],
        "rms_norm_eps": eps,
        "max_position_embeddings": max_seq_len,
    }


# -- transformers config -> archgen spec -------------------------------------------------------
def _refuse_config(key: str, value: Any, why: str) -> ArchgenError:
    return ArchgenError(f"cannot import: config.json {key} = {value!r}: {why}", hint=HINT)


def _check(cfg: Mapping[str, Any], key: str, ok: Callable[[Any], bool], why: str) -> None:
    if key in cfg and not ok(cfg[key]):
        raise _refuse_config(key, cfg[key], why)


def _rope_theta(cfg: Mapping[str, Any]) -> float:
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise _refuse_config("rope_type", kind, "archgen implements plain RoPE only")
    partial = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise _refuse_config(
            "partial_rotary_factor", partial, "archgen's attention rotates the whole head"
        )
    theta = rope.get("rope_theta", cfg.get("rope_theta"))
    if theta is None:
        raise _refuse_config("rope_theta", None, "no RoPE base given")
    return float(theta)


def _int(cfg: Mapping[str, Any], key: str) -> int:
    if key not in cfg:
        raise _refuse_config(key, None, "missing: archgen needs it")
    value = cfg[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _refuse_config(key, value, "archgen needs an integer here")
    return value


def _mamba2_spec(cfg: Mapping[str, Any], *, bamba: bool) -> dict[str, Any]:
    def key(name: str) -> str:
        return _mamba2_key(name, bamba)

    limit = cfg.get("time_step_limit") or (0.0, math.inf)
    if tuple(float(x) for x in limit) != (0.0, math.inf):
        raise _refuse_config("time_step_limit", limit, "archgen's Mamba-2 never clamps dt")
    return {
        "kind": "mamba2",
        "d_state": _int(cfg, key("state_size")),
        "d_conv": _int(cfg, key("conv_kernel")),
        "expand": _int(cfg, key("expand")),
        "head_dim": _int(cfg, key("head_dim")),
        "ngroups": _int(cfg, key("n_groups")),
        "chunk_size": _int(cfg, key("chunk_size")),
        "conv_bias": bool(cfg[key("use_conv_bias")]),
        "bias": bool(cfg[key("use_bias")]),
    }


def _attention_spec(cfg: Mapping[str, Any]) -> dict[str, Any]:
    heads = _int(cfg, "num_attention_heads")
    return {
        "kind": "attention",
        "heads": heads,
        "kv_heads": _int(cfg, "num_key_value_heads") if cfg.get("num_key_value_heads") else heads,
        "head_dim": _int(cfg, "head_dim") if cfg.get("head_dim") else cfg["hidden_size"] // heads,
        "rope_theta": _rope_theta(cfg),
        "bias": bool(cfg.get("attention_bias", False)),
    }


def spec_from_hf_config(
    cfg: Mapping[str, Any], *, name: str, max_seq_len: int | None = None
) -> dict[str, Any]:
    """archgen's ``model:`` section for a transformers config (``config.to_dict()``: every
    field, defaults included), or an :class:`ArchgenError` naming the attribute that does not
    map. ``max_seq_len`` defaults to ``max_position_embeddings`` (Mamba's configs have none:
    4096)."""
    kind = cfg.get("model_type")
    if kind not in ("mamba", "mamba2", "llama", "bamba"):  # before any other field is read
        raise _refuse_config(
            "model_type", kind, "archgen imports mamba, mamba2, llama and bamba models"
        )
    _check(cfg, "hidden_act", lambda v: v == "silu", "archgen's mixers use SiLU")
    n_layers = _int(cfg, "num_hidden_layers")
    mixers: list[tuple[dict[str, Any], dict[str, Any] | None]]
    if kind == "mamba":
        eps = cfg["layer_norm_epsilon"]
        token = {"kind": "mamba", "d_state": _int(cfg, "state_size"),
                 "d_conv": _int(cfg, "conv_kernel"), "expand": _int(cfg, "expand"),
                 "dt_rank": _int(cfg, "time_step_rank"), "conv_bias": bool(cfg["use_conv_bias"]),
                 "bias": bool(cfg["use_bias"])}  # fmt: skip
        mixers = [(token, None)] * n_layers
    elif kind == "mamba2":
        eps = cfg["layer_norm_epsilon"]
        mixers = [(_mamba2_spec(cfg, bamba=False), None)] * n_layers
    else:  # llama, bamba
        eps = cfg["rms_norm_eps"]
        _check(cfg, "pretraining_tp", lambda v: v in (None, 1), "tensor-parallel slicing")
        mlp = {"kind": "swiglu", "hidden": _int(cfg, "intermediate_size"),
               "bias": bool(cfg.get("mlp_bias", False))}  # fmt: skip
        if kind == "llama":
            mixers = [(_attention_spec(cfg), mlp)] * n_layers
        else:
            attn_at = set(cfg.get("attn_layer_indices") or ())
            # without attention layers, Bamba's attention (and rope) settings are unused
            attn = _attention_spec(cfg) if attn_at else {}
            mamba = _mamba2_spec(cfg, bamba=True)
            mixers = [(attn if i in attn_at else mamba, mlp) for i in range(n_layers)]
    if kind in ("mamba2", "bamba") and eps != MAMBA2_GATED_NORM_EPS:
        raise _refuse_config(
            "layer_norm_epsilon" if kind == "mamba2" else "rms_norm_eps",
            eps,
            f"it is also the Mamba-2 gated-norm eps, which is {MAMBA2_GATED_NORM_EPS} in archgen",
        )
    layers = [{"token_mixer": t, "channel_mixer": c} for t, c in mixers]
    if all(layer == layers[0] for layer in layers):
        layers = [{"repeat": n_layers, "layers": [layers[0]]}]
    return {
        "name": name,
        "vocab_size": _int(cfg, "vocab_size"),
        "d_model": _int(cfg, "hidden_size"),
        "max_seq_len": max_seq_len or cfg.get("max_position_embeddings") or 4096,
        "norm": "rmsnorm",
        "norm_eps": float(eps),
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "layers": layers,
    }
