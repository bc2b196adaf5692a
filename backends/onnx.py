"""The onnx backend: ``torch.onnx.export(dynamo=True)`` of the eager model, run in onnxruntime.

Two graphs are exported, with Optimum's names and the model config in ``metadata_props``:

* ``model.onnx`` -- ``input_ids i64[batch, seq] -> logits f32[batch, seq, V]``, one output (the
  deploy graph). It is traced with one output per block boundary too; those are dropped from
  the file but their values keep the block names (``layers.0`` ...), and validation re-exposes
  them in memory, so it compares the very graph that ships (the logits come from the shipped
  session itself). Batch and sequence length are dynamic (``torch.export.Dim``), bounded by the
  options' ``max_batch`` and the profile's ``max``. No attention mask: causal, so a
  right-padded batch gives every real position the logits it would have alone.
* ``decode_step.onnx`` (causal LMs whose token mixers all have a traceable ``step``) --
  ``input_ids i64[batch, 1], position_ids i64[batch, 1], attention_mask i64[batch, past + 1],
  <state...> -> logits f32[batch, 1, V], <new state...>``: a position per sequence and a
  padding mask, so left-padded batches decode (:data:`~archgen.backends.onnx_decode.PADDING`).
  Attention's KV cache is ``past_key_values.N.key|value`` -> ``present.N.key|value`` and grows
  by one slot per step (the dynamic dim ``past``, 0 at the first step); fixed-size caches and
  recurrent states are ``window_cache.N.*``, ``checkpoint_cache.N.*``, ``conv_state.N``,
  ``ssm_state.N`` -> ``present_<name>``; the layout is in the metadata
  (``archgen.decode.state``).

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
from archgen.backends.onnx_decode import decode_support, export_decode
from archgen.backends.onnx_export import (
    FUSED_SCAN,
    export_forward,
    mamba_scan_form,
    set_metadata,
    traces_with_dynamic_length,
    with_outputs,
)
from archgen.errors import ArchgenError, UnavailableError
from archgen.ir.graph import PIXELS, Graph, Node
from archgen.ir.ops import Role
from archgen.mixers.kernels import ort_selective_scan
from archgen.mixers.kernels.ort_selective_scan import DOMAIN as SCAN_DOMAIN

FORWARD_FILE = "model.onnx"
DECODE_FILE = "decode_step.onnx"
DECODE_INPUTS = ("input_ids", "position_ids", "attention_mask")  # then the state tensors

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
def _uses_archgen_ops(source: Path | bytes) -> bool:
    """Whether the model imports archgen's custom-op domain (its fused Mamba scan)."""
    import onnx

    proto = (
        onnx.load_model_from_string(source)
        if isinstance(source, bytes)
        else onnx.load(str(source), load_external_data=False)
    )
    return any(o.domain == SCAN_DOMAIN for o in proto.opset_import)


def _register_archgen_ops(so: Any, source: Path | bytes) -> None:
    """Load archgen's custom-op library (built on first use) into the session options; a clear
    error, with the way out, where it cannot be built."""
    try:
        library = ort_selective_scan.library_path()
    except ort_selective_scan.LibraryBuildError as exc:
        name = "the model" if isinstance(source, bytes) else source.name
        raise UnavailableError(
            f"{name} runs Mamba's selective scan as the onnxruntime custom op "
            f"{FUSED_SCAN}, and archgen's library for it could not be built here: {exc}",
            hint="install a C++ compiler (or set CXX), or export with --portable (standard ONNX "
            "ops only: the scan as an ONNX Scan, slower in onnxruntime)",
        ) from None
    so.register_custom_ops_library(str(library))


def make_session(path: Path | bytes, options: LowerOptions) -> Any:
    """An onnxruntime session on a file (or a serialized model) with the options' settings, and
    archgen's custom-op library registered when the model uses its ops."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if _uses_archgen_ops(path):
        _register_archgen_ops(so, path)
    so.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, OPT_LEVELS[options.graph_opt_level]
    )
    so.intra_op_num_threads = options.threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    wanted = PROVIDERS[options.provider]
    source = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(source, so, providers=[wanted])
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
        self._validation_session: Any = None  # built on the first `boundaries` call
        self._dtype = TORCH_DTYPES[meta.options.dtype]
        meta.extra["providers"] = self.session.get_providers()

    def _feed(self, tokens: torch.Tensor) -> dict[str, np.ndarray]:
        if self.graph.model.image is not None:  # images, in the exported weights' dtype
            return {PIXELS: tokens.to(self._dtype).numpy()}
        return {"input_ids": tokens.numpy().astype(np.int64)}

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, self._feed(tokens))
        return torch.from_numpy(logits)

    def boundaries(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Block outputs from the deploy graph with its block values re-exposed as outputs (a
        second session, in memory), the logits from the shipped session itself: onnxruntime
        may optimise the two differently, and it is the shipped logits that must pass."""
        blocks = self.graph.blocks()
        if self._validation_session is None:
            import onnx

            proto = with_outputs(onnx.load(str(self.folder / FORWARD_FILE)), blocks)
            self._validation_session = make_session(proto.SerializeToString(), self.meta.options)
        values = self._validation_session.run(blocks, self._feed(tokens))
        out = {b: torch.from_numpy(v) for b, v in zip(blocks, values, strict=True)}
        return {**out, self.graph.primary_output(): self.run(tokens)}

    def measure(self, tokens: torch.Tensor, warmup: int = 3, repeats: int = 20) -> Measurement:
        feed = self._feed(tokens)
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
    def _decoder(self) -> Any:
        if self.decode_session is None:
            raise ArchgenError("this artifact has no decode graph: " + self.meta.extra["decode"])
        return self.decode_session

    def init_state(self, batch: int) -> list[np.ndarray]:
        """The decode graph's initial state (zeros; KV caches of length 0)."""
        out = []
        for inp in self._decoder().get_inputs()[len(DECODE_INPUTS) :]:
            dims = [batch if d == "batch" else 0 if isinstance(d, str) else d for d in inp.shape]
            out.append(np.zeros(dims, dtype=_numpy_dtype(inp.type)))
        return out

    def _past(self, state: list[np.ndarray]) -> int:
        """Slots in the KV caches (0 when no state grows)."""
        inputs = self._decoder().get_inputs()[len(DECODE_INPUTS) :]
        for inp, value in zip(inputs, state, strict=True):
            if "past" in inp.shape:
                return value.shape[inp.shape.index("past")]
        return 0

    def step(
        self,
        token: torch.Tensor,
        pos: int | torch.Tensor,
        state: list[np.ndarray],
        attention_mask: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, list[np.ndarray]]:
        """One decode step in onnxruntime: logits ``[B, V]`` and the new state.

        ``token [B]``; ``pos``: the position of every sequence (an int) or of each (``[B]``,
        its real tokens so far); ``attention_mask [B, past + 1]``: 1 for real tokens, 0 for
        padding, over every step so far and this one (default: all real)."""
        session = self._decoder()
        batch = token.shape[0]
        positions = np.broadcast_to(np.asarray(pos, np.int64).reshape(-1), (batch,))
        if attention_mask is None:
            attention_mask = np.ones((batch, self._past(state) + 1), np.int64)
        inputs = [
            token.numpy().astype(np.int64).reshape(batch, 1),
            positions.reshape(batch, 1).copy(),
            np.asarray(attention_mask, np.int64),
            *state,
        ]
        names = [i.name for i in session.get_inputs()]
        logits, *new_state = session.run(None, dict(zip(names, inputs, strict=True)))
        return torch.from_numpy(logits[:, 0]), new_state

    def generate_greedy(
        self, prompts: list[list[int]], new_tokens: int, pad_id: int = 0
    ) -> list[list[int]]:
        """Greedy continuations of ``prompts`` (of any lengths), decoded as one left-padded
        batch through ``decode_step.onnx``: how ``attention_mask`` and ``position_ids`` are
        meant to be fed.

        >>> artifact.generate_greedy([[5, 6, 7], [8]], new_tokens=4)  # doctest: +SKIP
        [[12, 3, 3, 9], [40, 2, 17, 17]]
        """
        if not prompts or min(map(len, prompts)) < 1:
            raise ArchgenError("generate_greedy needs prompts of at least one token each")
        batch, width = len(prompts), max(map(len, prompts))
        if width + new_tokens > self.graph.model.max_seq_len:
            raise ArchgenError(
                f"{width} prompt + {new_tokens} new tokens exceed the model's max_seq_len "
                f"{self.graph.model.max_seq_len}"
            )
        ids = np.full((batch, width), pad_id, np.int64)
        real = np.zeros((batch, width), bool)
        for b, prompt in enumerate(prompts):  # left padding: every prompt ends at `width`
            ids[b, width - len(prompt) :], real[b, width - len(prompt) :] = prompt, True
        state = self.init_state(batch)
        mask = np.zeros((batch, 0), np.int64)
        positions = np.zeros(batch, np.int64)
        out: list[list[int]] = [[] for _ in prompts]
        token, now = ids[:, 0], real[:, 0]
        for t in range(width + new_tokens - 1):
            if t < width:
                token, now = ids[:, t], real[:, t]
            else:
                now = np.ones(batch, bool)
            mask = np.concatenate([mask, now[:, None].astype(np.int64)], axis=1)
            logits, state = self.step(torch.from_numpy(token), positions, state, mask)
            positions = positions + now
            if t >= width - 1:
                token = logits.argmax(-1).numpy()
                for b in range(batch):
                    out[b].append(int(token[b]))
        return out

    def save(self, path: str | Path) -> list[str]:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        files = [FORWARD_FILE] + ([DECODE_FILE] if self.decode_session is not None else [])
        for name in files:
            if folder.resolve() != self.folder.resolve():
                shutil.copyfile(self.folder / name, folder / name)
        return [*files, write_meta(self.meta, folder)]


def _note_fused(meta: ArtifactMeta, graph: Graph, scopes: list[str], what: str) -> None:
    """Name the nodes that became fused onnxruntime nodes (by their torch scopes) in the meta."""
    for node in graph.nodes:
        if any(f"model.{node.name}" in scope for scope in scopes):
            impl = meta.nodes[node.name]
            meta.nodes[node.name] = replace(impl, impl=f"{impl.impl}, {what}")


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
                hint=(
                    "on a machine with CUDA: pip uninstall onnxruntime, then pip install "
                    "'archgen[onnx-gpu]' (the CPU package shadows the GPU one); "
                    "or use --provider cpu"
                ),
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
        ready = check_lowerable(self, graph, options)
        graph = ready.graph
        self.check_provider(options)
        model = source_model(graph, options, TORCH_DTYPES[options.dtype], torch.device("cpu"))
        owned = tempfile.TemporaryDirectory(prefix="archgen-onnx-")
        folder = Path(owned.name)
        meta = self._meta(graph, options)
        meta.notes.extend(ready.notes)
        if mamba_scan_form(graph, options) == FUSED_SCAN:
            built, why = ort_selective_scan.available()
            if not built:  # fall back to the portable scan, visibly: the model still runs
                options = replace(options, fused_scan=False)
                meta.options = options
                meta.notes.append(
                    f"Mamba scans exported as an ONNX Scan of standard ops (slower in "
                    f"onnxruntime), not as {FUSED_SCAN}: its custom-op library could not be "
                    f"built here ({why})"
                )
        forward = export_forward(model, folder / FORWARD_FILE, options, deploy=True)
        meta.extra["forward"] = forward
        _note_fused(
            meta,
            graph,
            forward["fused_attention_scopes"],
            "causal attention fused into com.microsoft.GroupQueryAttention",
        )
        _note_fused(
            meta,
            graph,
            forward["fused_scan_scopes"],
            f"selective scan as one {FUSED_SCAN} node (archgen's onnxruntime custom-op library)",
        )
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
            if graph.model.image is None:  # worth a note only where decoding is a thing
                meta.notes.append(f"no decode-step graph: {why}")
        return OnnxArtifact(graph, meta, folder, ok, owned)

    def load(self, path: str | Path, graph: Graph, options: LowerOptions) -> OnnxArtifact:
        options = options.resolve(graph)
        ready = check_lowerable(self, graph, options)
        graph = ready.graph
        self.check_provider(options)
        folder = Path(path)
        if not (folder / FORWARD_FILE).is_file():
            raise ArchgenError(f"{folder}: no {FORWARD_FILE} (not an onnx artifact folder)")
        meta = self._meta(graph, options)
        meta.notes.extend(ready.notes)
        has_decode = (folder / DECODE_FILE).is_file()
        meta.extra["decode"] = {"file": DECODE_FILE} if has_decode else "no decode graph saved"
        return OnnxArtifact(graph, meta, folder, has_decode)


def add_metadata(folder: Path, props: dict[str, str]) -> None:
    """Add ``props`` to the ``metadata_props`` of the ONNX files in ``folder`` (``archgen
    export`` adds the spec hash, which the backend does not know)."""
    import onnx

    for name in (FORWARD_FILE, DECODE_FILE):
        path = folder / name
        if path.is_file():
            proto = onnx.load(str(path))
            set_metadata(proto, props)
            onnx.save_model(proto, str(path))
