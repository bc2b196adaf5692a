"""Node kinds of the IR. Importing this package registers every kind in ``OP_REGISTRY``."""

from archgen.ir.ops.attention import (
    Attention,
    CheckpointAttention,
    DenseMixer,
    SlidingWindowAttention,
)
from archgen.ir.ops.base import (
    BIDIRECTIONAL_FORMS,
    OP_REGISTRY,
    Constraint,
    Op,
    Role,
    Trait,
    causality_problem,
    ops_with_role,
)
from archgen.ir.ops.channel import MLP, SwiGLU
from archgen.ir.ops.lm import Embedding, LMHead, ResidualAdd
from archgen.ir.ops.norms import LayerNorm, RMSNorm
from archgen.ir.ops.ssm import Mamba, Mamba2

__all__ = [
    "BIDIRECTIONAL_FORMS",
    "MLP",
    "OP_REGISTRY",
    "Attention",
    "CheckpointAttention",
    "Constraint",
    "DenseMixer",
    "Embedding",
    "LMHead",
    "LayerNorm",
    "Mamba",
    "Mamba2",
    "Op",
    "RMSNorm",
    "ResidualAdd",
    "Role",
    "SlidingWindowAttention",
    "SwiGLU",
    "Trait",
    "causality_problem",
    "ops_with_role",
]
