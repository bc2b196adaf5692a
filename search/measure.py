"""Measuring candidates on the target through the backend protocol.

Whole models go through ``Backend.lower(...).measure``. A block is measured the same way, as the
difference between a graph holding only that block (embedding -> block -> head) and the bare
*stem* (embedding -> head): so block latencies come from the same backend, threads and dtype as
whole-model latencies, whatever the backend (eager, compile, onnxruntime, TensorRT).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import replace

import torch

from archgen.backends.base import LowerOptions, device_name, get_backend, library_versions
from archgen.errors import ArchgenError, UnavailableError
from archgen.ir.graph import TOKENS, Graph, Node
from archgen.search.latency import Workload


def stem_graph(graph: Graph) -> Graph:
    """``graph`` without its blocks: embedding -> final norm -> head."""
    embed = next(n.name for n in graph.nodes if n.block is None)
    nodes = [n for n in graph.nodes if n.block is None]
    defined = {n.name for n in nodes}
    return graph.with_nodes(tuple(_rewire(n, defined, embed) for n in nodes))


def block_graph(graph: Graph, block: str) -> Graph:
    """``graph`` with only ``block`` between the embedding and the head."""
    embed = next(n.name for n in graph.nodes if n.block is None)
    inner = [n for n in graph.nodes if n.block == block]
    defined = {n.name for n in graph.nodes if n.block in (None, block)} | {TOKENS}
    out: list[Node] = []
    for n in graph.nodes:
        if n.block is None:
            out.append(n if n.name == embed else _rewire(n, defined, inner[-1].name))
        elif n.block == block:
            out.append(_rewire(n, defined, embed))
    return graph.with_nodes(tuple(out))


def _rewire(node: Node, defined: set[str], replacement: str) -> Node:
    """Point every input of ``node`` that is not in ``defined`` at ``replacement``."""
    if node.inputs == (TOKENS,):
        return node
    inputs = tuple(i if i in defined else replacement for i in node.inputs)
    return replace(node, inputs=inputs)


BLOCK_REPEAT_FACTOR = 10


class Measurer:
    def __init__(self, workload: Workload, *, warmup: int = 3) -> None:
        self.workload = workload
        self.warmup = warmup
        self.backend = get_backend(workload.backend)
        ok, why = self.backend.is_available()
        if not ok:
            raise UnavailableError(f"cannot measure on backend {workload.backend!r}: {why}")
        if workload.device == "cuda" and not torch.cuda.is_available():
            raise UnavailableError("workload device 'cuda' requested but no CUDA GPU is visible")
        if workload.phase == "decode" and workload.backend != "eager":
            raise ArchgenError(
                f"phase 'decode' is measured on the eager backend only (got {workload.backend!r})"
            )
        self.measurements = 0

    def environment(self) -> dict[str, str]:
        versions = library_versions("onnxruntime", "tensorrt")
        return {
            **versions,
            "backend": self.workload.backend,
            "device": device_name(self.workload.device),
            "threads": str(self.workload.threads),
        }

    def options(self) -> LowerOptions:
        w = self.workload
        return LowerOptions(
            dtype=w.dtype,  # type: ignore[arg-type]
            batch=w.batch,
            min_seq=1,
            opt_seq=w.seq_len,
            max_seq=w.seq_len,
            threads=w.threads,
            decode_graph=False,
            device=w.device,  # eager, compile
            provider=w.device,  # onnxruntime's execution provider
        )

    def measure_graph(self, graph: Graph, *, repeats: int | None = None) -> float:
        """Median seconds of one forward (prefill) or one decode step at context ``seq_len``."""
        self.measurements += 1
        w = self.workload
        if repeats is not None:
            w = replace(w, repeats=repeats)
        if w.phase == "decode":
            return self._measure_decode(graph)
        torch.manual_seed(0)
        tokens = torch.randint(0, graph.model.vocab_size, (w.batch, w.seq_len))
        artifact = self.backend.lower(graph, self.options())
        return artifact.measure(tokens, warmup=self.warmup, repeats=w.repeats).median_s

    def _measure_decode(self, graph: Graph) -> float:
        from archgen.backends.torch_model import build_model

        w = self.workload
        previous = torch.get_num_threads()
        torch.set_num_threads(w.threads)
        sync = torch.cuda.synchronize if w.device == "cuda" else lambda: None
        try:
            model = build_model(graph).to(w.device).eval()
            tokens = torch.randint(0, graph.model.vocab_size, (w.batch, w.seq_len + w.repeats))
            tokens = tokens.to(w.device)
            times = []
            with torch.no_grad():
                state = model.init_state(w.batch)
                for t in range(w.seq_len + w.repeats):
                    sync()
                    start = time.perf_counter()
                    _, state = model.step(tokens[:, t], state, torch.tensor(t, device=w.device))
                    sync()
                    if t >= w.seq_len:
                        times.append(time.perf_counter() - start)
            return statistics.median(times)
        finally:
            torch.set_num_threads(previous)

    def measure_graphs(self, graphs: list[Graph], *, repeats: int | None = None) -> list[float]:
        """Median seconds of each graph's forward, measured call by call in interleaved rounds.

        Every graph is lowered and warmed up first; then each of ``repeats`` rounds times one
        call of every graph in turn, and each graph's median is over its calls. This machine's
        speed changes by 10-30 % from one half-minute to the next (research/perf-anchors.md §0;
        on the AMD EPYC VM, medians of 15-call batches of one model ranged 68-93 ms): timed one
        after the other, graphs measured in a slow spell would rank behind equal ones. A round
        lasts a few seconds, so a slow spell hits every graph in the rounds it covers, and the
        medians compare graphs under the same conditions. Decode-phase workloads are timed one
        graph at a time (their loop is the measurement)."""
        w = self.workload
        repeats = repeats or w.repeats
        if w.phase == "decode" or len(graphs) < 2:
            return [self.measure_graph(g, repeats=repeats) for g in graphs]
        self.measurements += len(graphs)
        torch.manual_seed(0)
        artifacts = []
        for graph in graphs:
            tokens = torch.randint(0, graph.model.vocab_size, (w.batch, w.seq_len))
            artifact = self.backend.lower(graph, self.options())
            artifact.measure(tokens, warmup=self.warmup, repeats=1)  # warm-up, discarded
            artifacts.append((artifact, tokens))
        times: list[list[float]] = [[] for _ in graphs]
        for _ in range(repeats):
            for i, (artifact, tokens) in enumerate(artifacts):
                times[i].extend(artifact.measure(tokens, warmup=0, repeats=1).times_s)
        return [statistics.median(t) for t in times]

    def measure_design(self, graphs: list[Graph]) -> list[float]:
        """Median seconds of models the predictor is fitted on (LatencyPredictor.calibrate),
        measured together with BLOCK_REPEAT_FACTOR times the workload's repeats: measured once
        per search, they set the factors every later prediction uses."""
        return self.measure_graphs(graphs, repeats=self.workload.repeats * BLOCK_REPEAT_FACTOR)

    def measure_blocks(self, items: Sequence[tuple[Graph, str]]) -> list[float]:
        """Seconds each ``(graph, block)`` adds to the stem (never negative), measured together.

        A block is a small difference of two timings, measured once and reused by every search:
        it gets BLOCK_REPEAT_FACTOR times the workload's repeats. The stem and every block graph
        are timed in the same interleaved rounds (:meth:`measure_graphs`), so all differences
        see the same machine drift and are comparable with each other. Graphs with different
        stems (embedding, head) are measured in separate groups."""
        repeats = self.workload.repeats * BLOCK_REPEAT_FACTOR
        out: list[float] = [0.0] * len(items)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, (graph, _) in enumerate(items):
            key = tuple(repr(n) for n in stem_graph(graph).nodes)
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            stem = stem_graph(items[members[0]][0])
            graphs = [stem] + [block_graph(*items[i]) for i in members]
            stem_s, *with_block = self.measure_graphs(graphs, repeats=repeats)
            for i, seconds in zip(members, with_block, strict=True):
                out[i] = max(0.0, seconds - stem_s)
        return out

    def measure_block(self, graph: Graph, block: str) -> float:
        """Seconds one block adds to the stem (:meth:`measure_blocks` of one)."""
        return self.measure_blocks([(graph, block)])[0]
