"""Training and distillation from specs: the API behind ``archgen train`` and ``archgen distill``.

This layer reads the spec's ``data:`` and ``train:`` sections, applies command-line overrides,
turns them into :mod:`archgen.train`'s typed configs and calls the training loop. Relative data
paths in a spec are relative to the spec file; on the command line, to the working directory.

>>> from archgen import training
>>> result = training.train("examples/transformer.yaml", steps=20)  # doctest: +SKIP
>>> result.final["bpb"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from archgen.errors import ArchgenError
from archgen.spec.training import data_source, train_config
from archgen.staging import check_run_folder, run_folder_lock
from archgen.train.config import (
    DataSource,
    TextData,
    TokenData,
    TokenizerConfig,
    TrainConfig,
    as_plain,
)
from archgen.train.images import IMAGE_SOURCES, ImageData, ImageFolderData, ShapesData
from archgen.train.tasks import TASKS, Task

if TYPE_CHECKING:
    from archgen.backends.torch_model import ArchModel
    from archgen.ir.graph import Graph
    from archgen.spec.models import ArchSpec
    from archgen.train.data import TrainingData
    from archgen.train.distill import DistillConfig
    from archgen.train.loop import TrainResult
    from archgen.train.tokenizer import TextTokenizer

SpecLike = str | os.PathLike[str]


@dataclass(frozen=True)
class TrainOptions:
    """Command-line overrides of the spec's ``train:`` section (None = keep the spec's)."""

    steps: int | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    lr: float | None = None
    bf16: bool | None = None
    seed: int | None = None

    def as_overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def data_from_cli(values: Sequence[str]) -> DataSource:
    """``--data`` values -> a data source.

    * ``task:NAME`` -- a capability task with its default knobs (set knobs in the spec);
    * a ``.bin``/``.npy`` file -- token ids (nanoGPT's flat uint16 binaries);
    * a folder holding ``train.bin`` and ``val.bin`` -- nanoGPT's prepared dataset;
    * anything else -- text files, folders or glob patterns (byte-level).
    """
    if len(values) == 1 and values[0].startswith("task:"):
        name = values[0].removeprefix("task:")
        if name not in TASKS:
            raise ArchgenError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
        return TASKS[name]()
    if len(values) == 1:
        path = Path(values[0])
        if path.suffix in (".bin", ".npy"):
            return TokenData(train=str(path))
        if (path / "train.bin").is_file() and (path / "val.bin").is_file():
            return TokenData(train=str(path / "train.bin"), val=str(path / "val.bin"))
    if any(v.startswith("task:") or Path(v).suffix in (".bin", ".npy") for v in values):
        raise ArchgenError("give one --data for a task or a token file (several only for text)")
    return TextData(paths=tuple(values))


def _relative_to(source: DataSource, folder: Path) -> DataSource:
    """Data paths of a spec, made relative to the spec's folder (absolute ones stay)."""

    def fix(p: str) -> str:
        path = Path(p).expanduser()
        return str(path if path.is_absolute() else folder / path)

    if isinstance(source, TextData):
        tokenizer = source.tokenizer
        if tokenizer is not None and tokenizer.path is not None:
            tokenizer = replace(tokenizer, path=fix(tokenizer.path))
        return replace(source, paths=tuple(fix(p) for p in source.paths), tokenizer=tokenizer)
    if isinstance(source, TokenData):
        return replace(source, train=fix(source.train), val=fix(source.val) if source.val else None)
    if isinstance(source, ImageFolderData):
        return replace(source, path=fix(source.path))
    return source


@dataclass(frozen=True)
class Prepared:
    """Everything a run needs, checked: spec, graph, data, options."""

    spec: Any  # ArchSpec
    graph: Any  # ir.Graph
    source: DataSource
    data: Any  # train.data.TrainingData
    config: TrainConfig


DEVICE_TYPES = ("cpu", "cuda", "mps")  # where train and distill run


def check_device(device: str) -> None:
    """Refuse, before any work, a ``--device`` torch cannot parse (ArchgenError, exit 2) or
    this machine lacks (UnavailableError, exit 3)."""
    import torch

    from archgen.errors import UnavailableError

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise ArchgenError(
            f"--device {device!r} is not a device archgen trains on",
            hint="cpu, cuda, cuda:N or mps",
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnavailableError(f"--device {device}: no CUDA GPU visible to torch here")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise UnavailableError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UnavailableError(f"--device {device}: no Apple GPU (MPS) here")


def prepare(
    spec: SpecLike,
    data: Sequence[str] | None = None,
    options: TrainOptions | None = None,
    *,
    device: str = "cpu",
    tokenizer: Path | None = None,
) -> Prepared:
    """Load the spec, resolve data and options, check that the run fits in ``device``'s memory
    (:func:`archgen.api.check_memory`), load and check the data (no training yet).

    Text given with ``data`` (``--data``) keeps the spec's ``data.tokenizer``; ``tokenizer``
    (a ``tokenizer.json``, e.g. a distillation teacher's) replaces the tokenizer of a text
    source that has one."""
    from archgen import api
    from archgen.paths import cache_dir
    from archgen.train.data import load_data

    check_device(device)
    arch = api.as_spec(spec)
    graph = api.compile_spec(arch)
    source = data_source(arch.data)
    if arch.data is not None and not isinstance(spec, api.ArchSpec):
        source = _relative_to(source, Path(spec).parent)
    if data:
        given = data_from_cli(data)
        if isinstance(given, TextData) and isinstance(source, TextData):
            given = replace(given, tokenizer=source.tokenizer)
        source = given
    if tokenizer is not None and isinstance(source, TextData) and source.tokenizer is not None:
        file = TokenizerConfig(kind="file", path=str(tokenizer.resolve()))
        source = replace(source, tokenizer=file)
    m = graph.model
    if m.image is not None or isinstance(source, ImageData):
        return _prepare_images(spec, arch, graph, source, options, device)
    _check_vocab(spec, graph, source)
    config = train_config(arch.train, **(options or TrainOptions()).as_overrides())
    is_task = isinstance(source, Task)
    seq_len = source.seq_len if isinstance(source, Task) else config.seq_len
    if seq_len > m.max_seq_len:
        field = "data.seq_len" if is_task else "train.seq_len"
        raise ArchgenError(
            f"{field} {seq_len} exceeds model.max_seq_len {m.max_seq_len}",
            hint=f"lower {field} or raise model.max_seq_len",
        )
    api.check_memory(graph, "train", batch_size=config.batch_size, seq_len=seq_len, device=device)
    loaded = load_data(
        source, vocab_size=m.vocab_size, seq_len=seq_len, cache=cache_dir() / "tokenizers"
    )
    if m.mask_token is not None:
        from archgen.train.diffusion import check_diffusion_data

        check_diffusion_data(loaded, m.mask_token)
    return Prepared(arch, graph, source, loaded, config)


def _prepare_images(
    spec: SpecLike,
    arch: Any,
    graph: Any,
    source: DataSource,
    options: TrainOptions | None,
    device: str,
) -> Prepared:
    """:func:`prepare` for an image classifier: image data of the model's size and classes
    (no ``data:`` section: the generated shapes)."""
    from archgen import api
    from archgen.train.data import load_data

    m = graph.model
    if m.image is None:
        raise _spec_error(
            spec, ("data", "kind"),
            f"{source.kind} gives images, but task {m.task!r} trains on token sequences",
            hint="use text, tokens or a task for a language model",
        )  # fmt: skip
    if arch.data is None:
        source = ShapesData()
    if not isinstance(source, ImageData):
        raise _spec_error(
            spec, ("data", "kind") if arch.data is not None else ("model", "task"),
            f"an image-classification model trains on images, not {source.kind}",
            hint=f"data: {{kind: shapes}} (generated) or {{kind: image_folder, path: DIR}}; "
            f"known image kinds: {', '.join(IMAGE_SOURCES)}",
        )  # fmt: skip
    if source.image_size is None:
        source = replace(source, image_size=m.image.image_size)
    if source.image_size != m.image.image_size:
        raise _spec_error(
            spec, ("data", "image_size"),
            f"{source.image_size} differs from model.image_size {m.image.image_size}",
            hint="leave data.image_size out to use the model's",
        )  # fmt: skip
    if isinstance(source, ImageFolderData):
        try:  # read every image now: a bad folder is a spec mistake, reported at data.path
            _ = source.arrays
        except ArchgenError as exc:
            raise _spec_error(
                spec, ("data", "path"), exc.message.removeprefix("data.path: "), exc.hint or ""
            ) from None
    if source.channels != m.image.in_channels:
        raise _spec_error(
            spec, ("model", "in_channels"),
            f"{m.image.in_channels}, but data ({source.kind}) gives {source.channels}-channel "
            "images", hint=f"set model.in_channels: {source.channels}",
        )  # fmt: skip
    if source.num_classes != m.image.num_classes:
        raise _spec_error(
            spec, ("model", "num_classes"),
            f"{m.image.num_classes}, but data ({source.kind}) has {source.num_classes} classes",
            hint=f"set model.num_classes: {source.num_classes}",
        )  # fmt: skip
    config = train_config(arch.train, **(options or TrainOptions()).as_overrides())
    api.check_memory(graph, "train", batch_size=config.batch_size, seq_len=1, device=device)
    loaded = load_data(source, vocab_size=m.vocab_size, seq_len=0)
    return Prepared(arch, graph, source, loaded, config)


def _check_vocab(spec: SpecLike, graph: Any, source: DataSource) -> None:
    """model.vocab_size against a text tokenizer: equal to a trained BPE's ids, at least a
    loaded file's (padding rows are common), one more where a masked-diffusion LM keeps its
    last id for the mask token. Reported at model.vocab_size (file:line for a spec file)."""
    if not isinstance(source, TextData) or source.tokenizer is None:
        return
    from archgen.train.tokenizer import tokenizer_vocab_size

    m = graph.model
    ids = tokenizer_vocab_size(source.tokenizer)
    need = ids + (1 if m.mask_token is not None else 0)
    if m.vocab_size == need or (source.tokenizer.kind == "file" and m.vocab_size > need):
        return
    what = f"the tokenizer's {ids} token ids" + (" and the mask token" if need > ids else "")
    rule = "at least" if source.tokenizer.kind == "file" else "exactly"
    raise _spec_error(
        spec, ("model", "vocab_size"),
        f"{m.vocab_size} does not fit {what}: it must be {rule} {need}",
        hint=f"set model.vocab_size: {need}" + (
            "" if source.tokenizer.kind == "file" else ", or data.tokenizer.vocab_size to match"
        ),
    )  # fmt: skip


def _spec_error(spec: SpecLike, path: tuple[str, ...], message: str, hint: str) -> ArchgenError:
    """An error about a spec field, at its file:line when the spec is a file."""
    from archgen import api
    from archgen.spec.errors import format_path

    where = ""
    if not isinstance(spec, api.ArchSpec):
        from archgen.spec.yaml_source import load_yaml

        try:
            position = load_yaml(Path(spec).read_text("utf-8"), str(spec))[1].locate(path)
        except Exception:  # the spec loaded once already; a position is a nicety
            position = None
        where = f"{spec}:{position.line}:{position.column}: " if position else f"{spec}: "
    return ArchgenError(f"{where}{format_path(path)}: {message}", hint=hint)


RUN_FILES = ("weights.safetensors", "spec.yaml", "config.json", "metrics.jsonl", "loss.png",
             "checkpoints/")  # fmt: skip
TOKENIZER_FILE = "tokenizer.json"  # beside the weights when the text went through a tokenizer


def write_run_files(
    spec: Any, graph: Any, source: DataSource, config: TrainConfig, out: Path,
    extra: dict[str, Any], *, files: Sequence[str] = RUN_FILES,
    tokenizer: TextTokenizer | None = None,
) -> None:  # fmt: skip
    """``spec.yaml`` (``spec`` resolved, with the data and options actually used),
    ``manifest.json`` and, with a ``tokenizer``, ``tokenizer.json``, so the folder works with
    ``archgen generate --weights`` and as a ``--teacher``. ``spec`` is an ArchSpec whose model
    is ``graph``'s."""
    from archgen import api
    from archgen.atomic import write_text_atomic
    from archgen.spec.expand import resolve_spec, spec_to_data

    if tokenizer is not None:
        tokenizer.save(out / TOKENIZER_FILE)
        files = [*files, TOKENIZER_FILE]
    doc = spec_to_data(resolve_spec(spec))
    doc.pop("search", None)
    doc["data"] = as_plain(source)
    doc["train"] = as_plain(config)
    write_text_atomic(out / "spec.yaml", yaml.safe_dump(doc, sort_keys=False))
    manifest = {
        **api._library_versions(),
        "spec_hash": api.spec_hash(spec),
        "model": graph.model.name,
        "files": list(files),
        **extra,
    }
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def default_out(prepared: Prepared, what: str = "train") -> Path:
    return default_folder(prepared.graph.model.name, "" if what == "train" else f"-{what}")


def default_folder(name: str, suffix: str = "", prefix: str = "") -> Path:
    """``runs/<prefix><name><suffix>``, the output folder when none is given. The loader
    refuses unsafe names with their file:line; a spec built in Python reaches here unchecked."""
    from archgen.spec.loader import name_problem

    problem = name_problem(name)
    if problem is not None:
        raise ArchgenError(
            f"model.name {problem}", hint="rename the model, or choose the output folder (-o)"
        )
    return Path("runs") / f"{prefix}{name}{suffix}"


def train(
    spec: SpecLike,
    *,
    data: Sequence[str] | None = None,
    options: TrainOptions | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Any:
    """Train the spec's model; returns :class:`archgen.train.loop.TrainResult`."""
    from archgen.train.loop import train as run

    if out is not None:  # before the data is read
        check_run_folder(Path(out), "train")
    prepared = prepare(spec, data, options, device=device)
    out_dir = Path(out) if out is not None else default_out(prepared)
    check_run_folder(out_dir, "train")
    log(f"data: {prepared.data.describe()}")
    objective, evaluator = None, None
    if prepared.graph.model.mask_token is not None:
        from archgen.train.diffusion import MaskedDiffusion

        objective = MaskedDiffusion(prepared.graph.model.mask_token)
        evaluator = objective.evaluate
    with run_folder_lock(out_dir):  # a second `train --resume` of this run stops here
        result = run(
            prepared.graph, prepared.data, prepared.config, out_dir,
            resume=resume, device=device, progress=progress, log=log,
            objective=objective, evaluator=evaluator,
        )  # fmt: skip
        write_run_files(
            prepared.spec, prepared.graph, prepared.source, prepared.config, out_dir,
            {"steps": result.steps, "final": result.final}, tokenizer=prepared.data.tokenizer,
        )  # fmt: skip
    return result


def load_trained(folder: str | os.PathLike[str]) -> Any:
    """The model in a ``build``/``train`` folder (``spec.yaml`` and ``weights.safetensors``)."""
    from archgen import api
    from archgen.backends.torch_model import build_model
    from archgen.backends.weights import load_weights

    root = Path(folder)
    if not (root / "spec.yaml").is_file() or not (root / "weights.safetensors").is_file():
        raise ArchgenError(
            f"{root} is not a model folder (needs spec.yaml and weights.safetensors)",
            hint="give a folder written by archgen train or archgen build",
        )
    model = build_model(api.compile_spec(root / "spec.yaml"))
    load_weights(model, root / "weights.safetensors")
    return model.eval()


def distill_graph(
    student: Graph,
    teacher: ArchModel | str | os.PathLike[str],
    data: TrainingData,
    config: TrainConfig,
    out: str | os.PathLike[str],
    *,
    distill_config: DistillConfig | None = None,
    init: Callable[[ArchModel], None] | None = None,
    spec: ArchSpec | None = None,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    on_wiring: Callable[[Any], None] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Distill ``teacher`` (a model, or a ``build``/``train`` folder) into the model of
    ``student`` on ``data``; ``out`` becomes a run folder (weights, ``spec.yaml``, manifest)
    that ``archgen generate --weights`` and ``--teacher`` accept. No spec file is read.

    ``init`` sets the student's starting weights (default: the teacher's same-named,
    same-shaped tensors); ``spec`` is what ``spec.yaml`` records (default: the canonical spec
    of ``student``).

    >>> teacher = load_trained("runs/tiny")  # doctest: +SKIP
    >>> config = TrainConfig(steps=20)  # doctest: +SKIP
    >>> result = distill_graph(graph, teacher, data, config, "runs/s")  # doctest: +SKIP
    """
    import torch

    from archgen.spec.expand import spec_from_graph
    from archgen.train.distill import DistillConfig
    from archgen.train.distill import distill as run

    model = teacher if isinstance(teacher, torch.nn.Module) else load_trained(teacher)
    if not isinstance(teacher, torch.nn.Module):
        _check_same_tokenizer(Path(teacher), data.tokenizer)
    teacher_graph = getattr(model, "graph", None)
    for who, graph in (("student", student), ("teacher", teacher_graph)):
        # distillation matches next-token distributions; a denoiser's are another quantity
        if graph is not None and graph.model.task != "causal-lm":
            raise ArchgenError(
                f"the {who} is a {graph.model.task}: distillation supports causal-lm models only "
                "so far",
                hint="train a masked-diffusion LM with archgen train",
            )
    dcfg = distill_config or DistillConfig()
    out_dir = Path(out)
    result = run(
        student, model, data, config, out_dir, distill_config=dcfg, init=init,
        resume=resume, device=device, progress=progress, on_wiring=on_wiring,
        log=log,
    )  # fmt: skip
    # Absolute, as manifests record every path: the run folder may be read from anywhere.
    label: dict[str, str] = {}
    if not isinstance(teacher, torch.nn.Module):
        label["teacher"] = os.path.abspath(teacher)
    extra = {"steps": result.steps, "final": result.final, **label, "distill": as_plain(dcfg)}
    write_run_files(
        spec or spec_from_graph(student), student, data.source, config, out_dir, extra,
        tokenizer=data.tokenizer,
    )  # fmt: skip
    return result


def folder_tokenizer(folder: Path) -> TextTokenizer | None:
    """The tokenizer a train/distill run saved in ``folder`` (None: a byte-level model)."""
    from archgen.train.tokenizer import TextTokenizer

    path = folder / TOKENIZER_FILE
    return TextTokenizer.load(path) if path.is_file() else None


def _check_same_tokenizer(teacher: Path, tokenizer: TextTokenizer | None) -> None:
    """Distillation compares next-token distributions id by id: both sides must tokenize alike."""
    theirs = folder_tokenizer(teacher)
    if theirs is None and tokenizer is None:
        return
    if theirs is None or tokenizer is None or theirs.digest != tokenizer.digest:
        teacher_side = "byte-level" if theirs is None else f"tokenizer {theirs.digest}"
        student_side = "byte-level" if tokenizer is None else f"tokenizer {tokenizer.digest}"
        raise ArchgenError(
            f"the teacher {teacher} is {teacher_side} but the student's data is {student_side}",
            hint="distill with the teacher's tokenizer: give the student data.tokenizer "
            "(archgen distill uses the teacher's tokenizer.json for a text source that has one)",
        )


def weights_init(weights: str | os.PathLike[str], log: Callable[[str], None] = print) -> Any:
    """An ``init`` for :func:`distill_graph` that loads ``weights`` (a safetensors file or a
    model folder) into the student, strictly: every tensor must be there with its shape."""
    from archgen.backends.weights import load_weights, weights_file

    path = weights_file(weights)
    if not path.is_file():
        raise ArchgenError(f"{path}: weights file not found")

    def init(model: ArchModel) -> None:
        load_weights(model, path)
        log(f"initialised the student from {path}")

    return init


def distill(
    student: SpecLike,
    teacher_dir: str | os.PathLike[str],
    *,
    init: str | os.PathLike[str] | None = None,
    data: Sequence[str] | None = None,
    options: TrainOptions | None = None,
    distill_options: dict[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    on_wiring: Callable[[Any], None] | None = None,
    log: Callable[[str], None] = print,
) -> Any:
    """Distill the trained model in ``teacher_dir`` into ``student``: the spec's data and
    options resolved, then :func:`distill_graph`.

    ``student`` is a spec, or a model folder (``spec.yaml`` + ``weights.safetensors``, e.g. from
    ``archgen convert``), which then also gives the starting weights. ``init`` (a weights file
    or model folder) sets them explicitly; without either the student copies the teacher's
    same-named, same-shaped tensors."""
    from archgen.train.distill import DistillConfig

    if Path(student).is_dir():
        folder = Path(student)
        if not (folder / "spec.yaml").is_file() or not (folder / "weights.safetensors").is_file():
            raise ArchgenError(
                f"{folder} is not a model folder (needs spec.yaml and weights.safetensors)",
                hint="give a spec file, or a folder written by build, train, distill or convert",
            )
        student, init = folder / "spec.yaml", init if init is not None else folder
    if out is not None:  # before the data is read
        check_run_folder(Path(out), "distill")
    # The student reads text through the teacher's tokenizer (the same ids, which the KL
    # compares); a byte-level student of a BPE teacher is refused by distill_graph.
    teacher_tokenizer = Path(teacher_dir) / TOKENIZER_FILE
    prepared = prepare(
        student, data, options, device=device,
        tokenizer=teacher_tokenizer if teacher_tokenizer.is_file() else None,
    )  # fmt: skip
    dcfg = DistillConfig(**{k: v for k, v in (distill_options or {}).items() if v is not None})
    out_dir = Path(out) if out is not None else default_out(prepared, "distilled")
    check_run_folder(out_dir, "distill")
    log(f"data: {prepared.data.describe()}; teacher: {teacher_dir}")
    with run_folder_lock(out_dir):
        return distill_graph(
            prepared.graph, teacher_dir, prepared.data, prepared.config, out_dir,
            distill_config=dcfg, init=None if init is None else weights_init(init, log),
            spec=prepared.spec, resume=resume, device=device, progress=progress,
            on_wiring=on_wiring, log=log,
        )  # fmt: skip
