"""The ``search:`` section's slots -> typed choices (IR ops) per layer, with positioned errors."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from archgen.ir.ops import Op, Trait
from archgen.spec.errors import SpecIssue, did_you_mean
from archgen.spec.models import (
    CHANNEL_MIXER_SPECS,
    TOKEN_MIXER_SPECS,
    ArchSpec,
    ModelSpec,
    expand_layers,
)
from archgen.spec.yaml_source import Path, SourceMap

Proposals = dict[str, list[tuple[str, Op]]]  # "layers.3.token_mixer" -> [(label, op)]


def choice_labels(choices: list[dict[str, Any]]) -> list[str]:
    """Short names: the kind, plus the attributes that differ between choices of that kind."""
    labels = []
    for raw in choices:
        same_kind = [c for c in choices if c["kind"] == raw["kind"]]
        varying = [k for k in raw if k != "kind" and len({repr(c.get(k)) for c in same_kind}) > 1]
        attrs = ",".join(f"{k}={raw[k]}" for k in varying)
        labels.append(f"{raw['kind']}({attrs})" if attrs else str(raw["kind"]))
    return labels


def _expand(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """``{kind: swa, window: [64, 256]}`` -> one choice per window."""
    keys = [k for k, v in raw.items() if isinstance(v, list)]
    if not keys:
        return [raw]
    out = []
    for combo in itertools.product(*(raw[k] for k in keys)):
        out.append({**raw, **dict(zip(keys, combo, strict=True))})
    return out


def search_proposals(
    spec: ArchSpec, source: SourceMap | None = None
) -> tuple[Proposals, list[SpecIssue]]:
    """``{slot: [(label, op)]}`` and the issues of the ``search:`` section. A language model's
    slot is one layer's token mixer node; an image model's (:mod:`archgen.spec.search_vision`)
    a layer's node or a stage's (:func:`search_groups` names the nodes a stage slot covers)."""
    if spec.search is not None and not isinstance(spec.model, ModelSpec):
        from archgen.spec.search_vision import vision_proposals

        proposals, _, found = vision_proposals(spec, source)
        return proposals, found
    return _lm_proposals(spec, source)


def search_groups(spec: ArchSpec) -> dict[str, tuple[str, ...]]:
    """The graph nodes of each slot that covers several (an image model's ``per: stage``)."""
    if spec.search is None or isinstance(spec.model, ModelSpec):
        return {}
    from archgen.spec.search_vision import vision_proposals

    return vision_proposals(spec, None)[1]


Issue = Callable[[Path, str], None]


def mixer_choices(
    raws: list[dict[str, Any]], path: Path, slot: str, issue: Issue
) -> list[tuple[Path, dict[str, Any], Any]]:
    """Each choice of ``path`` (a ``token_mixer`` or ``channel_mixer`` list), expanded and
    validated as a mixer spec of that slot: ``[(its path, expanded choice, mixer spec)]``."""
    table, other, role = (
        (TOKEN_MIXER_SPECS, CHANNEL_MIXER_SPECS, "token")
        if slot == "token_mixer"
        else (CHANNEL_MIXER_SPECS, TOKEN_MIXER_SPECS, "channel")
    )
    out: list[tuple[Path, dict[str, Any], Any]] = []
    for j, raw in enumerate(raws):
        where: Path = (*path, j)
        kind = raw.get("kind")
        if not isinstance(kind, str) or kind not in table:
            hint = did_you_mean(str(kind), table) if isinstance(kind, str) else ""
            what = (
                f"is a {'channel' if role == 'token' else 'token'} mixer, not a {role} mixer"
                if kind in other
                else (f"is not a {role} mixer{hint}")
            )
            issue((*where, "kind"), f"{kind!r} {what}; known: {', '.join(table)}")
            continue
        for expanded in _expand(raw):
            try:
                out.append((where, expanded, table[kind].model_validate(expanded)))
            except ValidationError as exc:
                for err in exc.errors():
                    issue((*where, *err["loc"]), f"{err['msg']}, got {err.get('input')!r}")
    return out


def _lm_proposals(spec: ArchSpec, source: SourceMap | None) -> tuple[Proposals, list[SpecIssue]]:
    from archgen.spec.loader import build_op, grid_op_message

    fname = source.filename if source else "<spec>"
    issues: list[SpecIssue] = []

    def issue(path: Path, msg: str) -> None:
        issues.append(SpecIssue(fname, source.locate(path) if source else None, path, msg))

    proposals: Proposals = {}
    if spec.search is None:
        return proposals, issues
    n_layers = len(expand_layers(spec.model.layers, ("model", "layers")))
    for i, slot in enumerate(spec.search.slots):
        base: Path = ("search", "slots", i)
        for field in ("stages", "per", "channel_mixer"):
            if getattr(slot, field) is not None:
                issue(
                    (*base, field),
                    f"{field} applies to image-classification specs; a {spec.model.task} "
                    "slot names layers and their token_mixer choices",
                )
        if slot.token_mixer is None:
            issue(base, "a slot needs token_mixer: the choices for its layers")
            continue
        if slot.layers == "all":
            layers = list(range(n_layers))
        else:
            layers = []
            for j, index in enumerate(slot.layers):
                if not 0 <= index < n_layers:
                    issue(
                        (*base, "layers", j),
                        f"layer {index} does not exist (the model has "
                        f"{n_layers} layers: 0..{n_layers - 1})",
                    )
                else:
                    layers.append(index)
        valid: list[tuple[dict[str, Any], Op]] = []
        choice_specs = mixer_choices(slot.token_mixer, (*base, "token_mixer"), "token_mixer", issue)
        for path, expanded, mixer in choice_specs:
            if Trait.SPATIAL in mixer.op_class.traits:
                issue((*path, "kind"), grid_op_message(mixer.kind, spec.model.task))
                continue
            op = build_op(mixer, spec.model)
            for problem in op.problems():
                issue((*path, problem.field), problem.message)
            valid.append((expanded, op.resolved()))
        labels = choice_labels([raw for raw, _ in valid])
        choices = [(label, op) for label, (_, op) in zip(labels, valid, strict=True)]
        if len(set(labels)) != len(labels):
            issue((*base, "token_mixer"), "two choices are identical: " + ", ".join(labels))
        for index in layers:
            proposals.setdefault(f"layers.{index}.token_mixer", []).extend(choices)
    return proposals, issues
