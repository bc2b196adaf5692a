"""The ``search:`` slots of an image-classification spec -> typed choices per graph node.

A slot names stages (``stages``, default all) and, within each, layers of the stage's expanded
block list (``layers``: indices into ``depth x block``, default all); ``token_mixer`` or
``channel_mixer`` lists the choices. ``per: block`` (the default) makes every chosen layer a
slot of its own (``stages.1.layers.0.token_mixer``); ``per: stage`` makes one slot per stage
(``stages.1.token_mixer``) whose choice applies to all its chosen layers.

Every choice is built with the stage's context (its width, its grid's height and width), as
the stage's own nodes are (:func:`archgen.spec.vision.stage_context`): a mixer whose weights
are tied to the grid (raft, spectrum) gets that stage's grid. A choice that cannot run there --
a 1-D sequence mixer with no form over a 2-D grid, a causal-only mixer, attributes its rules
refuse at that width or grid -- is an error at the choice's line, naming the stage.
"""

from __future__ import annotations

from typing import Any

from archgen.ir.ops import IMAGE_TASK, Op, causality_problem, layout_problem
from archgen.spec.errors import SpecIssue
from archgen.spec.models import ArchSpec
from archgen.spec.search_space import Issue, Proposals, choice_labels, mixer_choices
from archgen.spec.vision import _op, stage_context
from archgen.spec.vision_models import StageGrid, VisionModelSpec, stage_grids
from archgen.spec.yaml_source import Path, SourceMap

Groups = dict[str, tuple[str, ...]]  # a per-stage slot -> the graph nodes it rewrites


def stage_layers(model: VisionModelSpec, stage: int) -> list[tuple[bool, bool]]:
    """Whether each expanded layer of ``stage`` has a token mixer and a channel mixer."""
    block = model.stages[stage].block
    one = [(layer.token_mixer is not None, layer.channel_mixer is not None) for layer in block]
    return one * model.stages[stage].depth


def vision_proposals(
    spec: ArchSpec, source: SourceMap | None
) -> tuple[Proposals, Groups, list[SpecIssue]]:
    model = spec.model
    assert isinstance(model, VisionModelSpec) and spec.search is not None
    fname = source.filename if source else "<spec>"
    issues: list[SpecIssue] = []

    def issue(path: Path, msg: str) -> None:
        found = SpecIssue(fname, source.locate(path) if source else None, path, msg)
        if found not in issues:  # one message per choice, not one per stage it is tried in
            issues.append(found)

    proposals: Proposals = {}
    groups: Groups = {}
    grids, problem = stage_grids(model)
    if problem is not None:
        return proposals, groups, issues  # the model section's own error says it
    w = spec.search.workload
    if w.seq_len is not None:
        issue(
            ("search", "workload", "seq_len"),
            f"an image model reads whole images ({model.image_size}x{model.image_size}, "
            "model.image_size): no seq_len; search.workload.batch is the images per forward",
        )
    if w.phase != "prefill":
        issue(
            ("search", "workload", "phase"),
            f"an image classifier runs one forward per batch of images: phase prefill, not "
            f"{w.phase!r}",
        )
    n_stages = len(model.stages)
    for i, slot in enumerate(spec.search.slots):
        base: Path = ("search", "slots", i)
        given = [f for f in ("token_mixer", "channel_mixer") if getattr(slot, f) is not None]
        if len(given) != 1:
            issue(base, "a slot takes token_mixer or channel_mixer (the choices), one of them")
            continue
        field = given[0]
        if slot.stages is None or slot.stages == "all":
            stages = list(range(n_stages))
        else:
            stages = []
            for j, index in enumerate(slot.stages):
                if 0 <= index < n_stages:
                    stages.append(index)
                else:
                    issue(
                        (*base, "stages", j),
                        f"stage {index} does not exist (the model has {n_stages} stages: "
                        f"0..{n_stages - 1})",
                    )
        specs = mixer_choices(getattr(slot, field), (*base, field), field, issue)
        labels = choice_labels([raw for _, raw, _ in specs])
        if len(set(labels)) != len(labels):
            issue((*base, field), "two choices are identical: " + ", ".join(labels))
        for stage in stages:
            ctx = stage_context(model, stage, grids[stage])
            layers = _layers(model, stage, slot.layers, field, (*base, "layers"), issue)
            choices: list[tuple[str, Op]] = []
            for (path, _, mixer), label in zip(specs, labels, strict=True):
                op = _choice_op(mixer, ctx, stage, grids[stage], path, issue)
                if op is not None:
                    choices.append((label, op))
            nodes = tuple(f"stages.{stage}.layers.{n}.{field}" for n in layers)
            grouped = {n for g in groups.values() for n in g}
            if slot.per == "stage" and nodes:
                name = f"stages.{stage}.{field}"
                if name in groups or grouped & set(nodes) or set(proposals) & set(nodes):
                    issue(base, f"a layer of stage {stage} is in this slot and another one")
                groups[name] = nodes
                proposals.setdefault(name, []).extend(choices)
            else:
                if grouped & set(nodes):
                    issue(base, f"a layer of stage {stage} is in this slot and a per-stage one")
                for node in nodes:
                    proposals.setdefault(node, []).extend(choices)
    return proposals, groups, issues


def _layers(
    model: VisionModelSpec, stage: int, wanted: list[int] | str, field: str, path: Path,
    issue: Issue,
) -> list[int]:  # fmt: skip
    """The expanded layers of ``stage`` the slot covers: those with a ``field`` node."""
    present = stage_layers(model, stage)
    has = [p[0] if field == "token_mixer" else p[1] for p in present]
    if isinstance(wanted, str):  # "all"
        return [n for n, ok in enumerate(has) if ok]
    out = []
    for j, n in enumerate(wanted):
        if not 0 <= n < len(has):
            issue(
                (*path, j),
                f"stage {stage} has {len(has)} layers (depth x block: 0..{len(has) - 1}), not {n}",
            )
        elif not has[n]:
            issue((*path, j), f"layer {n} of stage {stage} has no {field} to replace")
        else:
            out.append(n)
    return out


def _choice_op(
    mixer: Any, ctx: dict[str, Any], stage: int, grid: StageGrid, path: Path, issue: Issue
) -> Op | None:
    """The choice built on ``stage``'s grid, or None (with an issue) when it cannot run there."""
    op = _op(mixer, ctx)
    reason = causality_problem(op, IMAGE_TASK) or layout_problem(op, IMAGE_TASK)
    if reason is not None:
        issue(
            (*path, "kind"),
            f"{op.kind!r} cannot be a choice of an image model's layer: {reason} (a stage's "
            "mixers see the whole 2-D grid)",
        )
        return None
    problems = op.problems()
    for p in problems:
        where = f"in stage {stage} (width {ctx['d_model']}, grid {grid.height}x{grid.width})"
        issue((*path, p.field), f"{p.message} {where}")
    return None if problems else op.resolved()
