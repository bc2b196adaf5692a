"""Measuring candidates on the target through the backend protocol.

Whole models go through ``Backend.lower(...).measure``. A block is measured the same way, as the
difference between a graph holding only that block (embedding -> block -> head) and the bare
*stem* (embedding -> head), both cut by :mod:`archgen.ir.slicing`: so block latencies come from
the same backend, threads and dtype as whole-model latencies, whatever the backend (eager,
compile, onnxruntime, TensorRT).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from archgen.backends.base import (
    LowerOptions,
    device_name,
    example_input,
    get_backend,
    library_versions,
)
from archgen.errors import ArchgenError, UnavailableError
from archgen.ir.graph import Graph
from archgen.ir.slicing import only_block, stem
from archgen.search.paired import Clock, PairedResult, PairingPolicy, SystemClock, measure_paired
from archgen.search.timing import BlockTiming, GroupTiming, Workload

BLOCK_REPEAT_FACTOR = 10


class Measurer:
    """Times graphs on the workload's backend, device and threads.

    ``reference`` (the spec's base model) anchors :meth:`measure_against_reference` and
    :meth:`measure_blocks`. When a measurement finds the cores contended (another process
    busy: :mod:`archgen.search.paired`), it is taken again with fewer threads and flagged, so
    that a slowed measurement is never recorded as the workload's latency."""

    def __init__(
        self,
        workload: Workload,
        *,
        warmup: int = 3,
        reference: Graph | None = None,
        policy: PairingPolicy | None = None,
        clock: Clock | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.workload = workload
        self.log = log  # hears retakes: a busy machine's measurements take minutes
        self.warmup = warmup
        self.reference = reference
        self.policy = policy or PairingPolicy(rounds=max(PairingPolicy.rounds, workload.repeats))
        self.clock: Clock = clock or SystemClock()
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
        self.fewer_thread_measurements = 0  # taken again with fewer threads
        self._reference_artifacts: dict[int, Any] = {}

    def environment(self) -> dict[str, str]:
        versions = library_versions("onnxruntime", "tensorrt")
        return {
            **versions,
            "backend": self.workload.backend,
            "device": device_name(self.workload.device),
            "threads": str(self.workload.threads),
        }

    def options(self, threads: int | None = None) -> LowerOptions:
        w = self.workload
        return LowerOptions(
            dtype=w.dtype,  # type: ignore[arg-type]
            batch=w.batch,
            min_seq=1,
            opt_seq=w.seq_len,
            max_seq=w.seq_len,
            threads=threads or w.threads,
            decode_graph=False,
            device=w.device,  # eager, compile
            provider=w.device,  # onnxruntime's execution provider
        )

    @property
    def cpu_meaningful(self) -> bool:
        """Whether CPU time tells contention apart: real CPU measurements only."""
        return self.workload.device == "cpu" and self.workload.backend != "null"

    def fewer_threads(self, utilisation: float | None, threads: int) -> int | None:
        """The thread count to measure with when ``threads`` found the cores contended (the
        cores this process actually got), or None when there is nothing to fall back to."""
        if utilisation is None or threads <= 1:
            return None
        return max(1, min(threads - 1, math.floor(utilisation * threads + 0.1)))

    def _tokens(self, graph: Graph) -> torch.Tensor:
        """The timed input, by the model's task (:func:`example_input`): ``batch`` token
        sequences of ``seq_len``, or ``batch`` images of an image classifier's size."""
        generator = torch.Generator().manual_seed(0)
        return example_input(graph, self.workload.batch, self.workload.seq_len, generator)

    def _lower(self, graph: Graph, threads: int) -> Callable[[], float]:
        """A warm artifact of ``graph`` as one timed call: seconds of one run of the workload
        (a forward; a diffusion decode's ``calls`` forwards, each timed call standing for the
        run as ``calls`` x one forward -- every forward of a run reads the same shape)."""
        tokens = self._tokens(graph)
        artifact = self.backend.lower(graph, self.options(threads))
        artifact.measure(tokens, warmup=self.warmup, repeats=1)  # warm-up, discarded
        calls = self.workload.calls
        return lambda: artifact.measure(tokens, warmup=0, repeats=1).times_s[0] * calls

    def _reference_call(self, threads: int) -> Callable[[], float]:
        if self.reference is None:
            raise ArchgenError("no reference model to measure against")
        if threads not in self._reference_artifacts:
            self._reference_artifacts[threads] = self._lower(self.reference, threads)
        return self._reference_artifacts[threads]

    def training_threads(self, *, calls: int = 8) -> int | None:
        """The intra-op threads to train with now: None (leave torch's setting) when the
        reference, timed alone for a few calls, had the cores to itself; else the cores this
        process actually got. Torch's threads spin while they wait for each other, so on shared
        cores fewer threads train faster: on the AMD VM beside one busy loop, 1 thread trained
        the hybrid example at 1.4-1.9x the tokens/s of 2 (quiet, 2 threads: 1.6-1.8x 1;
        benchmarks/results/search_load.md, session 9)."""
        if not self.cpu_meaningful or self.reference is None:
            return None
        threads = self.workload.threads  # the reference's warm artifact: nothing to lower
        timing = self._time_calls([self._reference_call(threads)], calls, threads)
        return self.fewer_threads(timing.utilisation, threads) if timing.contended else None

    # -- whole models, relative to the reference -------------------------------------------
    def measure_against_reference(
        self, graphs: Sequence[Graph], *, rounds: int | None = None
    ) -> list[PairedResult]:
        """Each graph timed call by call between calls of the reference; at fewer threads
        (flagged by ``threads``) when the workload's threads found the cores contended."""
        self.measurements += len(graphs)
        policy = replace(self.policy, rounds=rounds) if rounds else self.policy
        if self.workload.phase == "decode":
            return [self._decode_ratio(g) for g in graphs]
        threads = self.workload.threads
        results = self._paired(graphs, threads, policy)
        fewer = self.fewer_threads(results[0].utilisation, threads)
        if any(r.contended for r in results) and fewer is not None:
            self.fewer_thread_measurements += len(graphs)
            if self.log is not None:
                self.log(f"  cores busy: measuring again at {fewer} thread(s)")
            results = self._paired(graphs, fewer, policy)
        return results

    def _paired(
        self, graphs: Sequence[Graph], threads: int, policy: PairingPolicy
    ) -> list[PairedResult]:
        reference = self._reference_call(threads)
        calls = [self._lower(g, threads) for g in graphs]
        return measure_paired(
            reference,
            calls,
            threads=threads,
            policy=policy,
            clock=self.clock,
            cpu_meaningful=self.cpu_meaningful,
            log=self.log,
        )

    def _decode_ratio(self, graph: Graph) -> PairedResult:
        """Decode steps are timed one model at a time (the token loop is the measurement)."""
        assert self.reference is not None
        ref, own = self.measure_graph(self.reference), self.measure_graph(graph)
        w = self.workload
        return PairedResult(
            ratio=own / ref, rel_error=0.0, reference_s=ref, model_s=own, rounds=w.repeats,
            rejected=0, attempts=1, utilisation=None, threads=w.threads, stable=True,
            contended=False,
        )  # fmt: skip

    # -- absolute timings ------------------------------------------------------------------
    def measure_graph(self, graph: Graph, *, repeats: int | None = None) -> float:
        """Median seconds of one forward (prefill), one decode step at context ``seq_len``, or
        one diffusion decode (its ``calls`` denoiser forwards)."""
        self.measurements += 1
        w = self.workload
        if repeats is not None:
            w = replace(w, repeats=repeats)
        if w.phase == "decode":
            return self._measure_decode(graph)
        tokens = self._tokens(graph)
        artifact = self.backend.lower(graph, self.options())
        median = artifact.measure(tokens, warmup=self.warmup, repeats=w.repeats).median_s
        return median * w.calls  # a diffusion decode: its denoiser calls (Workload.calls)

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
        """Median seconds of each graph's forward, measured call by call in interleaved rounds
        (:meth:`time_group`); decode-phase workloads are timed one graph at a time."""
        w = self.workload
        if w.phase == "decode" or len(graphs) < 2:
            return [self.measure_graph(g, repeats=repeats or w.repeats) for g in graphs]
        self.measurements += len(graphs)
        return self.time_group(graphs, repeats=repeats or w.repeats, threads=w.threads).medians

    def time_group(self, graphs: Sequence[Graph], *, repeats: int, threads: int) -> GroupTiming:
        """Every graph lowered and warmed up, then ``repeats`` rounds each timing one call of
        every graph in turn; each graph's median is over its calls.

        This machine's speed changes by 10-30 % from one half-minute to the next
        (research/perf-anchors.md §0): timed one after the other, graphs measured in a slow
        spell would rank behind equal ones. A round lasts a few seconds, so a slow spell hits
        every graph in the rounds it covers."""
        return self._time_calls([self._lower(g, threads) for g in graphs], repeats, threads)

    def _time_calls(
        self, calls: Sequence[Callable[[], float]], repeats: int, threads: int
    ) -> GroupTiming:
        times: list[list[float]] = [[] for _ in calls]
        wall0, cpu0 = self.clock.wall(), self.clock.cpu()
        for _ in range(repeats):
            for i, call in enumerate(calls):
                times[i].append(call())
        wall, cpu = self.clock.wall() - wall0, self.clock.cpu() - cpu0
        utilisation = cpu / (threads * wall) if self.cpu_meaningful and wall > 0 else None
        contended = self.policy.contended(utilisation)
        medians = [statistics.median(t) for t in times]
        return GroupTiming(medians, utilisation, threads, contended)

    def measure_design(self, graphs: list[Graph]) -> list[PairedResult]:
        """Models the predictor is fitted on (LatencyPredictor.calibrate), against the
        reference with twice the usual rounds: measured once per search, they set the factors
        every later prediction uses."""
        return self.measure_against_reference(graphs, rounds=2 * self.policy.rounds)

    # -- blocks ----------------------------------------------------------------------------
    def measure_blocks(self, items: Sequence[tuple[Graph, str]]) -> list[BlockTiming]:
        """Seconds each ``(graph, block)`` adds to the stem (never negative), measured together.

        A block is a small difference of two timings, measured once and reused by every search:
        it gets BLOCK_REPEAT_FACTOR times the workload's repeats. The stem, every block graph
        and the reference model are timed in the same interleaved rounds, so all differences
        see the same machine drift, and each block's cost relative to the reference is
        comparable with a later run's. Graphs with different stems (embedding, head) are
        measured in separate groups; a contended group is timed again with fewer threads."""
        repeats = self.workload.repeats * BLOCK_REPEAT_FACTOR
        out: list[BlockTiming | None] = [None] * len(items)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, (graph, _) in enumerate(items):
            key = tuple(repr(n) for n in stem(graph).nodes)
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            bare = stem(items[members[0]][0])
            graphs = [bare] + [only_block(*items[i]) for i in members]
            if self.reference is not None:
                graphs.append(self.reference)
            timing = self._time_blocks(graphs, repeats)
            stem_s, *with_block = timing.medians
            reference_s = with_block.pop() if self.reference is not None else None
            for i, seconds in zip(members, with_block, strict=True):
                out[i] = BlockTiming(
                    max(0.0, seconds - stem_s), reference_s, timing.utilisation,
                    timing.threads, timing.contended,
                )  # fmt: skip
        return [o for o in out if o is not None]

    def _time_blocks(self, graphs: Sequence[Graph], repeats: int) -> GroupTiming:
        timing = self.time_group(graphs, repeats=repeats, threads=self.workload.threads)
        fewer = self.fewer_threads(timing.utilisation, timing.threads)
        if timing.contended and fewer is not None:
            self.fewer_thread_measurements += len(graphs)
            timing = self.time_group(graphs, repeats=repeats, threads=fewer)
        return timing

    def measure_block(self, graph: Graph, block: str) -> float:
        """Seconds one block adds to the stem (:meth:`measure_blocks` of one)."""
        return self.measure_blocks([(graph, block)])[0].seconds
