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
from archgen.ir.ops.fused import AddNorm
from archgen.ir.ops.lm import Embedding, LMHead, ResidualAdd
from archgen.ir.ops.norms import LayerNorm, RMSNorm
from archgen.ir.ops.ssm import Mamba, Mamba2
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
    "IMAGE_TASK",
    "MLP",
    "OP_REGISTRY",
    "AddNorm",
    "Attention",
    "CheckpointAttention",
    "ClassifierHead",
    "Constraint",
    "ConvGLU",
    "DenseMixer",
    "DynamicSpectrumMixer",
    "Embedding",
    "LMHead",
    "LayerNorm",
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
