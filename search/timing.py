"""What a search measures and the timings it gets back (torch-free, shared by the latency
table in :mod:`archgen.search.latency` and the measurer in :mod:`archgen.search.measure`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    batch: int = 1
    seq_len: int = 1024
    # "prefill": one forward of seq_len tokens; "decode": seconds per generated token at
    # context seq_len; "diffusion-decode": one masked-diffusion generation of gen_length tokens
    # with ``decoder``, i.e. ``calls`` denoiser forwards of seq_len tokens each
    phase: str = "prefill"
    dtype: str = "float32"
    backend: str = "eager"
    device: str = "cpu"
    threads: int = 2
    repeats: int = 15
    decoder: str | None = None  # diffusion-decode: the policy (archgen generate --decoder)
    gen_length: int | None = None  # diffusion-decode: tokens generated per run
    # Model forwards one run of the workload takes: 1, or a diffusion decode's denoiser calls.
    # The forwards of a run all read the same shape (no cache: the denoiser is bidirectional),
    # so a run costs ``calls`` times one forward; the host loop between calls is not counted.
    calls: int = 1
    # An image classifier's input: ``batch`` images of image_size x image_size (seq_len is then
    # the largest stage grid's tokens, which nothing times by); None for a language model.
    image_size: int | None = None

    def shape_key(self) -> str:
        if self.image_size is not None:
            return f"images:B{self.batch}:S{self.image_size}:{self.dtype}"
        key = f"{self.phase}:B{self.batch}:L{self.seq_len}:{self.dtype}"
        if self.phase == "diffusion-decode":
            key += f":G{self.gen_length}:{self.decoder}:x{self.calls}"
        return key

    def describe(self) -> str:
        """One line for the log and the report."""
        if self.image_size is not None:
            size = f"{self.image_size}x{self.image_size}"
            return f"one forward of a batch of {self.batch} {size} image(s)"
        if self.phase != "diffusion-decode":
            return f"{self.phase} of {self.seq_len} tokens, batch {self.batch}"
        prompt = self.seq_len - (self.gen_length or 0)
        return (
            f"diffusion-decode: {self.gen_length} tokens after a {prompt}-token prompt with "
            f"{self.decoder}, {self.calls} denoiser calls of {self.seq_len} tokens per run, "
            f"batch {self.batch}"
        )


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
