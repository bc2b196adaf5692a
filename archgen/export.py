"""Export, validate and doctor: the typed functions behind ``archgen export | validate | doctor``.

>>> from archgen import export
>>> result = export.export("examples/transformer.yaml", "out/tiny", fmt="onnx")  # doctest: +SKIP
>>> result.report.passed, result.files  # doctest: +SKIP
(True, ['model.onnx', 'decode_step.onnx', 'artifact.json', 'numerics.json', 'spec.yaml', ...])

An export folder appears complete and validated, or not at all: everything is written to a
staging folder beside the target and renamed into place only after validation passed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from archgen.api import (
    SpecLike,
    check_memory,
    compile_spec,
    resolved_yaml,
    spec_hash,
    with_passes,
)
from archgen.backends.base import (
    Backend,
    Device,
    DType,
    LowerOptions,
    Provider,
    backend_names,
    check_lowerable,
    get_backend,
    library_versions,
)
from archgen.errors import ArchgenError, UnavailableError
from archgen.ir.graph import Graph
from archgen.staging import OutputFolder

if TYPE_CHECKING:
    from archgen.backends.base import Artifact
    from archgen.backends.validate import NumericsReport

Format = Literal["onnx", "tensorrt", "torch"]
FORMAT_BACKEND: dict[str, str] = {"onnx": "onnx", "tensorrt": "tensorrt", "torch": "eager"}


@dataclass(frozen=True)
class Profile:
    """The sequence-length options shared by export and validate (None: defaults)."""

    min_seq: int | None = None
    opt_seq: int | None = None
    max_seq: int | None = None


def lower_options(
    graph: Graph,
    *,
    dtype: DType,
    weights: str | os.PathLike[str] | None,
    profile: Profile,
    seed: int = 0,
    provider: Provider = "cpu",
    device: Device = "cpu",
    portable: bool = False,
) -> LowerOptions:
    """``portable``: standard ONNX ops only (no onnxruntime contrib ops such as the fused
    ``GroupQueryAttention``, no archgen custom ops such as the fused Mamba scan), for other
    ONNX runtimes. ``weights``: a safetensors file or a
    folder holding ``weights.safetensors`` (build, train, distill, a search's ``best/``)."""
    if weights is not None:
        from archgen.backends.weights import weights_file

        weights = weights_file(weights)
    return LowerOptions(
        dtype=dtype,
        min_seq=profile.min_seq,
        opt_seq=profile.opt_seq,
        max_seq=profile.max_seq,
        seed=seed,
        weights=None if weights is None else str(weights),
        provider=provider,
        device=device,
        fused_attention=not portable,
        fused_scan=not portable,
    ).resolve(graph)


def _ready(backend_name: str, graph: Graph, options: LowerOptions) -> Backend:
    """The backend, after checking (before any work) that it can lower ``graph`` here."""
    if graph.model.mask_token is not None and backend_name == "tensorrt":
        # not built or validated on a TensorRT machine yet
        raise ArchgenError(
            f"the {backend_name} backend does not support {graph.model.task} models yet",
            hint="export with --format onnx (onnxruntime), or validate on --backend eager",
        )
    backend = get_backend(backend_name)
    check_lowerable(backend, graph, options)
    if options.weights is not None and not Path(options.weights).is_file():
        raise ArchgenError(f"{options.weights}: weights file not found")
    return backend


# -- validate ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ValidateResult:
    report: NumericsReport
    artifact: Artifact


def validate(
    spec: SpecLike,
    *,
    backend: str = "onnx",
    dtype: DType = "float32",
    weights: str | os.PathLike[str] | None = None,
    profile: Profile = Profile(),
    seed: int | None = None,
    provider: Provider = "cpu",
    device: Device = "cpu",
    portable: bool = False,
) -> ValidateResult:
    """Lower ``spec`` on ``backend`` and compare it with the eager float64 reference."""
    from archgen.backends.validate import validate as run_validation

    graph = compile_spec(spec)
    check_memory(graph, "validate")  # before building a model (twice) there is no room for
    options = lower_options(
        graph,
        dtype=dtype,
        weights=weights,
        profile=profile,
        provider=provider,
        device=device,
        portable=portable,
    )
    artifact = _ready(backend, graph, options).lower(graph, options)
    return ValidateResult(run_validation(artifact, seed=seed), artifact)


# -- export ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    files: list[str]
    report: NumericsReport
    artifact: Artifact


def export(
    spec: SpecLike,
    out_dir: str | os.PathLike[str],
    *,
    fmt: Format = "onnx",
    dtype: DType = "float32",
    weights: str | os.PathLike[str] | None = None,
    profile: Profile = Profile(),
    seed: int = 0,
    validation_seed: int | None = None,
    provider: Provider = "cpu",
    portable: bool = False,
    passes: str | None = None,
    force: bool = False,
) -> ExportResult:
    """Lower ``spec`` for ``fmt``, validate it, and write the engine(s), ``spec.yaml``
    (resolved), ``numerics.json`` and ``manifest.json`` to ``out_dir``. ``passes`` (a pipeline
    string) rewrites the graph first and is recorded in ``spec.yaml``'s ``model.passes``.

    ``out_dir`` must not exist or be empty; ``force`` lets a previous export output there be
    replaced. Anything else there (a build or training folder, a user's files) is refused
    before any work (:class:`~archgen.errors.ArchgenError`), ``force`` or not.

    Raises :class:`~archgen.errors.UnavailableError` (exit 3) before doing anything when the
    format's backend cannot run here, and :class:`~archgen.backends.validate.NumericsError`
    (exit 4) when validation fails; in both cases ``out_dir`` is left untouched."""
    if fmt not in FORMAT_BACKEND:
        raise ArchgenError(f"unknown format {fmt!r}; known: {', '.join(FORMAT_BACKEND)}")
    target = OutputFolder(Path(out_dir), "export", force=force)
    target.check()
    # Fail fast: an unavailable backend is reported before the spec is even compiled.
    ok, why = get_backend(FORMAT_BACKEND[fmt]).is_available()
    if not ok:
        raise UnavailableError(f"cannot export {fmt} on this machine: {why}")
    from archgen.backends.validate import NumericsError  # torch: imported after the check
    from archgen.backends.validate import validate as run_validation

    spec = with_passes(spec, passes)
    graph = compile_spec(spec)
    check_memory(graph, "export")  # before building the model it would not have room for
    options = lower_options(
        graph,
        dtype=dtype,
        weights=weights,
        profile=profile,
        seed=seed,
        provider=provider,
        portable=portable,
    )
    backend = _ready(FORMAT_BACKEND[fmt], graph, options)

    out = target.path
    digest = spec_hash(spec)
    with target.staging() as staging:
        artifact = backend.lower(graph, options)
        files = artifact.save(staging)
        if fmt == "onnx":  # the config the backend wrote, plus what only the spec knows
            from archgen.backends.onnx import add_metadata

            add_metadata(staging, {"archgen.spec_hash": digest})
        report = run_validation(artifact, seed=validation_seed)
        if not report.passed:
            first = report.first_failure
            assert first is not None
            raise NumericsError(
                f"validation failed: first failing block {first.name} at L={first.seq_len}: "
                + "; ".join(first.failures),
                hint=f"nothing was written to {out}; `archgen validate` shows every block",
            ).with_report(report)
        report.write(staging / "numerics.json")
        (staging / "spec.yaml").write_text(resolved_yaml(spec))
        files += ["numerics.json", "spec.yaml", "manifest.json"]
        tokenizer = _tokenizer_beside(weights)
        if tokenizer is not None:  # generate reads text through it beside the artifact
            shutil.copyfile(tokenizer, staging / tokenizer.name)
            files.append(tokenizer.name)
        manifest = {
            "command": "export",
            "versions": artifact.meta.extra.get("versions", library_versions()),
            "spec_hash": digest,
            "model": graph.model.name,
            "format": fmt,
            "backend": backend.name,
            "options": options.to_json(),
            "files": files,
            "validation": {
                "passed": True,
                "reference": "eager float64",
                "seq_lens": list(report.seq_lens),
                "worst": report.to_json()["worst"],
            },
            "fallbacks": artifact.meta.fallbacks(),
            "notes": artifact.meta.notes,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return ExportResult(out, files, report, artifact)


def _tokenizer_beside(weights: str | os.PathLike[str] | None) -> Path | None:
    """The ``tokenizer.json`` of a run folder given as ``--weights`` (or beside a weights
    file): a BPE model's text goes through it, so ``archgen generate --weights EXPORT`` needs it
    in the export folder too."""
    if weights is None:
        return None
    folder = Path(weights) if Path(weights).is_dir() else Path(weights).parent
    found = folder / "tokenizer.json"
    return found if found.is_file() else None


# -- doctor ------------------------------------------------------------------------------------
DECODE_COLUMN = "onnx decode"


@dataclass
class DoctorReport:
    backends: list[str]
    available: dict[str, tuple[bool, str]]
    # (node kind, role) -> backend -> "ok" or the reason it cannot lower
    cells: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


def doctor(spec: SpecLike, *, deep: bool = True) -> DoctorReport:
    """Which node kinds of ``spec`` each backend can lower on this machine, and why not.

    ``deep`` also runs the backends' slower probes (the onnx backend traces each mixer alone
    with a symbolic sequence length: seconds per kind)."""
    from archgen.ir.ops import Role, Trait

    graph = compile_spec(spec)
    names = backend_names()
    backends = {name: get_backend(name) for name in names}
    available = {n: b.is_available() for n, b in backends.items()}
    # The onnx backend's second graph: one decode step, for token mixers with a traceable step.
    report = DoctorReport([*names, DECODE_COLUMN], {**available, DECODE_COLUMN: available["onnx"]})
    for node in graph.nodes:
        key = (node.op.kind, node.op.role.value)
        if key in report.cells:
            continue
        row = report.cells[key] = {}
        for name, backend in backends.items():
            ok, why = report.available[name]
            if not ok:
                row[name] = f"not available on this machine: {why}"
                continue
            probe = getattr(backend, "probe", None) if deep else None
            ok, why = probe(node) if probe is not None else backend.supports(node)
            row[name] = "ok" if ok else why
        if not available["onnx"][0] or node.op.role is not Role.TOKEN_MIXER:
            row[DECODE_COLUMN] = "ok" if available["onnx"][0] else "unavailable"
            continue
        traceable = node.op.has(Trait.DECODE_EXPORTABLE)
        row[DECODE_COLUMN] = "ok" if traceable else "no traceable decode step"
    return report
