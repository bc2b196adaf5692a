"""``archgen export --format hf`` and ``archgen import``: Hugging Face folders in and out.

The mapping itself (classes, config fields, module renames) is :mod:`archgen.hf`; this module
moves tensors and checks numerics. Both directions load the transformers model and compare its
logits with archgen's eager float64 model on random tokens, gated by the eager float32 bounds of
:mod:`archgen.backends.validate`, before anything is published (exit 4 on a mismatch). Both need
transformers (``pip install 'archgen[hf]'``); nothing is downloaded.

>>> export_hf("examples/mamba2.yaml", "out/mamba2-hf")  # doctest: +SKIP
>>> import_hf("out/mamba2-hf", "out/mamba2-back")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archgen.api import (
    SpecLike,
    compile_spec,
    resolved_yaml,
    spec_hash,
    with_passes,
    write_model_folder,
)
from archgen.errors import ArchgenError, UnavailableError
from archgen.hf import HINT, HFLayout, hf_layout, spec_from_hf_config
from archgen.staging import OutputFolder

if TYPE_CHECKING:
    import torch
    from torch import nn

    from archgen.backends.torch_model import ArchModel
    from archgen.backends.validate import Metrics

CHECK_BATCH, CHECK_LEN = 2, 32  # random tokens of the logits check


@dataclass(frozen=True)
class HFExportResult:
    out_dir: Path
    architecture: str
    files: list[str]
    metrics: Metrics


@dataclass(frozen=True)
class HFImportResult:
    out_dir: Path
    architecture: str
    params: int
    metrics: Metrics


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UnavailableError(
            "Hugging Face interop needs transformers, which is not installed",
            hint="pip install 'archgen[hf]' (transformers>=5)",
        ) from None
    if int(transformers.__version__.split(".")[0]) < 5:  # rope_parameters, from_pretrained(dtype=)
        raise UnavailableError(
            f"Hugging Face interop needs transformers 5 or later, found {transformers.__version__}",
            hint="pip install 'archgen[hf]'",
        )
    return transformers


def quiet_transformers() -> None:
    """For the command line: no progress bars, and transformers' notes that its optional CUDA
    kernels are missing (it runs its PyTorch path, which is what the check compares) hidden."""
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _spec_and_weights(
    spec: SpecLike, weights: str | os.PathLike[str] | None
) -> tuple[SpecLike, Path | None]:
    """A model folder (build, train, distill, import) stands for its spec and its weights."""
    if isinstance(spec, str | os.PathLike) and Path(spec).is_dir():
        folder = Path(spec)
        if not (folder / "spec.yaml").is_file():
            raise ArchgenError(f"{folder} is a folder without spec.yaml", hint="give a spec file")
        if weights is None and (folder / "weights.safetensors").is_file():
            weights = folder
        spec = folder / "spec.yaml"
    if weights is None:
        return spec, None
    from archgen.backends.weights import weights_file

    return spec, weights_file(weights)


def _check_logits(archgen: ArchModel, hf: nn.Module, what: str, seed: int) -> Metrics:
    """transformers' float32 logits against archgen's float64 ones on random tokens."""
    import torch

    from archgen.backends.torch_model import ArchModel
    from archgen.backends.validate import NumericsError, compare, tolerance_for, violations

    info = archgen.graph.model
    gen = torch.Generator().manual_seed(seed)
    length = min(CHECK_LEN, info.max_seq_len)
    tokens = torch.randint(info.vocab_size, (CHECK_BATCH, length), generator=gen)
    reference = ArchModel(archgen.graph, dtype=torch.float64)
    reference.load_state_dict(archgen.state_dict())  # cast to float64 on copy
    with torch.no_grad():
        ref = reference(tokens)
        test = hf.float().eval()(input_ids=tokens, use_cache=False).logits
    metrics = compare(ref, test, logits=True)
    failures = violations(metrics, tolerance_for("eager", "float32"))
    if failures:
        raise NumericsError(
            f"{what}: transformers' logits differ from archgen's: " + "; ".join(failures),
            hint="nothing was written; please report this with the spec or config.json",
        )
    return metrics


def _hf_class(transformers: Any, layout: HFLayout) -> Any:
    cls = getattr(transformers, layout.architecture, None)
    if cls is None:
        raise UnavailableError(
            f"this transformers ({transformers.__version__}) has no {layout.architecture}",
            hint="upgrade transformers",
        )
    return cls


def export_hf(
    spec: SpecLike,
    out_dir: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    passes: str | None = None,
    seed: int = 0,
    validation_seed: int | None = None,
    force: bool = False,
) -> HFExportResult:
    """Write ``config.json`` and ``model.safetensors`` (transformers' names) that
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads, plus archgen's ``spec.yaml`` and
    ``manifest.json``. ``spec`` may be a model folder (its ``spec.yaml`` and weights).

    Raises :class:`~archgen.errors.ArchgenError` naming the first layer or attribute that has
    no transformers counterpart (:func:`archgen.hf.hf_layout`), before any work."""
    import torch

    from archgen.backends.torch_model import build_model
    from archgen.backends.weights import load_weights, save_tensors

    target = OutputFolder(Path(out_dir), "export", force=force)
    target.check()
    transformers = _transformers()
    spec, weights_path = _spec_and_weights(spec, weights)
    spec = with_passes(spec, passes)
    graph = compile_spec(spec)
    layout = hf_layout(graph)
    hf_class = _hf_class(transformers, layout)
    model = build_model(graph, seed=seed)
    if weights_path is not None:
        load_weights(model, weights_path)
    tensors = {layout.hf_name(k): v for k, v in model.state_dict().items()}
    config = {**layout.config, "transformers_version": transformers.__version__}
    files = ["config.json", "model.safetensors", "spec.yaml", "manifest.json"]
    with target.staging() as staging:
        save_tensors(tensors, staging / "model.safetensors", {"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        with torch.random.fork_rng(devices=[]):  # from_pretrained draws (discarded) inits
            hf = hf_class.from_pretrained(staging, dtype=torch.float32)
        metrics = _check_logits(model, hf, f"export of {graph.model.name}", validation_seed or 0)
        (staging / "spec.yaml").write_text(resolved_yaml(spec))
        manifest = {
            "command": "export",
            "format": "hf",
            "transformers": transformers.__version__,
            "architecture": layout.architecture,
            "spec_hash": spec_hash(spec),
            "model": graph.model.name,
            "weights": None if weights_path is None else str(weights_path),
            "files": files[:-1],
            "validation": {"passed": True, **_metrics_json(metrics)},
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return HFExportResult(target.path, layout.architecture, files, metrics)


def _metrics_json(metrics: Metrics) -> dict[str, Any]:
    return {
        "reference": "archgen eager float64",
        "test": "transformers float32",
        "tokens": [CHECK_BATCH, CHECK_LEN],
        "max_abs": metrics.max_abs,
        "rmse_ratio": metrics.rmse_ratio,
        "top1": metrics.top1,
    }


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a transformers folder: ``model.safetensors`` or its shards."""
    from archgen.backends.weights import load_tensors

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArchgenError(f"{index}: not a safetensors shard index ({exc!r})") from None
        files = [folder / s for s in shards]
    else:
        files = [folder / "model.safetensors"]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ArchgenError(
            f"{missing[0]}: not found",
            hint="archgen imports safetensors checkpoints (save_pretrained writes them)",
        )
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_tensors(file))  # a damaged file: an ArchgenError naming it
    return tensors


def _to_archgen(
    tensors: dict[str, torch.Tensor], layout: HFLayout, names: list[str], folder: Path
) -> dict[str, torch.Tensor]:
    """transformers' tensors under archgen's ``names``; every tensor must find its place."""
    import torch

    wanted = {layout.hf_name(n): n for n in names}
    # mamba-ssm checkpoints say backbone.embedding (transformers renames it on load, so do we)
    renamed = {
        k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in tensors.items()
    }
    if layout.tied:
        renamed.pop("lm_head.weight", None)  # a tied head may be saved as a copy
    unexpected = sorted(set(renamed) - set(wanted))
    missing = sorted(set(wanted) - set(renamed))
    if unexpected or missing:
        raise ArchgenError(
            f"{folder}: tensors do not match the model its config.json describes "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})",
            hint=HINT,
        )
    return {wanted[k]: v.to(torch.float32) for k, v in renamed.items()}


def import_hf(
    hf_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    max_seq_len: int | None = None,
    validation_seed: int | None = None,
    force: bool = False,
) -> HFImportResult:
    """Turn a transformers checkpoint folder (``config.json`` + safetensors, e.g. from
    ``save_pretrained``) into an archgen model folder (``spec.yaml``, ``weights.safetensors``
    in float32, ``manifest.json``) that ``--weights``, ``generate``, ``distill`` and
    ``export`` accept. Raises naming the config attribute that archgen cannot represent."""
    import torch

    from archgen.backends.torch_model import build_model
    from archgen.spec.loader import name_problem
    from archgen.spec.models import ArchSpec

    folder = Path(hf_dir)
    target = OutputFolder(Path(out_dir), "import", force=force)
    target.check()
    if not (folder / "config.json").is_file():
        raise ArchgenError(f"{folder}: no config.json", hint="give a folder from save_pretrained")
    model_name = name or folder.resolve().name
    problem = name_problem(model_name)
    if problem is not None:  # the spec written would not load
        raise ArchgenError(f"model name {model_name!r} {problem}", hint="pass --name NAME")
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise ArchgenError(f"{folder}/config.json: transformers cannot read it: {exc}") from None
    model_spec = spec_from_hf_config(config.to_dict(), name=model_name, max_seq_len=max_seq_len)
    spec = ArchSpec.model_validate({"model": model_spec})
    graph = compile_spec(spec)
    layout = hf_layout(graph, reading=True)
    model = build_model(graph)
    names = list(model.state_dict())
    model.load_state_dict(_to_archgen(_read_tensors(folder), layout, names, folder), strict=True)
    with torch.random.fork_rng(devices=[]):
        hf = _hf_class(transformers, layout).from_pretrained(folder, dtype=torch.float32)
    metrics = _check_logits(model, hf, f"import of {folder}", validation_seed or 0)
    with target.staging() as staging:
        params, _ = write_model_folder(
            staging, model, spec, command="import",
            source=str(folder.resolve()), architecture=layout.architecture,
            transformers=transformers.__version__,
            validation={"passed": True, **_metrics_json(metrics)},
        )  # fmt: skip
    return HFImportResult(target.path, layout.architecture, params, metrics)
