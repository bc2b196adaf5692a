"""Node kind -> torch module: the one place that maps IR ops to implementations.

A module's constructor takes the op's dataclass fields as keyword arguments (plus ``device`` and
``dtype``), so the spec's attribute names are the module's argument names. Modules of the
sequence-mixer zoo are imported on first use, keeping ``import archgen.mixers`` light.
"""

from __future__ import annotations

import dataclasses
import importlib

import torch
from torch import nn

from archgen.ir import ops

# op class -> "module:ClassName" of its implementation
IMPLEMENTATIONS: dict[type[ops.Op], str] = {
    ops.Attention: "archgen.mixers.attention:Attention",
    ops.SlidingWindowAttention: "archgen.mixers.swa:SlidingWindowAttention",
    ops.CheckpointAttention: "archgen.mixers.checkpoint_attention:CheckpointAttention",
    ops.DenseMixer: "archgen.mixers.dense:DenseMixer",
    ops.Mamba: "archgen.mixers.mamba:Mamba",
    ops.Mamba2: "archgen.mixers.mamba2:Mamba2",
    ops.MLP: "archgen.mixers.channel:MLP",
    ops.SwiGLU: "archgen.mixers.channel:SwiGLU",
    ops.PatchEmbed: "archgen.mixers.vision:PatchEmbed",
    ops.PatchMerge: "archgen.mixers.vision:PatchMerge",
    ops.ClassifierHead: "archgen.mixers.vision:ClassifierHead",
    ops.ConvGLU: "archgen.mixers.vision:ConvGLU",
    ops.RaftTokenMixer: "archgen.mixers.vision:RaftTokenMixer",
    ops.DynamicSpectrumMixer: "archgen.mixers.spectrum:DynamicSpectrumMixer",
    ops.AggregatedAttention: "archgen.mixers.transnext:AggregatedAttention",
    ops.CosineAttention: "archgen.mixers.transnext:CosineAttention",
    ops.CrossScaleEmbed: "archgen.mixers.raftmlp:CrossScaleEmbed",
    ops.InceptionMixer: "archgen.mixers.iformer:InceptionMixer",
    ops.LayerScaleMLP: "archgen.mixers.iformer:LayerScaleMLP",
    ops.ConvBNEmbed: "archgen.mixers.iformer:ConvBNEmbed",
    ops.HSMSSD: "archgen.mixers.efficientvim:HSMSSD",
    ops.DepthwiseConv: "archgen.mixers.efficientvim:DepthwiseConv",
    ops.BatchNormFFN: "archgen.mixers.efficientvim:BatchNormFFN",
    ops.ConvexResidual: "archgen.mixers.efficientvim:ConvexResidual",
    ops.ConvStem: "archgen.mixers.efficientvim_net:ConvStem",
    ops.EfficientViMMerge: "archgen.mixers.efficientvim_net:EfficientViMMerge",
    ops.HiddenStateFusionHead: "archgen.mixers.efficientvim_net:HiddenStateFusionHead",
    ops.SelectiveTokenMixer: "archgen.mixers.vim2:SelectiveTokenMixer",
    ops.SelectiveChannelMixer: "archgen.mixers.vim2:SelectiveChannelMixer",
    ops.WeightedSum: "archgen.mixers.vim2:WeightedSum",
    ops.AddNorm: "archgen.mixers.add_norm:AddNorm",  # fused by the fuse_kernels pass
}


def implementation_class(op_class: type[ops.Op]) -> type[nn.Module]:
    try:
        target = IMPLEMENTATIONS[op_class]
    except KeyError:
        raise NotImplementedError(
            f"no torch implementation registered for {op_class.kind!r}"
        ) from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def has_implementation(op_class: type[ops.Op]) -> tuple[bool, str]:
    """Whether the implementation imports here, and why not when it does not."""
    try:
        implementation_class(op_class)
    except (NotImplementedError, ImportError, AttributeError) as exc:
        return False, str(exc)
    return True, "ok"


def build_module(
    op: ops.Op, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> nn.Module:
    """Instantiate the torch module of a (resolved) mixer node."""
    if isinstance(op, ops.RMSNorm | ops.LayerNorm):
        from archgen.mixers.channel import LayerNorm, RMSNorm

        norm_cls = RMSNorm if isinstance(op, ops.RMSNorm) else LayerNorm
        return norm_cls(op.d_model, eps=op.eps, device=device, dtype=dtype)
    resolved = op.resolved()
    kwargs = {f.name: getattr(resolved, f.name) for f in dataclasses.fields(resolved)}
    d_model = kwargs.pop("d_model")
    return implementation_class(type(op))(d_model, **kwargs, device=device, dtype=dtype)
