"""The ``search:`` section's slots -> typed choices (IR ops) per layer, with positioned errors."""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import ValidationError

from archgen.ir.ops import Op, Trait
from archgen.spec.errors import SpecIssue, did_you_mean
from archgen.spec.models import CHANNEL_MIXER_SPECS, TOKEN_MIXER_SPECS, ArchSpec, expand_layers
from archgen.spec.yaml_source import Path, SourceMap

Proposals = dict[str, list[tuple[str, Op]]]  # "layers.3.token_mixer" -> [(label, op)]


def _labels(choices: list[dict[str, Any]]) -> list[str]:
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
        for j, raw in enumerate(slot.token_mixer):
            path: Path = (*base, "token_mixer", j)
            kind = raw.get("kind")
            if not isinstance(kind, str) or kind not in TOKEN_MIXER_SPECS:
                hint = did_you_mean(str(kind), TOKEN_MIXER_SPECS) if isinstance(kind, str) else ""
                what = (
                    "is a channel mixer, not a token mixer"
                    if kind in CHANNEL_MIXER_SPECS
                    else (f"is not a token mixer{hint}")
                )
                issue((*path, "kind"), f"{kind!r} {what}; known: {', '.join(TOKEN_MIXER_SPECS)}")
                continue
            for expanded in _expand(raw):
                try:
                    mixer = TOKEN_MIXER_SPECS[kind].model_validate(expanded)
                except ValidationError as exc:
                    for err in exc.errors():
                        field = (*path, *err["loc"])
                        issue(field, f"{err['msg']}, got {err.get('input')!r}")
                    continue
                if Trait.SPATIAL in mixer.op_class.traits:
                    issue((*path, "kind"), grid_op_message(kind, spec.model.task))
                    continue
                op = build_op(mixer, spec.model)
                for problem in op.problems():
                    issue((*path, problem.field), problem.message)
                valid.append((expanded, op.resolved()))
        labels = _labels([raw for raw, _ in valid])
        choices = [(label, op) for label, (_, op) in zip(labels, valid, strict=True)]
        if len(set(labels)) != len(labels):
            issue((*base, "token_mixer"), "two choices are identical: " + ", ".join(labels))
        for index in layers:
            proposals.setdefault(f"layers.{index}.token_mixer", []).extend(choices)
    return proposals, issues
