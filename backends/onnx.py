"""The onnx backend: ``torch.onnx.export(dynamo=True)`` of the eager model, run in onnxruntime.

Two graphs are exported:

* ``model.onnx`` -- ``tokens i64[batch, seq] -> logits f32[batch, seq, V]`` plus one output per
  block boundary, named after the IR block (``layers.0`` ...), so validation compares the very
  graph that ships. Batch and sequence length are dynamic (``torch.export.Dim``), bounded by the
  options' ``max_batch`` and the profile's ``max``.
* ``decode_step.onnx`` (causal LMs whose token mixers all have a traceable ``step``) --
  ``token i64[batch], pos i64[], <state...> -> logits f32[batch, V], <new state...>``. State
  inputs are named ``state.<node>.<i>`` and outputs ``new_state.<node>.<i>``. Attention's KV
  cache grows by concatenation, so its length is the dynamic dim ``past`` (0 at the first step).

Both files are checked with ``onnx.checker`` and written to a temp file renamed on success
(:mod:`archgen.backends.onnx_export`). onnxruntime runs them on the execution provider named in
the options (``cpu``; ``cuda`` and ``tensorrt`` when this onnxruntime build has them, else a
clear :class:`UnavailableError` before any export). Known cost: an op exporting as ``Einsum``
runs slowly in onnxruntime's CPU EP (research/perf-anchors.md §7); the exported graph's op
histogram is in the meta (``op_counts``).

Only this module (and ``onnx*.py`` beside it) imports onnxruntime, and only inside functions.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

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
    write_meta,
)
from archgen.backends.eager import (
    TORCH_DTYPES,
    implementation_name,
    source_model,
    time_calls,
    torch_supports,
)
from archgen.backends.onnx_export import (
    decode_support,
    export_decode,
    export_forward,
    traces_with_dynamic_length,
)
from archgen.errors import ArchgenError, UnavailableError
from archgen.ir.graph import Graph, Node
from archgen.ir.ops import Role

FORWARD_FILE = "model.onnx"
DECODE_FILE = "decode_step.onnx"

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def _missing_packages() -> list[str]:
    return [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]


# -- running -----------------------------------------------------------------------------------
def make_session(path: Path, options: LowerOptions) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, OPT_LEVELS[options.graph_opt_level]
    )
    so.intra_op_num_threads = options.threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    wanted = PROVIDERS[options.provider]
    session = ort.InferenceSession(str(path), so, providers=[wanted])
    if wanted not in session.get_providers():  # ORT drops a provider that fails to initialise
        raise UnavailableError(
            f"onnxruntime could not initialise {wanted} (session uses {session.get_providers()})"
        )
    return session


class OnnxArtifact(Artifact):
    def __init__(
        self,
        graph: Graph,
        meta: ArtifactMeta,
        folder: Path,
        has_decode: bool,
        owned: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        self.graph, self.meta, self.folder = graph, meta, folder
        self._owned = owned  # keeps the lowering's temp folder alive as long as the artifact
        self.session = make_session(folder / FORWARD_FILE, meta.options)
        self.decode_session = (
            make_session(folder / DECODE_FILE, meta.options) if has_decode else None
        )
        self._names = [o.name for o in self.session.get_outputs()]
        self._dtype = TORCH_DTYPES[meta.options.dtype]
        meta.extra["providers"] = self.session.get_providers()

    def _run(self, tokens: torch.Tensor, outputs: list[str] | None) -> list[np.ndarray]:
        return self.session.run(outputs, {"tokens": tokens.numpy().astype(np.int64)})

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(tokens, [self.graph.primary_output()])[0])

    def boundaries(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        values = dict(zip(self._names, self._run(tokens, None), strict=True))
        return {name: torch.from_numpy(values[name]) for name in self._names_in_order()}

    def _names_in_order(self) -> list[str]:
        return [*self.graph.blocks(), *self.graph.outputs]

    def measure(self, tokens: torch.Tensor, warmup: int = 3, repeats: int = 20) -> Measurement:
        feed = {"tokens": tokens.numpy().astype(np.int64)}
        # Only the logits are fetched, as a deployed model would; block outputs are computed
        # anyway (they are residual streams the logits depend on).
        logits = [self.graph.primary_output()]
        times = time_calls(lambda: self.session.run(logits, feed), warmup, repeats)
        so = self.session.get_session_options()
        return Measurement(
            times,
            tokens.shape[0],
            tokens.shape[1],
            so.intra_op_num_threads,
            cpu_name() if self.meta.options.provider == "cpu" else self.meta.options.provider,
            library_versions("onnx", "onnxruntime"),
        )

    # -- decoding ------------------------------------------------------------------------------
    def init_state(self, batch: int) -> list[np.ndarray]:
        """The decode graph's initial state (zeros; attention caches of length 0)."""
        if self.decode_session is None:
            raise ArchgenError("this artifact has no decode graph: " + self.meta.extra["decode"])
        out = []
        for inp in self.decode_session.get_inputs()[2:]:
            dims = [batch if d == "batch" else 0 if isinstance(d, str) else d for d in inp.shape]
            out.append(np.zeros(dims, dtype=_numpy_dtype(inp.type)))
        return out

    def step(
        self, token: torch.Tensor, pos: int, state: list[np.ndarray]
    ) -> tuple[torch.Tensor, list[np.ndarray]]:
        """One decode step in onnxruntime: logits ``[B, V]`` and the new state."""
        if self.decode_session is None:
            raise ArchgenError("this artifact has no decode graph: " + self.meta.extra["decode"])
        names = [i.name for i in self.decode_session.get_inputs()]
        feed = dict(
            zip(
                names,
                [token.numpy().astype(np.int64), np.array(pos, np.int64), *state],
                strict=True,
            )
        )
        logits, *new_state = self.decode_session.run(None, feed)
        return torch.from_numpy(logits), new_state

    def save(self, path: str | Path) -> list[str]:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        files = [FORWARD_FILE] + ([DECODE_FILE] if self.decode_session is not None else [])
        for name in files:
            if folder.resolve() != self.folder.resolve():
                shutil.copyfile(self.folder / name, folder / name)
        return [*files, write_meta(self.meta, folder)]


def _note_fused_attention(meta: ArtifactMeta, graph: Graph, scopes: list[str]) -> None:
    """Name the nodes whose attention became a ``GroupQueryAttention`` node in the meta."""
    for node in graph.nodes:
        if any(f"model.{node.name}" in scope for scope in scopes):
            impl = meta.nodes[node.name]
            meta.nodes[node.name] = replace(
                impl,
                impl=impl.impl + ", causal attention fused into com.microsoft.GroupQueryAttention",
            )


def _numpy_dtype(onnx_type: str) -> Any:
    return {
        "tensor(float)": np.float32,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(float16)": np.float16,
    }[onnx_type]


class OnnxBackend(Backend):
    name: ClassVar[str] = "onnx"
    dtypes: ClassVar[frozenset[str]] = frozenset({"float32"})
    summary: ClassVar[str] = "torch.onnx (dynamo) export run in onnxruntime"

    def is_available(self) -> tuple[bool, str]:
        missing = _missing_packages()
        if missing:
            return False, f"no module named {', '.join(missing)} (pip install 'archgen[onnx]')"
        return True, "ok"

    def supports(self, node: Node) -> tuple[bool, str]:
        return torch_supports(node)

    def probe(self, node: Node) -> tuple[bool, str]:
        """Slower than :meth:`supports` (seconds): traces the node's module alone with a
        symbolic sequence length, which the forward export needs. For ``archgen doctor``."""
        ok, why = self.supports(node)
        if not ok or node.op.role not in (Role.TOKEN_MIXER, Role.CHANNEL_MIXER):
            return ok, why
        from archgen.mixers.registry import build_module

        module = build_module(node.op).eval()
        why = traces_with_dynamic_length(module, node.op.d_model)  # type: ignore[attr-defined]
        return (True, "ok") if why == "ok" else (False, f"no dynamic-length export: {why}")

    def check_provider(self, options: LowerOptions) -> None:
        """Fail before exporting when the requested execution provider is not in this build."""
        import onnxruntime as ort

        if options.provider not in PROVIDERS:  # LowerOptions is typed, but the CLI passes a str
            raise ArchgenError(
                f"unknown --provider {options.provider!r}; choose one of: {', '.join(PROVIDERS)}"
            )
        wanted = PROVIDERS[options.provider]
        if wanted not in ort.get_available_providers():
            raise UnavailableError(
                f"onnxruntime execution provider {wanted} is not available here "
                f"(this onnxruntime has: {', '.join(ort.get_available_providers())})",
                hint="install onnxruntime-gpu on a machine with CUDA, or use --provider cpu",
            )

    def _meta(self, graph: Graph, options: LowerOptions) -> ArtifactMeta:
        how = f"onnxruntime {PROVIDERS[options.provider]}, {options.dtype}"
        meta = ArtifactMeta(
            self.name,
            options,
            extra={"versions": library_versions("onnx", "onnxruntime", "onnxscript")},
        )
        for node in graph.nodes:
            meta.nodes[node.name] = NodeImpl(f"ONNX export of {implementation_name(node)} ({how})")
        if options.provider != "cpu":
            meta.notes.append(
                f"onnxruntime places nodes that {PROVIDERS[options.provider]} has no kernel for "
                "on the CPU EP; run with log_severity_level=1 to see the assignment"
            )
        return meta

    def lower(self, graph: Graph, options: LowerOptions) -> OnnxArtifact:
        options = options.resolve(graph)
        check_lowerable(self, graph, options)
        self.check_provider(options)
        model = source_model(graph, options, TORCH_DTYPES[options.dtype], torch.device("cpu"))
        owned = tempfile.TemporaryDirectory(prefix="archgen-onnx-")
        folder = Path(owned.name)
        meta = self._meta(graph, options)
        meta.extra["forward"] = export_forward(model, folder / FORWARD_FILE, options)
        _note_fused_attention(meta, graph, meta.extra["forward"]["fused_attention_scopes"])
        einsums = meta.extra["forward"]["op_counts"].get("Einsum", 0)
        if einsums:  # known slow in onnxruntime's CPU EP: worth lowering to MatMul later
            meta.notes.append(
                f"model.onnx has {einsums} Einsum node(s); onnxruntime's CPU Einsum ran 2.4x "
                "slower than eager in research/perf-anchors.md §7"
            )
        ok, why = decode_support(graph) if options.decode_graph else (False, "not requested")
        if ok:
            meta.extra["decode"] = export_decode(model, folder / DECODE_FILE, options)
        else:
            meta.extra["decode"] = f"no decode graph: {why}"
            meta.notes.append(f"no decode-step graph: {why}")
        return OnnxArtifact(graph, meta, folder, ok, owned)

    def load(self, path: str | Path, graph: Graph, options: LowerOptions) -> OnnxArtifact:
        options = options.resolve(graph)
        check_lowerable(self, graph, options)
        self.check_provider(options)
        folder = Path(path)
        if not (folder / FORWARD_FILE).is_file():
            raise ArchgenError(f"{folder}: no {FORWARD_FILE} (not an onnx artifact folder)")
        meta = self._meta(graph, options)
        has_decode = (folder / DECODE_FILE).is_file()
        meta.extra["decode"] = {"file": DECODE_FILE} if has_decode else "no decode graph saved"
        return OnnxArtifact(graph, meta, folder, has_decode)
