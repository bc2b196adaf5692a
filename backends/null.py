"""The null backend: lowers (checks support), runs nothing, predicts latency from the IR.

For fast tests of search logic and for "what would this cost" questions on any machine. Its
``measure`` is a cost model, not a measurement (``Measurement.predicted`` is True and the meta
says so): a per-node roofline ``max(FLOPs / peak, bytes / bandwidth) + dispatch overhead``,
using the IR's closed-form FLOPs and bytes (parameters read once + activations written).
The default peaks are this project's 2-core Xeon (research/perf-anchors.md §1: fp32 GEMM
~445 GFLOP/s, bf16 ~2.5 TFLOP/s, DRAM ~28 GB/s); pass another :class:`Roofline` for other
targets. It ignores cache effects, fusion and attention's memory-bound softmax at small L, so
use it for ranking, not for absolute numbers.

>>> artifact = NullBackend().lower(graph, LowerOptions())  # doctest: +SKIP
>>> artifact.measure(tokens).median_s  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from archgen.backends.base import (
    Artifact,
    ArtifactMeta,
    Backend,
    LowerOptions,
    Measurement,
    NodeImpl,
    check_lowerable,
    cpu_name,
    library_versions,
)
from archgen.errors import ArchgenError
from archgen.ir.graph import Graph, Node
from archgen.ir.ops import OP_REGISTRY
from archgen.ir.types import DTYPE_BYTES

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Roofline:
    """Peak compute (FLOP/s) per dtype, memory bandwidth (bytes/s) and a fixed per-node cost."""

    peak_flops_fp32: float = 445e9
    peak_flops_bf16: float = 2.5e12
    bandwidth: float = 28e9
    node_overhead_s: float = 5e-6  # eager dispatch of one small module, order of magnitude

    def peak(self, dtype: str) -> float:
        if dtype in ("bfloat16", "float16"):
            return self.peak_flops_bf16
        return self.peak_flops_fp32 / (2 if dtype == "float64" else 1)


def predict_node(node: Node, batch: int, seq_len: int, dtype: str, roof: Roofline) -> float:
    """Roofline seconds of one node on ``[batch, seq_len]`` inputs."""
    op, width = node.op, DTYPE_BYTES[dtype]
    flops = batch * op.flops(seq_len)
    moved = op.params() * width + batch * op.activation_bytes(seq_len, width)
    return max(flops / roof.peak(dtype), moved / roof.bandwidth) + roof.node_overhead_s


class NullArtifact(Artifact):
    def __init__(self, graph: Graph, meta: ArtifactMeta, roofline: Roofline) -> None:
        self.graph, self.meta, self.roofline = graph, meta, roofline

    def predict(self, batch: int, seq_len: int) -> dict[str, float]:
        """Predicted seconds per node."""
        d = self.meta.options.dtype
        return {n.name: predict_node(n, batch, seq_len, d, self.roofline) for n in self.graph}

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        raise ArchgenError("the null backend runs nothing (it only checks and predicts)")

    def boundaries(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        raise ArchgenError("the null backend runs nothing: there is nothing to validate")

    def measure(self, tokens: torch.Tensor, warmup: int = 3, repeats: int = 20) -> Measurement:
        batch, seq_len = int(tokens.shape[0]), int(tokens.shape[1])
        total = sum(self.predict(batch, seq_len).values())
        return Measurement(
            (total,), batch, seq_len, 0, f"predicted for {cpu_name()}", library_versions(), True
        )

    def save(self, path: str | Path) -> list[str]:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        data = {**self.meta.to_json(), "roofline": asdict(self.roofline)}
        (folder / "artifact.json").write_text(json.dumps(data, indent=2) + "\n")
        return ["artifact.json"]


class NullBackend(Backend):
    name: ClassVar[str] = "null"
    dtypes: ClassVar[frozenset[str]] = frozenset({"float32", "float64", "bfloat16", "float16"})
    summary: ClassVar[str] = "checks support, runs nothing, predicts latency with a roofline"

    def __init__(self, roofline: Roofline | None = None) -> None:
        self.roofline = roofline or Roofline()

    def is_available(self) -> tuple[bool, str]:
        return True, "ok"

    def supports(self, node: Node) -> tuple[bool, str]:
        # Registered kinds declare closed-form costs; anything else has no cost model.
        if OP_REGISTRY.get(node.op.kind) is type(node.op):
            return True, "ok"
        return False, f"node kind {node.op.kind!r} is not registered: no cost model"

    def lower(self, graph: Graph, options: LowerOptions) -> NullArtifact:
        options = options.resolve(graph)
        ready = check_lowerable(self, graph, options)
        graph = ready.graph
        meta = ArtifactMeta(self.name, options, extra={"roofline": asdict(self.roofline)})
        meta.notes.extend(ready.notes)
        for node in graph.nodes:
            meta.nodes[node.name] = NodeImpl("roofline cost model (not executed)")
        meta.notes.append(
            "latency is PREDICTED by a roofline cost model from IR FLOPs/bytes, not measured"
        )
        return NullArtifact(graph, meta, self.roofline)

    def load(self, path: str | Path, graph: Graph, options: LowerOptions) -> NullArtifact:
        file = Path(path) / "artifact.json"
        if not file.is_file():
            raise ArchgenError(f"{path}: no artifact.json")
        roofline = Roofline(**json.loads(file.read_text())["roofline"])
        return NullBackend(roofline).lower(graph, options)
