"""The typed Python API; every CLI command is a few lines over a function here.

>>> from archgen import api
>>> graph = api.compile_spec("examples/transformer.yaml")  # doctest: +SKIP
>>> api.check("examples/transformer.yaml", seq_len=1024).total.params  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archgen.errors import ArchgenError
from archgen.ir.cost import NodeCost, node_cost, node_tokens, parameter_count
from archgen.ir.graph import Graph
from archgen.ir.ops import Role
from archgen.passes import Pass, full_pipeline, parse_pipeline, run_pipeline
from archgen.passes.base import DumpHook, NoteHook
from archgen.spec.expand import graph_from_spec, resolve_spec, spec_to_data
from archgen.spec.loader import load_spec, load_spec_with_warnings, spec_warnings
from archgen.spec.models import ArchSpec, ModelSpec

__version__ = "0.1.0"

SpecLike = str | os.PathLike[str] | ArchSpec


def as_spec(spec: SpecLike) -> ArchSpec:
    return spec if isinstance(spec, ArchSpec) else load_spec(spec)


def spec_hash(spec: ArchSpec) -> str:
    """A stable hash of the resolved ``model:`` section: weights built from specs with equal
    hashes are interchangeable, whatever their ``data:``, ``train:`` or ``search:`` sections."""
    canonical = json.dumps(spec_to_data(resolve_spec(spec))["model"], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


PassesLike = str | Sequence[Pass] | None


def as_passes(passes: PassesLike) -> list[Pass]:
    """A pipeline string (``"compress_segments{s=16,local=swa}"``) or pass list -> passes."""
    if passes is None:
        return []
    return parse_pipeline(passes) if isinstance(passes, str) else list(passes)


def with_passes(spec: SpecLike, passes: str | None) -> ArchSpec:
    """``spec`` with the pipeline ``passes`` appended to its ``model.passes``, so that what is
    written from it (``spec.yaml``, the spec hash) rebuilds the rewritten graph. The text is
    checked here (:class:`~archgen.passes.PassOptionError`) and recorded as written."""
    spec = as_spec(spec)
    if passes is None:
        return spec
    parse_pipeline(passes)
    joined = ",".join(p for p in (spec.model.passes, passes.strip()) if p)
    model = spec.model.model_copy(update={"passes": joined})
    return spec.model_copy(update={"model": model})


def compile_spec(
    spec: SpecLike,
    *,
    seq_len: int | None = None,
    passes: PassesLike = None,
    dump_after: Sequence[str] = (),
    on_dump: DumpHook | None = None,
    on_note: NoteHook | None = None,
) -> Graph:
    """Spec -> IR graph: verified, typed, rewritten by the spec's ``model.passes`` and then by
    ``passes`` (if any), verified and typed again, and costed at ``seq_len``
    (:func:`archgen.passes.full_pipeline`)."""
    spec = as_spec(spec)
    graph = graph_from_spec(spec)
    pipeline = full_pipeline([*as_passes(spec.model.passes), *as_passes(passes)], seq_len)
    return run_pipeline(graph, pipeline, dump_after=dump_after, on_dump=on_dump, on_note=on_note)


@dataclass(frozen=True)
class LayerRow:
    name: str
    token_mixer: str
    channel_mixer: str
    cost: NodeCost


@dataclass(frozen=True)
class CheckReport:
    spec: ArchSpec
    graph: Graph
    seq_len: int
    rows: list[LayerRow]
    total: NodeCost
    warnings: tuple[str, ...] = ()  # e.g. a model too large to build on this machine


def check(
    spec: SpecLike,
    *,
    seq_len: int | None = None,
    passes: PassesLike = None,
    on_note: NoteHook | None = None,
) -> CheckReport:
    """Validate a spec and cost it per layer at ``seq_len`` (default: the model's max_seq_len),
    after the rewrites in ``passes`` if any. ``warnings`` holds what loads but is probably a
    mistake (:func:`~archgen.spec.loader.spec_warnings`, at file:line when ``spec`` is a file)."""
    if isinstance(spec, ArchSpec):
        notes = spec_warnings(spec.model)
    else:
        spec, notes = load_spec_with_warnings(spec)
    if seq_len is not None and not isinstance(spec.model, ModelSpec):
        raise ArchgenError(
            "--seq-len does not apply to an image-classification model: it is costed at its "
            f"image size, {spec.model.image_size}x{spec.model.image_size}",
            hint="change model.image_size in the spec to cost other images",
        )
    if seq_len is not None and seq_len > spec.model.max_seq_len:
        raise ArchgenError(
            f"--seq-len {seq_len} exceeds the model's max_seq_len {spec.model.max_seq_len}",
            hint="raise model.max_seq_len in the spec to cost longer sequences",
        )
    graph = compile_spec(spec, seq_len=seq_len, passes=passes, on_note=on_note)
    seq_len = seq_len or graph.model.max_seq_len
    tokens = node_tokens(graph, seq_len)
    rows: dict[str, dict[str, Any]] = {}
    for node in graph.nodes:
        key = node.block or node.name
        row = rows.setdefault(key, {"token": "", "channel": "", "cost": None})
        if node.op.role is Role.TOKEN_MIXER:  # a rewritten block may hold two (swa + ...)
            row["token"] = "+".join(filter(None, (row["token"], node.op.kind)))
        elif node.op.role is Role.CHANNEL_MIXER:
            row["channel"] = "+".join(filter(None, (row["channel"], node.op.kind)))
        elif node.block is None:
            row["token"] = node.op.kind
        cost = node_cost(node, tokens[node.name])
        row["cost"] = cost if row["cost"] is None else row["cost"] + cost
    out = [LayerRow(k, r["token"], r["channel"], r["cost"]) for k, r in rows.items()]
    total = out[0].cost
    for r in out[1:]:
        total = total + r.cost
    # check only costs the model: a size this machine cannot build is a warning, not an error.
    warnings = [str(issue) for issue in notes]
    too_big = memory_estimate(graph, "build").refusal()
    if too_big is not None:
        warnings.append(too_big.message)
    return CheckReport(spec, graph, seq_len, out, total, tuple(warnings))


# -- memory, estimated before allocating ---------------------------------------------------------
# float32 weights; training adds their gradients and AdamW's two moments.
WEIGHT_BYTES = 4
TRAIN_BYTES_PER_PARAM = 4 * WEIGHT_BYTES


def available_memory(device: str = "cpu") -> int | None:
    """Bytes the process can still allocate on ``device`` (None when unknown): the kernel's
    MemAvailable (free memory plus caches it can drop), or the GPU's free memory."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # not Linux: free pages only (an underestimate of what could be freed)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_count(n: int) -> str:
    """``51.56G``, ``24.7M``, ``8.2k``: how `archgen check` writes parameter counts."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class MemoryEstimate:
    """What a command will allocate, from the IR's cost model, against what the machine has.
    A lower bound (framework overheads and temporaries are not counted): refusing on it never
    refuses a run that would have fitted."""

    command: str  # build | train | export | validate | generate
    params: int
    weights_bytes: int  # parameters (with gradients and optimizer state when training)
    activation_bytes: int  # training: what the forward keeps for backward, whole batch
    available: int | None
    device: str = "cpu"
    batch: str = ""  # "16 x 128 tokens" when training

    @property
    def total(self) -> int:
        return self.weights_bytes + self.activation_bytes

    def refusal(self) -> ArchgenError | None:
        """The error to raise when it cannot fit, else None."""
        if self.available is None or self.total <= self.available:
            return None
        where = "this machine" if self.device == "cpu" else self.device
        per_param = self.weights_bytes // self.params
        parts = f"{format_count(self.params)} parameters x {per_param} bytes"
        if self.activation_bytes:
            parts += " (weights, gradients, AdamW state)"
            parts += (
                f" = {format_bytes(self.weights_bytes)}, + {format_bytes(self.activation_bytes)}"
                f" of activations for batches of {self.batch}"
            )
        if self.activation_bytes > self.weights_bytes:
            hint = "lower --batch-size or --seq-len (train.batch_size, train.seq_len)"
        else:
            hint = "lower model.d_model or the number of layers (`archgen check` shows them)"
        return ArchgenError(
            f"`archgen {self.command}` needs at least {format_bytes(self.total)} of memory "
            f"({parts}), but {where} has {format_bytes(self.available)} available",
            hint=hint,
        )


def memory_estimate(
    graph: Graph,
    command: str,
    *,
    batch_size: int = 0,
    seq_len: int = 0,
    device: str = "cpu",
) -> MemoryEstimate:
    """The memory ``command`` needs for ``graph``: float32 weights for build and export; for
    training (``batch_size`` > 0) weights, gradients and AdamW state, plus the activations
    of a batch (:meth:`Op.activation_bytes` summed over the graph)."""
    params = max(parameter_count(graph), 1)
    per_param = TRAIN_BYTES_PER_PARAM if batch_size else WEIGHT_BYTES
    activations = 0
    if batch_size:
        tokens = node_tokens(graph, seq_len)
        per_sequence = sum(n.op.activation_bytes(tokens[n.name], WEIGHT_BYTES) for n in graph.nodes)
        activations = batch_size * per_sequence
    batch = f"{batch_size} x {seq_len} tokens" if batch_size else ""
    if batch_size and graph.model.image is not None:
        size = graph.model.image.image_size
        batch = f"{batch_size} images of {size}x{size}"
    return MemoryEstimate(
        command, params, params * per_param, activations, available_memory(device), device, batch
    )


def check_memory(
    graph: Graph, command: str, *, batch_size: int = 0, seq_len: int = 0, device: str = "cpu"
) -> None:
    """Raise :class:`~archgen.errors.ArchgenError` before allocating anything when ``command``
    cannot fit in the memory available (see :func:`memory_estimate`).

    >>> check_memory(compile_spec("examples/transformer.yaml"), "build")  # doctest: +SKIP
    """
    estimate = memory_estimate(
        graph, command, batch_size=batch_size, seq_len=seq_len, device=device
    )
    refusal = estimate.refusal()
    if refusal is not None:
        raise refusal


def resolved_yaml(spec: SpecLike) -> str:
    import yaml

    return yaml.safe_dump(spec_to_data(resolve_spec(as_spec(spec))), sort_keys=False)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the spec format (for editors: yaml-language-server and friends)."""
    schema = ArchSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "archgen spec"
    return schema


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    params: int
    spec_hash: str


def _library_versions() -> dict[str, str]:
    import torch

    return {"archgen": __version__, "torch": torch.__version__}


def build(
    spec: SpecLike,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    passes: str | None = None,
    force: bool = False,
) -> BuildResult:
    """Instantiate the eager model and write ``weights.safetensors``, ``spec.yaml`` (resolved)
    and ``manifest.json`` to ``out_dir``. The folder appears complete or not at all.
    ``passes`` (a pipeline string) rewrites the graph first and is recorded in ``spec.yaml``'s
    ``model.passes``, after the spec's own.

    ``out_dir`` must not exist or be empty; ``force`` lets a previous build output there be
    replaced. Anything else there (a training run, a user's files) is refused before any work
    (:class:`~archgen.errors.ArchgenError`), ``force`` or not."""
    from archgen.backends.torch_model import build_model
    from archgen.staging import OutputFolder

    target = OutputFolder(Path(out_dir), "build", force=force)
    target.check()
    spec = with_passes(spec, passes)
    graph = compile_spec(spec)
    check_memory(graph, "build")
    model = build_model(graph, seed=seed)
    with target.staging() as staging:
        params, digest = write_model_folder(
            staging, model, spec, command="build", **_library_versions(), seed=seed
        )
    return BuildResult(target.path, params, digest)


MODEL_FILES = ["weights.safetensors", "spec.yaml"]


def write_model_folder(
    folder: Path, model: Any, spec: ArchSpec, *, command: str, **facts: Any
) -> tuple[int, str]:
    """A model folder as ``build`` and ``import`` write it: ``weights.safetensors`` (stamped
    with the spec hash), ``spec.yaml`` (resolved) and ``manifest.json`` (``command``, ``facts``,
    spec hash, model, parameters, files). Returns (parameters, spec hash)."""
    from archgen.backends.weights import save_weights

    digest = spec_hash(spec)
    params = sum(p.numel() for p in model.parameters())
    save_weights(model, folder / "weights.safetensors", {"spec_hash": digest})
    (folder / "spec.yaml").write_text(resolved_yaml(spec))
    manifest = {
        "command": command,
        **facts,
        "spec_hash": digest,
        "model": model.graph.model.name,
        "params": params,
        "files": MODEL_FILES,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return params, digest
