"""Spec files in, typed :class:`ArchSpec` out -- or a :class:`SpecError` naming every mistake.

Three stages, each with source positions: YAML syntax (``yaml_source``), structure and types
(pydantic, errors translated to plain words here), and the model's own rules (divisibility,
causality), which the IR node classes state in :meth:`Op.problems`.
"""

from __future__ import annotations

import datetime
from pathlib import Path as FilePath
from typing import Any

from pydantic import BaseModel, ValidationError

from archgen.ir.ops import (
    BIDIRECTIONAL_FORMS,
    IMAGE_TASK,
    Op,
    Trait,
    causality_problem,
    layout_problem,
)
from archgen.spec.errors import SpecError, SpecIssue, closest, did_you_mean, format_path
from archgen.spec.models import (
    CHANNEL_MIXER_SPECS,
    DOWNSAMPLE_SPECS,
    MAX_LAYERS,
    PER_BLOCK,
    TOKEN_MIXER_SPECS,
    ArchSpec,
    LayerSpec,
    ModelSpec,
    RepeatSpec,
    expand_layers,
)
from archgen.spec.training import DATA_SPECS, TrainSpec
from archgen.spec.vision_models import StageLayerSpec, StageSpec, VisionModelSpec
from archgen.spec.yaml_source import Path, SourceMap, load_yaml

MAX_SPEC_BYTES = 1 << 20  # hand-written specs are a few KiB; repeat groups keep them small


def load_spec(path: str | FilePath) -> ArchSpec:
    """Read and validate a spec file.

    >>> spec = load_spec("examples/transformer.yaml")  # doctest: +SKIP
    >>> spec.model.d_model  # doctest: +SKIP
    256
    """
    return load_spec_with_warnings(path)[0]


def load_spec_with_warnings(path: str | FilePath) -> tuple[ArchSpec, list[SpecIssue]]:
    """:func:`load_spec`, and the spec's warnings (:func:`spec_warnings`), which `archgen
    check` prints with their file:line."""
    file = FilePath(path)
    try:
        with file.open("rb") as f:
            # Bounded: /dev/zero or a model checkpoint given by mistake must not be read whole.
            raw = f.read(MAX_SPEC_BYTES + 1)
        if len(raw) > MAX_SPEC_BYTES:
            message = (
                f"the file is larger than {MAX_SPEC_BYTES // 2**20} MiB: not a spec "
                "(a spec is a short YAML file; was another file given?)"
            )
            raise SpecError([SpecIssue(str(path), None, (), message)])
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise SpecError([SpecIssue(str(path), None, (), "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([SpecIssue(str(path), None, (), f"cannot read the file: {exc}")]) from None
    return parse_spec_with_warnings(text, str(path))


def parse_spec(text: str, filename: str = "<spec>") -> ArchSpec:
    return parse_spec_with_warnings(text, filename)[0]


def parse_spec_with_warnings(
    text: str, filename: str = "<spec>"
) -> tuple[ArchSpec, list[SpecIssue]]:
    """:func:`parse_spec`, and the spec's warnings (:func:`spec_warnings`)."""
    data, source = load_yaml(text, filename)
    if not isinstance(data, dict):
        raise SpecError(
            [
                SpecIssue(
                    filename, source.locate(()), (), "the spec must be a mapping with a 'model' key"
                )
            ]
        )
    try:
        spec = ArchSpec.model_validate(data)
    except ValidationError as exc:
        errors = _without_typo_twins(exc.errors(), data)
        issues = [_translate(err, data, source) for err in errors]
        raise SpecError(_sorted_unique(issues)) from None
    issues = _name_issues(spec.model, source) + semantic_issues(spec.model, source)
    issues += _passes_issues(spec.model, source)
    if spec.search is not None:
        from archgen.spec.search_space import search_proposals

        issues += search_proposals(spec, source)[1]
    if issues:
        raise SpecError(issues)
    return spec, spec_warnings(spec.model, source)


# -- structure and type errors -----------------------------------------------------------------

_SECTION_FIELDS: dict[str, type[BaseModel]] = {
    "root": ArchSpec,
    "model": ModelSpec,
    "layer": LayerSpec,
    "repeat": RepeatSpec,
}


def _strip_tags(loc: tuple[Any, ...], data: Any) -> tuple[Path, Any, Any]:
    """Drop pydantic's union-tag entries from ``loc``; return (path, parent value, value).

    Tags sit at known places: after an item of a ``layers`` list (layer or repeat group) and
    after a ``token_mixer``/``channel_mixer`` key (the mixer kind).
    """
    path: list[str | int] = []
    parent, node = None, data
    parts = list(loc)
    i = 0
    while i < len(parts):
        part = parts[i]
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            parent, node = node, node[part]
        else:
            break
        path.append(part)
        i += 1
        tagged = (
            part in ("token_mixer", "channel_mixer", "downsample")
            or path in (["data"], ["model"])
            or (isinstance(part, int) and len(path) >= 2 and path[-2] == "layers")
        )
        if tagged and isinstance(node, dict) and i < len(parts) and isinstance(parts[i], str):
            i += 1
        if isinstance(node, list) and i < len(parts) and parts[i] == PER_BLOCK:
            i += 1  # the tag of an attribute given per block of a stage (vision_models)
    return tuple(path), parent, node


def _model_at(path: Path, parent: Any) -> type[BaseModel] | None:
    """Which spec model a mapping at ``path`` is, to suggest its valid keys."""
    if not path:
        return ArchSpec
    if path == ("model",):
        task = parent.get("task") if isinstance(parent, dict) else None
        return VisionModelSpec if task == IMAGE_TASK else ModelSpec
    if len(path) == 3 and path[1] == "stages" and isinstance(path[2], int):
        return StageSpec
    if path[-1] == "downsample" and isinstance(parent, dict) and "kind" in parent:
        kind = parent["kind"]
        return DOWNSAMPLE_SPECS.get(kind) if isinstance(kind, str) else None
    if path == ("train",):
        return TrainSpec
    if path == ("data",):
        kind = parent.get("kind") if isinstance(parent, dict) else None
        return DATA_SPECS.get(kind) if isinstance(kind, str) else None
    if isinstance(parent, dict) and "kind" in parent:
        kind = parent["kind"]
        specs = TOKEN_MIXER_SPECS if path[-1] == "token_mixer" else CHANNEL_MIXER_SPECS
        return specs.get(kind) if isinstance(kind, str) else None
    if isinstance(path[-1], int) and len(path) >= 2 and path[-2] == "block":
        return StageLayerSpec
    if isinstance(path[-1], int):
        return RepeatSpec if isinstance(parent, dict) and "repeat" in parent else LayerSpec
    return None


def _without_typo_twins(errors: list[Any], data: Any) -> list[Any]:
    """Drop "missing key K" when the same mapping has an unknown key that is a typo of K.

    ``d_modle: 64`` is one mistake; its suggestion (did you mean 'd_model'?) already says it all.
    """
    suggested: set[Path] = set()
    for err in errors:
        if err["type"] == "extra_forbidden":
            path, parent, _ = _strip_tags(err["loc"], data)
            match = _suggestion(path, parent)
            if match:
                suggested.add((*path[:-1], match))
    return [
        err
        for err in errors
        if err["type"] != "missing" or _missing_path(err, data) not in suggested
    ]


def _suggestion(path: Path, parent: Any) -> str | None:
    """The valid key that the unknown key at ``path`` is a typo of, if any."""
    owner = _model_at(path[:-1], parent)
    if owner is None or (owner is ArchSpec and path[-1] in ModelSpec.model_fields):
        return None  # a model field at the top level is misplaced, not misspelled
    return closest(str(path[-1]), owner.model_fields)


def _missing_path(err: Any, data: Any) -> Path:
    path, _, _ = _strip_tags(err["loc"], data)
    return (*path, err["loc"][-1])


def _bound(bound: Any) -> str:
    """A limit as the user would write it: ``0``, not pydantic's ``0.0`` for a float field."""
    return str(int(bound)) if isinstance(bound, float) and bound.is_integer() else str(bound)


def _describe(value: Any) -> str:
    """A value as the user wrote it in YAML (``true``, ``null``), or what it is (a list...)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()} (quote it to make it a string)"
    if isinstance(value, bytes):
        return "binary data"
    return repr(value)


def _translate(err: dict[str, Any], data: Any, source: SourceMap) -> SpecIssue:
    kind = err["type"]
    path, parent, value = _strip_tags(err["loc"], data)
    ctx = err.get("ctx", {})
    fname = source.filename
    if kind == "extra_forbidden":
        owner = _model_at(path[:-1], parent)
        valid = sorted(owner.model_fields) if owner else []
        match = _suggestion(path, parent)
        if owner is ArchSpec and path[-1] in ModelSpec.model_fields:
            where = f"; {path[-1]!r} belongs under 'model:'"
        elif match:
            where = f" (did you mean {match!r}?)"
        else:
            where = f"; valid keys: {', '.join(valid)}" if valid else ""
        msg = f"unknown key {path[-1]!r}{where}"
        return SpecIssue(fname, source.locate(path, key=True), path, msg)
    if kind == "missing":
        # The walk stops at the mapping that lacks the key, so the key is never in ``path``
        # (a repeat group's missing ``layers`` sits under ``model.layers[i]``: compare by place).
        return SpecIssue(
            fname, source.locate(path), _missing_path(err, data), "missing required key"
        )
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        if path == ("data",):
            return _data_kind_issue(kind, value, source)
        if path and path[-1] == "downsample":
            return _downsample_kind_issue(kind, value, path, source)
        role = "token mixer" if path and path[-1] == "token_mixer" else "channel mixer"
        specs = TOKEN_MIXER_SPECS if role == "token mixer" else CHANNEL_MIXER_SPECS
        others = CHANNEL_MIXER_SPECS if role == "token mixer" else TOKEN_MIXER_SPECS
        specs = _kinds_for_task(specs, data)
        if kind == "union_tag_not_found":
            msg = f"missing 'kind'; a {role} is one of: {', '.join(specs)}"
            return SpecIssue(fname, source.locate(path), path, msg)
        tag = str(ctx.get("tag"))
        written = value.get("kind") if isinstance(value, dict) else None
        if not isinstance(written, str):
            msg = f"expected a {role} kind, got {_describe(written)}; known: {', '.join(specs)}"
        elif tag in others:
            other_role = "channel mixer" if role == "token mixer" else "token mixer"
            msg = f"{tag!r} is a {other_role}, not a {role}; a {role} is one of: {', '.join(specs)}"
        else:
            msg = (
                f"unknown {role} kind {tag!r}{did_you_mean(tag, specs)}; known: {', '.join(specs)}"
            )
        return SpecIssue(fname, source.locate((*path, "kind")), (*path, "kind"), msg)
    if kind == "literal_error":
        expected = [w.strip().strip("'") for w in str(ctx.get("expected", "")).split(" or ")]
        expected = [w for part in expected for w in part.split(", ")]
        expected = [w.strip("'") for w in expected]
        if len(expected) == 1:
            msg = f"must be {expected[0]!r}, got {_describe(value)}"
        else:
            hint = did_you_mean(str(value), expected) if isinstance(value, str) else ""
            if value is None and "null" in expected:
                hint = " (YAML reads a bare null as 'no value': write \"null\" in quotes)"
            msg = f"must be one of {', '.join(expected)}; got {_describe(value)}{hint}"
        return SpecIssue(fname, source.locate(path), path, msg)
    words = {
        "greater_than_equal": lambda: f"must be >= {_bound(ctx['ge'])}, got {_describe(value)}",
        "greater_than": lambda: f"must be > {_bound(ctx['gt'])}, got {_describe(value)}",
        "less_than_equal": lambda: f"must be <= {_bound(ctx['le'])}, got {_describe(value)}",
        "int_parsing": lambda: f"expected an integer, got {_describe(value)}",
        "int_type": lambda: f"expected an integer, got {_describe(value)}",
        "int_from_float": lambda: f"expected an integer, got {_describe(value)}",
        "float_parsing": lambda: f"expected a number, got {_describe(value)}",
        "float_type": lambda: f"expected a number, got {_describe(value)}",
        "finite_number": lambda: f"expected a finite number, got {_describe(value)}",
        "bool_parsing": lambda: f"expected true or false, got {_describe(value)}",
        "bool_type": lambda: f"expected true or false, got {_describe(value)}",
        "string_type": lambda: f"expected a string, got {_describe(value)}",
        "list_type": lambda: f"expected a list, got {_describe(value)}",
        "model_type": lambda: f"expected a mapping, got {_describe(value)}",
        "model_attributes_type": lambda: f"expected a mapping, got {_describe(value)}",
        "dict_type": lambda: f"expected a mapping, got {_describe(value)}",
        "too_short": lambda: (
            "must not be empty"
            if ctx.get("min_length") == 1
            else f"must have at least {ctx.get('min_length')} items"
        ),
    }
    make = words.get(kind)
    msg = make() if make else f"{err['msg']}, got {_describe(value)}"
    return SpecIssue(fname, source.locate(path), path, msg)


def _data_kind_issue(kind: str, value: Any, source: SourceMap) -> SpecIssue:
    known = ", ".join(DATA_SPECS)
    if kind == "union_tag_not_found":
        msg = f"missing 'kind'; data is one of: {known}"
        return SpecIssue(source.filename, source.locate(("data",)), ("data",), msg)
    written = value.get("kind") if isinstance(value, dict) else None
    hint = did_you_mean(written, DATA_SPECS) if isinstance(written, str) else ""
    msg = f"unknown data kind {_describe(written)}{hint}; known: {known}"
    return SpecIssue(source.filename, source.locate(("data", "kind")), ("data", "kind"), msg)


def _kinds_for_task(specs: dict[str, Any], data: Any) -> dict[str, Any]:
    """The mixer kinds that run on the tokens of the spec's task (1-D sequences or 2-D grids),
    the ones an error message lists."""
    model = data.get("model") if isinstance(data, dict) else None
    task = model.get("task") if isinstance(model, dict) else None
    task = task if isinstance(task, str) else "causal-lm"
    context = {
        **{k: 8 for k in ("d_model", "max_seq_len", "vocab_size", "in_channels", "num_classes")},
        **{"causal": task == "causal-lm", "height": 2, "width": 2, "norm_eps": 1e-6},
    }
    return {
        kind: spec
        for kind, spec in specs.items()
        if layout_problem(
            spec.op_class(**{k: context[k] for k in spec.op_class.context_fields}), task
        )
        is None
    }


def _downsample_kind_issue(kind: str, value: Any, path: Path, source: SourceMap) -> SpecIssue:
    known = ", ".join(DOWNSAMPLE_SPECS)
    if kind == "union_tag_not_found":
        msg = f"missing 'kind'; a downsampling is one of: {known}"
        return SpecIssue(source.filename, source.locate(path), path, msg)
    written = value.get("kind") if isinstance(value, dict) else None
    hint = did_you_mean(written, DOWNSAMPLE_SPECS) if isinstance(written, str) else ""
    msg = f"unknown downsampling kind {_describe(written)}{hint}; known: {known}"
    return SpecIssue(source.filename, source.locate((*path, "kind")), (*path, "kind"), msg)


def _sorted_unique(issues: list[SpecIssue]) -> list[SpecIssue]:
    seen: dict[str, SpecIssue] = {}
    for issue in issues:
        seen.setdefault(str(issue), issue)

    def key(i: SpecIssue) -> tuple[int, int]:
        return (i.position.line, i.position.column) if i.position else (0, 0)

    return sorted(seen.values(), key=key)


NAME_MAX = 100  # a folder name with room for suffixes (-distilled, staging names)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be ``model.name``, or None. The name becomes a folder name (the
    default ``runs/<name>``, ``runs/search-<name>``): ``../../x`` or ``/tmp/x`` would put
    outputs anywhere, and a leading dot hides the folder among archgen's staging folders."""
    if not name:
        return "must not be empty"
    if len(name) > NAME_MAX:
        return f"must be at most {NAME_MAX} characters, got {len(name)}"
    bad = sorted({c for c in name if c in "/\\" or ord(c) < 32 or ord(c) == 127})
    if bad or name.startswith("."):
        what = ", ".join(repr(c) for c in bad) if bad else "a leading '.'"
        return (
            f"must be a plain file name (it names the default output folder runs/<name>); "
            f"{name!r} has {what}"
        )
    return None


def _name_issues(model: ModelSpec, source: SourceMap) -> list[SpecIssue]:
    problem = name_problem(model.name)
    if problem is None:
        return []
    path = ("model", "name")
    return [SpecIssue(source.filename, source.locate(path), path, problem)]


def _passes_issues(model: ModelSpec, source: SourceMap) -> list[SpecIssue]:
    """``model.passes`` must parse as a pipeline (whether each pass matches is the compiler's
    business: a pass that matches nothing is a note, not an error)."""
    if model.passes is None:
        return []
    from archgen.passes.pipeline import PassOptionError, parse_pipeline

    try:
        parse_pipeline(model.passes)
    except PassOptionError as exc:
        msg = exc.message + (f"; {exc.hint}" if exc.hint else "")
        path = ("model", "passes")
        return [SpecIssue(source.filename, source.locate(path), path, msg)]
    return []


# -- the model's own rules ---------------------------------------------------------------------


def op_context(model: ModelSpec) -> dict[str, int | bool]:
    """Model facts that node kinds may take as context fields (``causal``: attention's mask
    follows the task)."""
    return {
        "d_model": model.d_model,
        "vocab_size": model.vocab_size,
        "max_seq_len": model.max_seq_len,
        "causal": model.task == "causal-lm",
    }


def build_op(spec: Any, model: ModelSpec, context: dict[str, Any] | None = None) -> Op:
    """Instantiate a mixer's node from its spec, passing only the context fields it declares
    (``context``: the model's facts, :func:`op_context` by default; a vision stage's own)."""
    ctx = op_context(model) if context is None else context
    return spec.to_op(**{k: ctx[k] for k in spec.op_class.context_fields})


def semantic_issues(
    model: ModelSpec | VisionModelSpec, source: SourceMap | None = None
) -> list[SpecIssue]:
    fname = source.filename if source else "<spec>"
    if isinstance(model, VisionModelSpec):
        from archgen.spec.vision import vision_issues

        return vision_issues(model, fname, source)

    def issue(path: Path, msg: str, *, key: bool = False) -> SpecIssue:
        return SpecIssue(fname, source.locate(path, key=key) if source else None, path, msg)

    layers = expand_layers(model.layers, ("model", "layers"))
    if len(layers) > MAX_LAYERS:
        return [issue(("model", "layers"), f"expands to more than {MAX_LAYERS} layers")]
    found: list[SpecIssue] = []
    checked: set[Path] = set()
    for path, layer in layers:
        if path in checked:
            continue  # a repeated definition has the same problems every time
        checked.add(path)
        for slot in ("token_mixer", "channel_mixer"):
            mixer = getattr(layer, slot)
            if mixer is None:
                continue
            if Trait.SPATIAL in mixer.op_class.traits:  # its context (a grid) does not exist here
                found.append(issue((*path, slot, "kind"), grid_op_message(mixer.kind, model.task)))
                continue
            op = build_op(mixer, model)
            for problem in op.problems():
                found.append(issue((*path, slot, problem.field), problem.message))
            if causality_problem(op, model.task) is not None:
                field = "causal" if "causal" in mixer.model_fields_set else "kind"
                found.append(issue((*path, slot, field), _causality_message(op, model.task)))
            elif layout_problem(op, model.task) is not None:
                found.append(issue((*path, slot, "kind"), _layout_message(op, model.task)))
    return found


def grid_op_message(kind: str, task: str) -> str:
    """Why a 2-D grid op (trait SPATIAL: never causal) cannot be a layer of a language model."""
    causal = " and is not causal" if task == "causal-lm" else ""
    return (
        f"{kind!r} mixes a 2-D token grid (task {IMAGE_TASK} only){causal}, but task {task!r} "
        "has 1-D token sequences"
    )


def _layout_message(op: Op, task: str) -> str:
    """The spec-level wording of :func:`layout_problem`."""
    if task == IMAGE_TASK:
        return (
            f"{op.kind!r} runs on 1-D sequences only: it has no form over a stage's 2-D token "
            "grid yet (vision stages take attention, raft, and position-wise channel mixers)"
        )
    return (
        f"{op.kind!r} mixes a 2-D token grid (task {IMAGE_TASK} only), but task {task!r} has "
        "1-D token sequences"
    )


def _causality_message(op: Op, task: str) -> str:
    """The spec-level wording of :func:`causality_problem`: what to write instead."""
    if task == "causal-lm" and "causal" not in op.attributes():
        return (
            f"{op.kind!r} is not causal (each output mixes positions before and after it), but "
            "task 'causal-lm' needs causal token mixers"
        )
    if task == "causal-lm":
        return (
            f"{op.kind!r} is not causal here, but task 'causal-lm' needs causal token mixers "
            "(set causal: true)"
        )
    if "causal" in op.attributes():
        return (
            f"{op.kind!r} is causal here, but task {task!r} needs bidirectional token mixers "
            "(set causal: false)"
        )
    return (
        f"{op.kind!r} is causal-only (it has no bidirectional form yet), but task {task!r} needs "
        f"bidirectional token mixers: {BIDIRECTIONAL_FORMS}"
    )


def spec_warnings(
    model: ModelSpec | VisionModelSpec, source: SourceMap | None = None
) -> list[SpecIssue]:
    """What loads but is probably not what the author meant (errors would refuse specs that
    were valid so far): a sliding window longer than ``max_seq_len``, where every query sees
    every key, as in full attention."""
    fname = source.filename if source else "<spec>"
    found: list[SpecIssue] = []
    if isinstance(model, VisionModelSpec):
        return found
    checked: set[Path] = set()
    for path, layer in expand_layers(model.layers, ("model", "layers")):
        if path in checked:
            continue
        checked.add(path)
        for slot in ("token_mixer", "channel_mixer"):
            mixer = getattr(layer, slot)
            window = getattr(mixer, "window", None)
            # Not the default (256), which short models leave as is and resolved specs
            # (spec.yaml of a build or run folder) write out.
            if mixer is None or "window" not in mixer.model_fields_set:
                continue
            if not isinstance(window, int) or window <= model.max_seq_len:
                continue
            if window == type(mixer).model_fields["window"].default:
                continue
            where = (*path, slot, "window")
            found.append(
                SpecIssue(
                    fname,
                    source.locate(where) if source else None,
                    where,
                    f"window {window} exceeds model.max_seq_len {model.max_seq_len}: every query "
                    "sees every key, as in kind: attention (lower the window, or raise "
                    "max_seq_len)",
                )
            )
    return found


__all__ = [
    "format_path",
    "load_spec",
    "load_spec_with_warnings",
    "name_problem",
    "parse_spec",
    "parse_spec_with_warnings",
    "semantic_issues",
    "spec_warnings",
]
