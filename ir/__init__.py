"""archgen's IR: a small typed graph of mixer nodes. Pure Python -- this package never imports
torch (a test enforces it), so specs can be checked and costed without a deep-learning stack."""

from archgen.ir.cost import (
    NodeCost,
    block_costs,
    graph_cost,
    node_cost,
    node_tokens,
    parameter_count,
)
from archgen.ir.graph import TOKENS, Graph, GraphBuilder, ModelInfo, Node
from archgen.ir.ops import OP_REGISTRY, Op, Role
from archgen.ir.printer import print_graph
from archgen.ir.types import TensorType

__all__ = [
    "OP_REGISTRY",
    "TOKENS",
    "Graph",
    "GraphBuilder",
    "ModelInfo",
    "Node",
    "NodeCost",
    "Op",
    "Role",
    "TensorType",
    "block_costs",
    "graph_cost",
    "node_cost",
    "node_tokens",
    "parameter_count",
    "print_graph",
]
