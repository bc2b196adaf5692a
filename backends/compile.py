"""The compile backend: ``torch.compile`` (Inductor; C++/OpenMP code on CPU, Triton on CUDA).

The compiled function is :class:`~archgen.backends.eager.BoundaryModule`, so validation reads
the block boundaries of the compiled graph itself. Compilation is ``fullgraph=True`` and runs with
``fail_on_recompile_limit_hit``: a graph break or a recompile-limit overflow is an error, never a
silent return to eager Python. With ``compile_dynamic=False`` (the default, fastest on CPU per
research/perf-anchors.md §7) every new input shape compiles once; first-call times per shape are
recorded in the meta (``compile_s``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import ClassVar

import torch
from torch._inductor import config as inductor_config

from archgen.backends.base import (
    Artifact,
    ArtifactMeta,
    Backend,
    LowerOptions,
    Measurement,
    NodeImpl,
    UnsupportedError,
    check_lowerable,
    library_versions,
    with_notes,
)
from archgen.backends.eager import (
    TORCH_DTYPES,
    BoundaryModule,
    as_boundaries,
    implementation_name,
    loaded_model,
    measure_torch,
    save_torch_artifact,
    source_model,
    torch_supports,
    torch_threads,
)
from archgen.backends.torch_model import ArchModel
from archgen.ir.graph import Graph, Node

# Dynamo's cache (default 8 entries) belongs to the code object of BoundaryModule.forward, so
# every artifact of the process and every input shape (dynamic=False) takes an entry: a search or
# a benchmark lowering its 9th model would otherwise fail. Within the process-wide accumulated
# limit (256), the limit still catches a runaway recompile loop.
RECOMPILE_LIMIT = 256


class CompileArtifact(Artifact):
    def __init__(self, graph: Graph, meta: ArtifactMeta, model: ArchModel) -> None:
        self.graph, self.meta, self.model = graph, meta, model
        self._compiled = torch.compile(
            BoundaryModule(model),
            backend="inductor",
            fullgraph=True,
            dynamic=meta.options.compile_dynamic,
        )
        self.meta.extra.setdefault("compile_s", {})

    def _call(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens = tokens.to(self.meta.options.device)
        key = "x".join(str(d) for d in tokens.shape)
        first = key not in self.meta.extra["compile_s"]
        start = time.perf_counter()
        try:
            with (
                torch._dynamo.config.patch(
                    fail_on_recompile_limit_hit=True, recompile_limit=RECOMPILE_LIMIT
                ),
                inductor_config.patch(freezing=self.meta.options.compile_freezing),
                torch.no_grad(),
            ):
                out = self._compiled(tokens)
        except Exception as exc:  # dynamo/inductor raise many types; all mean "cannot compile"
            if isinstance(exc, UnsupportedError):
                raise
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise UnsupportedError(
                f"torch.compile failed for input {key}: {type(exc).__name__}: {first_line[:500]}"
            ) from exc
        if first:  # the first call of a shape includes tracing and code generation
            self.meta.extra["compile_s"][key] = time.perf_counter() - start
        return out

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._call(tokens)[0]

    def boundaries(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return as_boundaries(self.graph, self._call(tokens))

    def measure(self, tokens: torch.Tensor, warmup: int = 3, repeats: int = 20) -> Measurement:
        tokens = tokens.to(self.meta.options.device)  # the copy is not part of the latency
        with torch_threads(self.meta.options.threads):
            self._call(tokens)  # compile outside the timed loop
        return measure_torch(lambda: self._call(tokens), tokens, self.meta, warmup, repeats)

    def save(self, path: str | Path) -> list[str]:
        # Inductor's generated code is tied to this machine and torch build; what travels is the
        # weights, recompiled on load (the meta says so).
        return save_torch_artifact(self.model, self.meta, Path(path))


class CompileBackend(Backend):
    name: ClassVar[str] = "compile"
    dtypes: ClassVar[frozenset[str]] = frozenset({"float32", "float64", "bfloat16"})
    summary: ClassVar[str] = "torch.compile (Inductor)"

    def is_available(self) -> tuple[bool, str]:
        cxx = inductor_config.cpp.cxx
        compiler = cxx[-1] if isinstance(cxx, tuple) else cxx
        if shutil.which(compiler or "g++") is None:
            return False, f"Inductor needs a C++ compiler on CPU; {compiler!r} is not on PATH"
        return True, "ok"

    def supports(self, node: Node) -> tuple[bool, str]:
        return torch_supports(node)

    def _artifact(self, graph: Graph, options: LowerOptions, model: ArchModel) -> CompileArtifact:
        meta = ArtifactMeta(self.name, options, extra={"versions": library_versions()})
        dyn = options.compile_dynamic
        frozen = ", freezing" if options.compile_freezing else ""
        how = f"torch.compile inductor fullgraph, dynamic={dyn}{frozen}, {options.dtype}"
        for node in graph.nodes:
            meta.nodes[node.name] = NodeImpl(f"{implementation_name(node)} ({how})")
        meta.notes.append("saved artifacts hold weights only; code is regenerated on load")
        return CompileArtifact(graph, meta, model)

    def lower(self, graph: Graph, options: LowerOptions) -> CompileArtifact:
        options = options.resolve(graph)
        ready = check_lowerable(self, graph, options)
        model = source_model(ready.graph, options, TORCH_DTYPES[options.dtype])
        return with_notes(self._artifact(ready.graph, options, model), ready.notes)

    def load(self, path: str | Path, graph: Graph, options: LowerOptions) -> CompileArtifact:
        options = options.resolve(graph)
        ready = check_lowerable(self, graph, options)
        model = loaded_model(ready.graph, options, Path(path))
        return with_notes(self._artifact(ready.graph, options, model), ready.notes)
