"""The eager backend: the :class:`~archgen.backends.torch_model.ArchModel` as it is, in float32,
float64 or bfloat16. In float64 it is the reference every other artifact is validated against.

The helpers here (building the source model with the artifact's weights, the module that returns
block boundaries, timing) are shared by the torch-based backends (compile, onnx).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from archgen.backends.base import (
    Artifact,
    ArtifactMeta,
    Backend,
    LowerOptions,
    Measurement,
    NodeImpl,
    check_lowerable,
    device_name,
    library_versions,
    with_notes,
    write_meta,
)
from archgen.backends.torch_model import ArchModel, build_model
from archgen.backends.weights import load_weights, save_weights
from archgen.errors import UnavailableError
from archgen.ir.graph import Graph, Node
from archgen.ir.ops import Embedding, LayerNorm, LMHead, ResidualAdd, RMSNorm
from archgen.mixers.registry import has_implementation, implementation_class

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

_BUILTIN = (Embedding, LMHead, ResidualAdd, RMSNorm, LayerNorm)  # wired by ArchModel itself


def torch_supports(node: Node) -> tuple[bool, str]:
    """Whether the eager model can build ``node``: built-in wiring or a registered mixer that
    imports here."""
    if isinstance(node.op, _BUILTIN):
        return True, "ok"
    ok, reason = has_implementation(type(node.op))
    return (True, "ok") if ok else (False, f"no torch implementation: {reason}")


def torch_device(options: LowerOptions) -> torch.device:
    """The device a torch-based artifact runs on, checked before any work is done."""
    if options.device == "cuda" and not torch.cuda.is_available():
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
        raise UnavailableError(
            f"device 'cuda' requested but torch sees no CUDA GPU (torch {torch.__version__}, "
            f"built {built})"
        )
    return torch.device(options.device)


def source_model(
    graph: Graph, options: LowerOptions, dtype: torch.dtype, device: torch.device | None = None
) -> ArchModel:
    """The eager model with the artifact's weights, cast to ``dtype``, in inference mode, on
    ``device`` (default: the options' device; exporters trace on the CPU whatever it says).

    Weights are drawn (or loaded) in float32 on the CPU and then cast and moved, so a float64
    reference and a float32 (or GPU) artifact built from the same options hold the same values up
    to the cast."""
    model = build_model(graph, seed=options.seed)
    if options.weights is not None:
        load_weights(model, options.weights)
    target = device if device is not None else torch_device(options)
    return model.to(device=target, dtype=dtype).eval().requires_grad_(False)


def loaded_model(graph: Graph, options: LowerOptions, folder: Path) -> ArchModel:
    """The eager model with the weights a torch-based artifact saved in ``folder``."""
    model = build_model(graph, dtype=TORCH_DTYPES[options.dtype])
    load_weights(model, folder / "weights.safetensors")
    return model.to(torch_device(options)).eval().requires_grad_(False)


class BoundaryModule(nn.Module):
    """``tokens -> (logits, *block outputs)``: the one traced/compiled/exported function, so
    validation sees every block boundary of the very graph that runs."""

    def __init__(self, model: ArchModel) -> None:
        super().__init__()
        self.model = model
        self.values = tuple(model.graph.block_outputs().values())

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, captured = self.model.run(tokens, capture=self.values)
        return (logits, *(captured[v] for v in self.values))


def as_boundaries(graph: Graph, outputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """Name :class:`BoundaryModule`'s outputs: block names, then the graph output."""
    out = graph.primary_output()
    return {**dict(zip(graph.blocks(), outputs[1:], strict=True)), out: outputs[0]}


def time_calls(fn: Callable[[], object], warmup: int, repeats: int) -> tuple[float, ...]:
    """Wall-clock seconds of each of ``repeats`` calls after ``warmup`` untimed ones. ``fn``
    must return only when its work is done (see :func:`measure_torch` for CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return tuple(times)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` intra-op threads (None: leave torch's setting), restoring after."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def describe_nodes(model: ArchModel, how: str) -> dict[str, NodeImpl]:
    """Per node: the torch implementation and ``how`` it runs. Mixers that pick an inner
    implementation at run time (Mamba's ``scan='auto'``) report it as ``last_*_impl``; that
    choice is recorded, never hidden."""
    out: dict[str, NodeImpl] = {}
    for node in model.graph.nodes:
        op = node.op
        if isinstance(op, Embedding):
            impl = "torch.nn.Embedding"
        elif isinstance(op, LMHead):
            impl = "F.linear with the embedding table (tied)" if op.tied else "torch.nn.Linear"
        elif isinstance(op, ResidualAdd):
            impl = "tensor add"
        else:
            module = model.module_of(node.name)
            cls = type(module)
            impl = f"{cls.__module__}:{cls.__qualname__}"
            chosen = {
                k: v
                for k, v in vars(module).items()
                if k.startswith("last_") and k.endswith("_impl") and isinstance(v, str)
            }
            if chosen:
                impl += " [" + ", ".join(f"{k[5:]}={v}" for k, v in sorted(chosen.items())) + "]"
        out[node.name] = NodeImpl(f"{impl} ({how})")
    return out


class EagerArtifact(Artifact):
    def __init__(self, graph: Graph, meta: ArtifactMeta, model: ArchModel) -> None:
        self.graph, self.meta, self.model = graph, meta, model
        self._boundary = BoundaryModule(model)

    def _refresh_meta(self) -> None:
        self.meta.nodes = describe_nodes(self.model, f"torch eager, {self.meta.options.dtype}")

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.model(self._input(tokens))
        self._refresh_meta()
        return out

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the model's device; images (float) also in its dtype."""
        if x.is_floating_point():
            dtype = next((p.dtype for p in self.model.parameters()), x.dtype)
            return x.to(self.meta.options.device, dtype)
        return x.to(self.meta.options.device)

    def boundaries(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            outs = self._boundary(self._input(tokens))
        self._refresh_meta()
        return as_boundaries(self.graph, outs)

    def measure(self, tokens: torch.Tensor, warmup: int = 3, repeats: int = 20) -> Measurement:
        tokens = tokens.to(self.meta.options.device)  # the copy is not part of the latency
        with torch.inference_mode():
            result = measure_torch(lambda: self.model(tokens), tokens, self.meta, warmup, repeats)
        self._refresh_meta()
        return result

    def save(self, path: str | Path) -> list[str]:
        return save_torch_artifact(self.model, self.meta, Path(path))


def measure_torch(
    call: Callable[[], object], tokens: torch.Tensor, meta: ArtifactMeta, warmup: int, repeats: int
) -> Measurement:
    """Time ``call`` with the artifact's thread setting (shared by the torch-based backends).

    On CUDA, kernels run asynchronously: each timed call ends with a device synchronisation, so
    the host clock covers the GPU's work (at millisecond model latencies the few microseconds a
    synchronisation costs are below the run-to-run spread)."""
    device = meta.options.device
    timed = call
    if device == "cuda":
        torch.cuda.synchronize()

        def timed() -> None:
            call()
            torch.cuda.synchronize()

    with torch_threads(meta.options.threads) as threads:
        times = time_calls(timed, warmup, repeats)
    return Measurement(
        times, tokens.shape[0], tokens.shape[1], threads, device_name(device), library_versions()
    )


def save_torch_artifact(model: torch.nn.Module, meta: ArtifactMeta, folder: Path) -> list[str]:
    """Weights (safetensors) plus the artifact's meta: what a torch-based artifact saves."""
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / "weights.safetensors", {"dtype": meta.options.dtype})
    return ["weights.safetensors", write_meta(meta, folder)]


class EagerBackend(Backend):
    name: ClassVar[str] = "eager"
    dtypes: ClassVar[frozenset[str]] = frozenset({"float32", "float64", "bfloat16"})
    summary: ClassVar[str] = "the eager PyTorch model (the float64 reference)"

    def is_available(self) -> tuple[bool, str]:
        return True, "ok"

    def supports(self, node: Node) -> tuple[bool, str]:
        return torch_supports(node)

    def _artifact(self, graph: Graph, options: LowerOptions, model: ArchModel) -> EagerArtifact:
        meta = ArtifactMeta(self.name, options, extra={"versions": library_versions()})
        artifact = EagerArtifact(graph, meta, model)
        artifact._refresh_meta()
        return artifact

    def lower(self, graph: Graph, options: LowerOptions) -> EagerArtifact:
        options = options.resolve(graph)
        ready = check_lowerable(self, graph, options)
        model = source_model(ready.graph, options, TORCH_DTYPES[options.dtype])
        return with_notes(self._artifact(ready.graph, options, model), ready.notes)

    def load(self, path: str | Path, graph: Graph, options: LowerOptions) -> EagerArtifact:
        options = options.resolve(graph)
        ready = check_lowerable(self, graph, options)
        model = loaded_model(ready.graph, options, Path(path))
        return with_notes(self._artifact(ready.graph, options, model), ready.notes)


def reference_artifact(graph: Graph, options: LowerOptions) -> EagerArtifact:
    """The eager float64 model with the same weights as an artifact built from ``options``."""
    from dataclasses import replace

    return EagerBackend().lower(graph, replace(options, dtype="float64", device="cpu"))


def implementation_name(node: Node) -> str:
    """``module:Class`` of a node's torch implementation (for per-backend meta)."""
    if isinstance(node.op, _BUILTIN):
        return type(node.op).__name__
    cls = implementation_class(type(node.op))
    return f"{cls.__module__}:{cls.__qualname__}"
