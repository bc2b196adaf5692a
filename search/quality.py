"""Quality proxies for search, cheapest first (the fidelity ladder of DESIGN.md §6).

* :class:`AnalyticQuality` -- no training: how many past tokens' worth of memory each token mixer
  keeps at the workload's length (decode state / KV bytes per token of width), log-scaled and
  averaged over layers. Full attention remembers everything; SWA its window; SCOUT L/s
  checkpoints; Mamba its fixed state. It ranks mixers by recall capacity, nothing more.
* :class:`TableQuality` -- a per-(layer, choice) score table, e.g. blockwise local distillation
  losses from ``archgen.train.distill``: quality is minus the mean normalised loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from archgen.ir.graph import Graph
from archgen.ir.ops import Role


@dataclass(frozen=True)
class AnalyticQuality:
    seq_len: int
    name: str = "analytic"

    def __call__(self, graph: Graph) -> float:
        d = graph.model.d_model
        per_token = 2 * d * 4  # bytes of one token's K and V at full width, float32
        scores = []
        for node in graph.nodes_with_role(Role.TOKEN_MIXER):
            memory_tokens = node.op.state_bytes(self.seq_len, 4) / per_token
            scores.append(math.log2(1.0 + memory_tokens))
        return sum(scores) / max(1, len(scores))


@dataclass(frozen=True)
class TableQuality:
    """``scores[(slot node, choice label)]``: lower is better (a loss); unknown pairs raise."""

    scores: Mapping[tuple[str, str], float]
    name: str = "blockwise"

    def score(self, candidate: Mapping[str, str]) -> float:
        losses = [self.scores[(node, label)] for node, label in candidate.items()]
        return -sum(losses) / max(1, len(losses))
