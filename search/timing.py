"""What a search measures and the timings it gets back (torch-free, shared by the latency
table in :mod:`archgen.search.latency` and the measurer in :mod:`archgen.search.measure`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    batch: int = 1
    seq_len: int = 1024
    phase: str = "prefill"  # or "decode": seconds per generated token at context seq_len
    dtype: str = "float32"
    backend: str = "eager"
    device: str = "cpu"
    threads: int = 2
    repeats: int = 15

    def shape_key(self) -> str:
        return f"{self.phase}:B{self.batch}:L{self.seq_len}:{self.dtype}"


@dataclass(frozen=True)
class GroupTiming:
    """Graphs timed together in interleaved rounds (:meth:`Measurer.time_group`)."""

    medians: list[float]
    utilisation: float | None  # CPU time / (threads x wall); None where it means nothing
    threads: int
    contended: bool


@dataclass(frozen=True)
class BlockTiming:
    """What a block adds to the stem, and the reference model timed in the same rounds: the
    block's cost in reference units is ``seconds / reference_s``, comparable across runs."""

    seconds: float
    reference_s: float | None
    utilisation: float | None
    threads: int
    contended: bool
