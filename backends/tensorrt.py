"""The tensorrt backend: the onnx backend's ``model.onnx`` -> a serialized TensorRT engine.

The engine is built from the same deploy graph the onnx backend ships: ``model.onnx``,
``input_ids i64[batch, seq] -> logits f32[batch, seq, V]`` with the model config in its metadata
(standard ONNX ops only: no onnxruntime contrib ops, Mamba's scan as an ONNX Scan). Its one
optimization profile is over ``input_ids``: ``min = (1, min_seq)``, ``opt = (batch, opt_seq)``,
``max = (max_batch, max_seq)``. Precision: float32 (TF32 disabled, so matmuls stay IEEE
float32), float16 or bfloat16 (weakly-typed builder flags; TensorRT keeps layers it cannot run
in reduced precision in float32 and its build log says which).

Validation needs the block outputs the deploy engine does not have: as the onnx backend does,
a second engine is built in memory (never saved) from ``model.onnx`` with its block values
re-exposed as outputs (:func:`validation_onnx`), and the logits compared are the shipped
engine's.

``tensorrt`` and torch are imported inside functions only, so importing this module, asking
:meth:`TensorRTBackend.is_available` and the CLI's fail-fast check need neither tensorrt nor a
GPU, and take no torch import time when tensorrt is missing.

UNTESTED: the development machine has no GPU and no tensorrt package; only the availability
checks and the fail-fast errors run in CI (tests/backends/test_tensorrt.py). The code follows
the TensorRT 10 Python API (``build_serialized_network``, named I/O tensors,
``execute_async_v3``).
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from archgen.atomic import write_bytes_atomic
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
    write_meta,
)
from archgen.ir.graph import Graph, Node

if TYPE_CHECKING:
    import torch

from archgen.errors import ArchgenError

ENGINE_FILE = "model.engine"
ONNX_FILE = "model.onnx"  # the deploy graph, as backends/onnx.py writes it
INPUT = "input_ids"  # its one input (backends/onnx_export.export_forward with deploy=True)


def _require_trt() -> Any:
    import tensorrt as trt

    return trt


def _logger() -> Any:
    trt = _require_trt()
    return trt.Logger(trt.Logger.WARNING)


def write_onnx(graph: Graph, options: LowerOptions, folder: Path) -> dict[str, Any]:
    """Write the deploy ``model.onnx`` the engine is built from into ``folder``: the onnx
    backend's graph (same input and output names, metadata) in standard ops only, float32
    (reduced precision is TensorRT's choice per layer). ``options`` must be resolved."""
    import torch

    from archgen.backends.eager import TORCH_DTYPES, source_model
    from archgen.backends.onnx_export import export_forward

    options = replace(options, fused_attention=False, fused_scan=False)
    model = source_model(graph, options, TORCH_DTYPES["float32"], torch.device("cpu"))
    return export_forward(model, folder / ONNX_FILE, options, deploy=True)


def validation_onnx(graph: Graph, folder: Path) -> bytes:
    """``folder``'s ``model.onnx`` with the block values re-exposed as outputs (after the
    logits): what the validation engine is built from."""
    import onnx

    from archgen.backends.onnx_export import with_outputs

    proto = with_outputs(onnx.load(str(folder / ONNX_FILE)), graph.blocks())
    return proto.SerializeToString()


def build_engine(
    onnx_model: Path | bytes, options: LowerOptions, engine_path: Path | None = None
) -> tuple[bytes, dict[str, Any]]:
    """Parse ``onnx_model`` (a file or its bytes), build with one optimization profile over
    ``input_ids``; write the engine atomically to ``engine_path`` if given."""
    trt = _require_trt()
    assert options.min_seq and options.opt_seq and options.max_seq, "options must be resolved"
    start = time.perf_counter()
    logger = _logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    parsed = (
        parser.parse_from_file(str(onnx_model))
        if isinstance(onnx_model, Path)
        else parser.parse(onnx_model)
    )
    if not parsed:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        name = onnx_model.name if isinstance(onnx_model, Path) else "the validation graph"
        raise UnsupportedError(f"TensorRT cannot parse {name}: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)  # float32 means float32: TF32 would be a fallback
    if options.dtype == "float16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif options.dtype == "bfloat16":
        config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    profile.set_shape(
        INPUT,
        (1, options.min_seq),
        (options.batch, options.opt_seq),
        (options.max_batch, options.max_seq),
    )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UnsupportedError("TensorRT failed to build the engine (see its log above)")
    engine = bytes(serialized)
    if engine_path is not None:
        write_bytes_atomic(engine_path, engine)
    return engine, {
        "file": engine_path.name if engine_path is not None else None,
        "build_s": time.perf_counter() - start,
        "bytes": len(engine),
        "profile": {
            "min": [1, options.min_seq],
            "opt": [options.batch, options.opt_seq],
            "max": [options.max_batch, options.max_seq],
        },
    }


class _Engine:
    """A deserialized engine and its execution context, run on named tensors."""

    def __init__(self, serialized: bytes, where: str) -> None:
        import torch

        trt = _require_trt()
        self._runtime = trt.Runtime(_logger())
        self.engine = self._runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise ArchgenError(f"{where}: TensorRT could not load the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [
            n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        ]
        self._torch_dtype = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.BF16: torch.bfloat16,
            trt.DataType.INT64: torch.int64,
            trt.DataType.INT32: torch.int32,
        }

    def execute(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        import torch

        device = torch.device("cuda")
        input_ids = input_ids.to(device=device, dtype=torch.int64).contiguous()
        self.context.set_input_shape(INPUT, tuple(input_ids.shape))
        self.context.set_tensor_address(INPUT, input_ids.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = self._torch_dtype[self.engine.get_tensor_dtype(name)]
            outs[name] = torch.empty(shape, dtype=dtype, device=device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ArchgenError("TensorRT execution failed")
        stream.synchronize()
        return outs


class TensorRTArtifact(Artifact):
    def __init__(self, graph: Graph, meta: ArtifactMeta, folder: Path, owned: Any = None) -> None:
        self.graph, self.meta, self.folder = graph, meta, folder
        self._owned = owned
        self._deploy = _Engine((folder / ENGINE_FILE).read_bytes(), str(folder / ENGINE_FILE))
        self._validation: _Engine | None = None  # built on the first `boundaries` call

    def _execute(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._deploy.execute(tokens)

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._execute(tokens)[self.graph.primary_output()].cpu()

    def boundaries(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Block outputs from the validation engine, the logits from the shipped engine."""
        if self._validation is None:
            source = validation_onnx(self.graph, self.folder)
            serialized, _ = build_engine(source, self.meta.options)
            self._validation = _Engine(serialized, "the validation engine")
        values = self._validation.execute(tokens)
        out = {b: values[b].cpu() for b in self.graph.blocks()}
        return {**out, self.graph.primary_output(): self.run(tokens)}

    def measure(self, tokens: torch.Tensor, warmup: int = 3, repeats: int = 20) -> Measurement:
        import torch

        tokens = tokens.cuda()
        for _ in range(warmup):
            self._execute(tokens)
        times = []
        for _ in range(repeats):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            self._execute(tokens)
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        return Measurement(
            tuple(times),
            tokens.shape[0],
            tokens.shape[1],
            0,
            "cuda: " + torch.cuda.get_device_name(),
            library_versions("tensorrt", "onnx"),
        )

    def save(self, path: str | Path) -> list[str]:
        import shutil

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        files = [ENGINE_FILE, ONNX_FILE]
        for name in files:
            if folder.resolve() != self.folder.resolve():
                shutil.copyfile(self.folder / name, folder / name)
        return [*files, write_meta(self.meta, folder)]


class TensorRTBackend(Backend):
    name: ClassVar[str] = "tensorrt"
    dtypes: ClassVar[frozenset[str]] = frozenset({"float32", "float16", "bfloat16"})
    summary: ClassVar[str] = "ONNX -> TensorRT engine with an optimization profile (NVIDIA GPU)"

    def is_available(self) -> tuple[bool, str]:
        missing = []
        if importlib.util.find_spec("tensorrt") is None:
            missing.append("no module named tensorrt (pip install 'archgen[tensorrt]')")
        else:  # only then is the torch import worth its time
            import torch

            if not torch.cuda.is_available():
                missing.append("no CUDA GPU visible to torch")
        if importlib.util.find_spec("onnx") is None:
            missing.append("no module named onnx (pip install 'archgen[onnx]')")
        return (False, "; ".join(missing)) if missing else (True, "ok")

    def supports(self, node: Node) -> tuple[bool, str]:
        from archgen.backends.eager import torch_supports

        # Lowered through the onnx export; TensorRT's own op coverage is checked by its parser.
        return torch_supports(node)

    def _meta(self, graph: Graph, options: LowerOptions) -> ArtifactMeta:
        from archgen.backends.eager import implementation_name

        meta = ArtifactMeta(
            self.name, options, extra={"versions": library_versions("tensorrt", "onnx")}
        )
        for node in graph.nodes:
            meta.nodes[node.name] = NodeImpl(
                f"ONNX export of {implementation_name(node)} (TensorRT engine, {options.dtype})"
            )
        if options.dtype != "float32":
            meta.notes.append(
                f"{options.dtype} is a builder preference: TensorRT keeps layers without a "
                f"{options.dtype} kernel in float32 (listed in its verbose build log)"
            )
        return meta

    def lower(self, graph: Graph, options: LowerOptions) -> TensorRTArtifact:
        # TensorRT's ONNX parser knows standard ops only: no onnxruntime contrib ops.
        options = replace(options.resolve(graph), fused_attention=False, fused_scan=False)
        ready = check_lowerable(self, graph, options)  # UnavailableError (exit 3) without tensorrt
        graph = ready.graph
        owned = tempfile.TemporaryDirectory(prefix="archgen-trt-")
        folder = Path(owned.name)
        meta = self._meta(graph, options)
        meta.notes.extend(ready.notes)
        meta.extra["onnx"] = write_onnx(graph, options, folder)
        _, meta.extra["engine"] = build_engine(folder / ONNX_FILE, options, folder / ENGINE_FILE)
        return TensorRTArtifact(graph, meta, folder, owned)

    def load(self, path: str | Path, graph: Graph, options: LowerOptions) -> TensorRTArtifact:
        options = options.resolve(graph)
        ready = check_lowerable(self, graph, options)
        graph = ready.graph
        folder = Path(path)
        if not (folder / ENGINE_FILE).is_file():
            raise ArchgenError(f"{folder}: no {ENGINE_FILE} (not a tensorrt artifact folder)")
        meta = self._meta(graph, options)
        meta.notes.extend(ready.notes)
        return TensorRTArtifact(graph, meta, folder)
