"""The backend protocol, the lowering options, and the one registry of backends.

A :class:`Backend` says whether it can run on this machine (:meth:`Backend.is_available`), which
nodes it can lower (:meth:`Backend.supports`), and lowers a graph to an :class:`Artifact`. An
artifact runs token ids to logits, exposes its block-boundary values (for numerics validation),
measures its own latency, saves itself to a folder, and records in :attr:`Artifact.meta` which
implementation each node used. Nothing falls back silently: a fallback is a field of the node's
:class:`NodeImpl` and shows in the CLI report.

>>> from archgen.backends.base import get_backend, LowerOptions
>>> backend = get_backend("eager")
>>> backend.is_available()
(True, 'ok')
>>> artifact = backend.lower(graph, LowerOptions(dtype="float32"))  # doctest: +SKIP
>>> artifact.run(tokens).shape  # doctest: +SKIP

This module imports no torch, so ``archgen doctor`` and the null backend stay light.

Adding a backend: a module ``backends/<name>.py`` with a :class:`Backend` subclass (optional
dependencies imported inside functions), one line in :data:`BACKENDS`, its (backend, dtype)
entries in ``backends/validate.py``'s tolerance table (measured, with the calibration in a
comment), and ``tests/backends/test_<name>.py`` subclassing the conformance suite.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import platform
import statistics
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from archgen.errors import ArchgenError, UnavailableError
from archgen.ir.graph import Graph, Node

if TYPE_CHECKING:
    import torch

DType = Literal["float32", "float64", "bfloat16", "float16"]
OptLevel = Literal["disable", "basic", "extended", "all"]
Provider = Literal["cpu", "cuda", "tensorrt"]
Device = Literal["cpu", "cuda"]

DEFAULT_OPT_SEQ = 128


class UnsupportedError(ArchgenError):
    """The backend cannot lower this graph (an unsupported node kind or dtype)."""

    exit_code = 2


# -- options -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeqProfile:
    """Sequence lengths an artifact is built for: exported graphs accept any ``min..max``; ``opt``
    is what TensorRT tunes for. Validation runs all three."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ArchgenError(
                f"sequence profile must satisfy 1 <= min <= opt <= max, got "
                f"min={self.min} opt={self.opt} max={self.max}"
            )

    def lengths(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys((self.min, self.opt, self.max)))


@dataclass(frozen=True)
class LowerOptions:
    """Everything that changes what a backend builds. Recorded verbatim in the artifact's meta
    (no environment variables, no size-dependent switches)."""

    dtype: DType = "float32"
    # None = resolved against the graph by :meth:`resolve`: min 1, opt 128, max = max_seq_len.
    min_seq: int | None = None
    opt_seq: int | None = None
    max_seq: int | None = None
    batch: int = 1  # the batch used by measure and by TensorRT's opt profile
    max_batch: int = 64  # upper bound of the dynamic batch dim of exported graphs
    seed: int = 0  # weights are drawn from this seed ...
    weights: str | None = None  # ... unless a safetensors file is given
    opset: int | None = None  # None: the exporter's default
    graph_opt_level: OptLevel = "all"  # onnxruntime's graph optimisation level
    provider: Provider = "cpu"  # onnxruntime execution provider
    # where the torch-based backends (eager, compile) hold the weights and run; onnxruntime runs
    # on ``provider`` and TensorRT on the GPU whatever this says
    device: Device = "cpu"
    threads: int | None = None  # intra-op threads; None: torch.get_num_threads()
    decode_graph: bool = True  # onnx: also export the one-token decode step when possible
    # onnx: causal self-attention as onnxruntime's fused GroupQueryAttention contrib op
    # (backends/onnx_attention.py); False exports standard ONNX ops only (TensorRT always does)
    fused_attention: bool = True
    # onnx: Mamba-1's selective scan as one archgen.SelectiveScan node, run by archgen's
    # onnxruntime custom-op library (backends/onnx_scan.py); False: an ONNX Scan of standard ops
    fused_scan: bool = True
    compile_dynamic: bool | None = False  # torch.compile(dynamic=...): False = one graph per L
    # compile: Inductor's freezing (weights become constants: folded, prepacked for oneDNN);
    # inference only, which is all a compile artifact does
    compile_freezing: bool = False

    def profile(self, graph: Graph) -> SeqProfile:
        top = self.max_seq or graph.model.max_seq_len
        low = self.min_seq or 1
        opt = self.opt_seq or max(low, min(DEFAULT_OPT_SEQ, top))
        prof = SeqProfile(low, opt, top)
        if prof.max > graph.model.max_seq_len:
            raise ArchgenError(
                f"max sequence length {prof.max} exceeds the model's max_seq_len "
                f"{graph.model.max_seq_len}"
            )
        return prof

    def resolve(self, graph: Graph) -> LowerOptions:
        """These options with the sequence profile filled in from the graph."""
        p = self.profile(graph)
        return replace(self, min_seq=p.min, opt_seq=p.opt, max_seq=p.max)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- what an artifact records ------------------------------------------------------------------
@dataclass(frozen=True)
class NodeImpl:
    """Which implementation ran one node. ``fallback`` says what was used instead of the
    backend's own path, and why (None: no fallback)."""

    impl: str
    fallback: str | None = None


@dataclass
class ArtifactMeta:
    backend: str
    options: LowerOptions
    nodes: dict[str, NodeImpl] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # facts a user should know (cost model ...)
    extra: dict[str, Any] = field(default_factory=dict)  # export times, file names, providers

    def fallbacks(self) -> dict[str, str]:
        return {n: i.fallback for n, i in self.nodes.items() if i.fallback}

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "options": self.options.to_json(),
            "nodes": {n: asdict(i) for n, i in self.nodes.items()},
            "fallbacks": self.fallbacks(),
            "notes": list(self.notes),
            **self.extra,
        }


@dataclass(frozen=True)
class Measurement:
    """Latency of one artifact on one input shape. ``predicted`` is True for cost-model numbers."""

    times_s: tuple[float, ...]
    batch: int
    seq_len: int
    threads: int
    device: str
    versions: Mapping[str, str]
    predicted: bool = False

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def p90_s(self) -> float:
        ordered = sorted(self.times_s)
        return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]

    def to_json(self) -> dict[str, Any]:
        return {
            "median_s": self.median_s,
            "p90_s": self.p90_s,
            "times_s": list(self.times_s),
            "batch": self.batch,
            "seq_len": self.seq_len,
            "threads": self.threads,
            "device": self.device,
            "versions": dict(self.versions),
            "predicted": self.predicted,
        }


# -- the protocol ------------------------------------------------------------------------------
class Artifact(ABC):
    """A lowered graph. ``tokens`` are int64 ``[B, L]`` torch tensors; outputs are torch tensors
    in the artifact's dtype."""

    graph: Graph
    meta: ArtifactMeta

    @abstractmethod
    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, L]`` -> logits ``[B, L, V]``."""

    @abstractmethod
    def boundaries(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every block's output by IR block name, in graph order, then the graph output
        (``logits``): what numerics validation compares."""

    @abstractmethod
    def measure(self, tokens: torch.Tensor, warmup: int = 3, repeats: int = 20) -> Measurement:
        """Wall-clock latency of :meth:`run` on ``tokens``."""

    @abstractmethod
    def save(self, path: str | Path) -> list[str]:
        """Write the artifact into folder ``path``; returns the file names written."""


ArtifactT = TypeVar("ArtifactT", bound=Artifact)


class Backend(ABC):
    name: ClassVar[str]
    dtypes: ClassVar[frozenset[str]]
    summary: ClassVar[str] = ""

    @abstractmethod
    def is_available(self) -> tuple[bool, str]:
        """Whether this machine can use the backend, and if not, what is missing."""

    @abstractmethod
    def supports(self, node: Node) -> tuple[bool, str]:
        """Whether the backend can lower ``node``, and if not, why."""

    @abstractmethod
    def lower(self, graph: Graph, options: LowerOptions) -> Artifact:
        """Build an artifact; checks availability and support first (:func:`check_lowerable`)."""

    @abstractmethod
    def load(self, path: str | Path, graph: Graph, options: LowerOptions) -> Artifact:
        """Load an artifact written by :meth:`Artifact.save`."""

    def supports_dtype(self, dtype: str) -> tuple[bool, str]:
        if dtype in self.dtypes:
            return True, "ok"
        return False, f"{self.name} supports dtypes {', '.join(sorted(self.dtypes))}, not {dtype}"


@dataclass(frozen=True)
class Lowerable:
    """What a backend lowers: the graph, with each fused node it cannot lower split back into
    the nodes it replaced, and one note per such node (for the artifact's ``notes``)."""

    graph: Graph
    notes: tuple[str, ...] = ()


def check_lowerable(backend: Backend, graph: Graph, options: LowerOptions) -> Lowerable:
    """Raise before any work if ``backend`` cannot lower ``graph`` here: unavailable backend
    (exit code 3), unsupported dtype or nodes (all of them listed, each with its reason). A
    fused node (``fuse_kernels``) it cannot lower is not an error: it falls back to the unfused
    nodes -- the same function -- with a note saying so, never silently."""
    ok, reason = backend.is_available()
    if not ok:
        raise UnavailableError(f"backend {backend.name!r} is not available here: {reason}")
    ok, reason = backend.supports_dtype(options.dtype)
    if not ok:
        raise UnsupportedError(reason)
    from archgen.passes.fuse_kernels import FUSED_KINDS, unfuse

    refused = [(n, r) for n in graph.nodes for ok, r in [backend.supports(n)] if not ok]
    fused = [(n, r) for n, r in refused if n.op.kind in FUSED_KINDS]
    notes = tuple(
        f"{n.op.kind} %{n.name} falls back to the unfused nodes ({', '.join(n.outputs)}): "
        f"{backend.name} cannot lower it ({r})"
        for n, r in fused
    )
    if fused:
        graph = unfuse(graph, [n.name for n, _ in fused])
    # after the fallback: every node left (the unfused ones too) must be lowerable
    bad = [(n.name, r) for n in graph.nodes for ok, r in [backend.supports(n)] if not ok]
    if bad:
        lines = "; ".join(f"{name}: {reason}" for name, reason in bad)
        raise UnsupportedError(
            f"backend {backend.name!r} cannot lower {len(bad)} node(s): {lines}",
            hint="`archgen doctor SPEC` lists what each backend supports",
        )
    return Lowerable(graph, notes)


def with_notes(artifact: ArtifactT, notes: tuple[str, ...]) -> ArtifactT:
    """``artifact`` with ``notes`` (e.g. :class:`Lowerable`'s fallbacks) added to its meta."""
    artifact.meta.notes.extend(notes)
    return artifact


# -- registry ----------------------------------------------------------------------------------
# name -> "module:Class"; modules import lazily so asking about one backend never imports the
# optional dependencies of another.
BACKENDS: dict[str, str] = {
    "eager": "archgen.backends.eager:EagerBackend",
    "compile": "archgen.backends.compile:CompileBackend",
    "onnx": "archgen.backends.onnx:OnnxBackend",
    "tensorrt": "archgen.backends.tensorrt:TensorRTBackend",
    "null": "archgen.backends.null:NullBackend",
}


def get_backend(name: str) -> Backend:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ArchgenError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)()


def backend_names() -> list[str]:
    return list(BACKENDS)


# -- shared helpers ----------------------------------------------------------------------------
def library_versions(*names: str) -> dict[str, str]:
    """Versions of the named distributions that are installed (others are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("archgen", "torch", *names):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (what benchmark tables and measurements report)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu: " + (platform.processor() or platform.machine())


def device_name(device: str) -> str:
    """What a measurement on ``device`` reports: the CPU model, or the GPU's name."""
    if device == "cuda":
        import torch

        return "cuda: " + torch.cuda.get_device_name()
    return cpu_name()


def boundary_names(graph: Graph) -> list[str]:
    """The names :meth:`Artifact.boundaries` returns: block names, then the graph outputs."""
    return [*graph.blocks(), *graph.outputs]


def write_meta(meta: ArtifactMeta, folder: Path) -> str:
    (folder / "artifact.json").write_text(json.dumps(meta.to_json(), indent=2) + "\n")
    return "artifact.json"


def example_input(graph: Graph, batch: int, seq_len: int, generator: Any) -> Any:
    """Random input of ``graph``: token ids ``[batch, seq_len]`` of a language model, or
    float32 images ``[batch, S, S, C]`` of an image classifier (whose size is fixed, so
    ``seq_len`` is not used)."""
    import torch

    image = graph.model.image
    if image is not None:
        shape = (batch, image.image_size, image.image_size, image.in_channels)
        return torch.randn(shape, generator=generator)
    return torch.randint(0, graph.model.vocab_size, (batch, seq_len), generator=generator)


def input_lengths(graph: Graph, options: LowerOptions) -> tuple[int, ...]:
    """The lengths a validation runs at: the profile's, or the one image size of an image
    classifier."""
    if graph.model.image is not None:
        return (graph.model.image.image_size,)
    return options.profile(graph).lengths()
