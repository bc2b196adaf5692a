"""Node kinds of the IR. Importing this package registers every kind in ``OP_REGISTRY``."""

from archgen.ir.ops.attention import (
    Attention,
    CheckpointAttention,
    DenseMixer,
    SlidingWindowAttention,
)
from archgen.ir.ops.base import (
    BIDIRECTIONAL_FORMS,
    IMAGE_TASK,
    OP_REGISTRY,
    Constraint,
    Op,
    Role,
    Trait,
    causality_problem,
    layout_problem,
    ops_with_role,
)
from archgen.ir.ops.channel import MLP, SwiGLU
from archgen.ir.ops.efficientvim import HSMSSD, BatchNormFFN, ConvexResidual, DepthwiseConv
from archgen.ir.ops.efficientvim_net import ConvStem, EfficientViMMerge, HiddenStateFusionHead
from archgen.ir.ops.fused import AddNorm
from archgen.ir.ops.iformer import ConvBNEmbed, InceptionMixer, LayerScaleMLP
from archgen.ir.ops.lm import Embedding, LMHead, ResidualAdd
from archgen.ir.ops.norms import LayerNorm, RMSNorm
from archgen.ir.ops.raftmlp import CrossScaleEmbed
from archgen.ir.ops.ssm import Mamba, Mamba2
from archgen.ir.ops.transnext import AggregatedAttention, CosineAttention
from archgen.ir.ops.vim2 import SelectiveChannelMixer, SelectiveTokenMixer, WeightedSum
from archgen.ir.ops.vision import (
    ClassifierHead,
    ConvGLU,
    DynamicSpectrumMixer,
    PatchEmbed,
    PatchMerge,
    RaftTokenMixer,
)

__all__ = [
    "BIDIRECTIONAL_FORMS",
    "HSMSSD",
    "IMAGE_TASK",
    "MLP",
    "OP_REGISTRY",
    "AddNorm",
    "AggregatedAttention",
    "Attention",
    "BatchNormFFN",
    "CheckpointAttention",
    "ClassifierHead",
    "Constraint",
    "ConvBNEmbed",
    "ConvGLU",
    "ConvStem",
    "ConvexResidual",
    "CosineAttention",
    "CrossScaleEmbed",
    "DenseMixer",
    "DepthwiseConv",
    "DynamicSpectrumMixer",
    "EfficientViMMerge",
    "Embedding",
    "HiddenStateFusionHead",
    "InceptionMixer",
    "LMHead",
    "LayerNorm",
    "LayerScaleMLP",
    "Mamba",
    "Mamba2",
    "Op",
    "PatchEmbed",
    "PatchMerge",
    "RMSNorm",
    "RaftTokenMixer",
    "ResidualAdd",
    "Role",
    "SelectiveChannelMixer",
    "SelectiveTokenMixer",
    "SlidingWindowAttention",
    "SwiGLU",
    "Trait",
    "WeightedSum",
    "causality_problem",
    "layout_problem",
    "ops_with_role",
]
