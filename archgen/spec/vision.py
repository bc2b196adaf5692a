"""Image-classification specs <-> IR: the stage rules, the graph and the resolved spec.

The graph of a vision spec::

    pixels f32[B, S, S, C_in]
    stages.0.downsample          -> [B, H0, W0, width0]
    stages.0.layers.N.*          pre-norm residual layers, as in a language model (or
                                 convex residuals, branches without the norm: StageLayerSpec;
                                 dense_average: each followed by a weighted_sum node)
    stages.1.downsample ...
    final_norm, logits           ClassifierHead: global mean pool + linear -> [B, num_classes]

A stage's context (its width, the grid it runs on, the width it receives) is given to every
node it builds, so a node's attributes in the spec are only the user's own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from archgen.ir.graph import PIXELS, Graph, GraphBuilder, ImageInfo, ModelInfo, Node
from archgen.ir.ops import (
    HSMSSD,
    IMAGE_TASK,
    ClassifierHead,
    ConvexResidual,
    HiddenStateFusionHead,
    LayerNorm,
    Op,
    ResidualAdd,
    RMSNorm,
    Role,
    Trait,
    WeightedSum,
    causality_problem,
    layout_problem,
    ops_with_role,
)
from archgen.ir.types import BATCH, TensorType
from archgen.spec.errors import SpecIssue
from archgen.spec.models import DOWNSAMPLE_SPECS, MAX_LAYERS, ArchSpec
from archgen.spec.vision_models import (
    STAGE_CHANNEL_MIXER_SPECS,
    STAGE_TOKEN_MIXER_SPECS,
    StageGrid,
    VisionModelSpec,
    stage_blocks,
    stage_grids,
)
from archgen.spec.yaml_source import Path, SourceMap

NORMS: dict[str, type[RMSNorm] | type[LayerNorm]] = {"rmsnorm": RMSNorm, "layernorm": LayerNorm}


def stage_context(model: VisionModelSpec, stage: int, grid: StageGrid) -> dict[str, Any]:
    """The model facts a node of stage ``stage`` takes as context fields."""
    return {
        "d_model": model.stages[stage].width,
        "in_channels": grid.in_channels,
        "norm_eps": model.norm_eps,
        "height": grid.height,
        "width": grid.width,
        "max_seq_len": grid.height * grid.width,
        "causal": False,  # every mixer of an image model sees the whole grid
        "num_classes": model.num_classes,
        "vocab_size": model.num_classes,
    }


def _op(spec: Any, context: dict[str, Any], block: int = 0) -> Any:
    """The op of ``spec`` in the stage's ``block``-th block (a list attribute gives one value
    per block)."""
    attrs = spec.model_dump(exclude={"kind"})
    attrs = {k: v[block] if isinstance(v, list) else v for k, v in attrs.items()}
    return spec.op_class(**{k: context[k] for k in spec.op_class.context_fields}, **attrs)


def _schedule_problems(mixer: Any, depth: int) -> list[tuple[str, str]]:
    """``(field, message)`` for each attribute given per block whose length is not ``depth``."""
    return [
        (field, f"gives {len(v)} values, one per block: the stage has depth {depth}, so give "
         f"{depth} (or one value for every block)")
        for field, v in mixer.model_dump(exclude={"kind"}).items()
        if isinstance(v, list) and len(v) != depth
    ]  # fmt: skip


def vision_issues(model: VisionModelSpec, fname: str, source: SourceMap | None) -> list[SpecIssue]:
    """The rules of a vision spec: the stages divide the image, every node's attributes obey
    its rules, and every mixer runs on a 2-D grid (see :func:`~archgen.ir.ops.layout_problem`)."""

    def issue(path: Path, msg: str) -> SpecIssue:
        return SpecIssue(fname, source.locate(path) if source else None, path, msg)

    if stage_blocks(model) > MAX_LAYERS:
        return [issue(("model", "stages"), f"expands to more than {MAX_LAYERS} layers")]
    found: list[SpecIssue] = []
    if model.head == "hidden_state_fusion":
        bare = [
            i
            for i, stage in enumerate(model.stages)
            if not any(layer.token_mixer.kind == HSMSSD.kind for layer in stage.block)
        ]
        if bare:
            found.append(issue(("model", "head"), f"{_HEAD_NEEDS}; stage(s) {bare} have none"))
    grids, problem = stage_grids(model)
    if problem is not None:
        found.append(issue(("model", "image_size"), problem))
    for i, grid in enumerate(grids):  # only the stages whose grid exists
        stage = model.stages[i]
        ctx = stage_context(model, i, grid)
        where: Path = ("model", "stages", i)
        for p in _op(stage.downsample, ctx).problems():
            found.append(issue((*where, "downsample", p.field), p.message))
        for j, layer in enumerate(stage.block):
            for slot in ("token_mixer", "channel_mixer"):
                mixer = getattr(layer, slot)
                if mixer is None:
                    continue
                path = (*where, "block", j, slot)
                bad_lengths = _schedule_problems(mixer, stage.depth)
                if bad_lengths:  # no block's op can be built
                    found += [issue((*path, field), msg) for field, msg in bad_lengths]
                    continue
                per_block = {k for k, v in mixer.model_dump().items() if isinstance(v, list)}
                for k in range(stage.depth):
                    op = _op(mixer, ctx, k)
                    for p in op.problems():
                        at = (*path, p.field, k) if p.field in per_block else (*path, p.field)
                        found.append(issue(at, _in_stage(p.message, p.field, grid)))
                reason = causality_problem(op, IMAGE_TASK) or layout_problem(op, IMAGE_TASK)
                if reason is not None and _grid_form_if_not_causal(op):
                    found.append(
                        issue(
                            (*path, "causal"),
                            f"{op.kind!r} with causal: true (its default) is a 1-D sequence "
                            "mixer; over a stage's 2-D token grid it runs with causal: false",
                        )
                    )
                elif reason is not None:
                    found.append(
                        issue(
                            (*path, "kind"),
                            f"{op.kind!r} runs on 1-D sequences only: it has no form over a "
                            f"stage's 2-D token grid yet (stages take {_grid_kinds(op.role)})",
                        )
                    )
    return found


def _grid_kinds(role: Role) -> str:
    """The kinds of ``role`` that run on a grid, from the op registry (it grows with it)."""
    kinds = sorted(k for k, c in ops_with_role(role).items() if Trait.GRID in c.traits)
    return ", ".join(kinds)


def _grid_form_if_not_causal(op: Any) -> bool:
    """Whether ``op`` has a user ``causal`` attribute whose false form runs on a grid (dense)."""
    if op.attributes().get("causal") is not True:
        return False
    bidirectional = dataclasses.replace(op, causal=False)
    return layout_problem(bidirectional, IMAGE_TASK) is None


def _in_stage(message: str, field: str, grid: StageGrid) -> str:
    if field in ("height", "width"):
        return f"{message} (the stage's grid is {grid.height}x{grid.width})"
    return message


def graph_from_vision_spec(spec: ArchSpec) -> Graph:
    m = spec.model
    assert isinstance(m, VisionModelSpec)
    grids, problem = stage_grids(m)
    if problem is not None:
        raise ValueError(f"model.image_size: {problem}")
    info = ModelInfo(
        m.name,
        IMAGE_TASK,
        vocab_size=m.num_classes,
        d_model=max(s.width for s in m.stages),
        max_seq_len=max(g.height * g.width for g in grids),
        image=ImageInfo(m.image_size, m.in_channels, m.num_classes),
    )
    norm_cls = NORMS[m.norm]
    g = GraphBuilder(info)
    g.inputs = {PIXELS: TensorType((BATCH, m.image_size, m.image_size, m.in_channels))}
    x = PIXELS
    states: list[str] = []  # each stage's last hidden state (hsm_ssd's second output)
    for i, (stage, grid) in enumerate(zip(m.stages, grids, strict=True)):
        ctx = stage_context(m, i, grid)
        x = g.add(f"stages.{i}.downsample", _op(stage.downsample, ctx).resolved(), x)
        d = stage.width
        n = 0
        state: str | None = None
        earlier = [x]  # y^(0) and every residual layer's output, for dense_average
        for k in range(stage.depth):
            for layer in stage.block:
                block = f"stages.{i}.layers.{n}"
                n += 1
                for slot, mixer in (("token", layer.token_mixer), ("channel", layer.channel_mixer)):
                    if mixer is None:
                        continue
                    branch = x
                    if layer.pre_norm:
                        branch = g.add(
                            f"{block}.{slot}_norm", norm_cls(d, m.norm_eps), x, block=block
                        )
                    op = _op(mixer, ctx, k).resolved()
                    out = _add_node(g, f"{block}.{slot}_mixer", op, branch, block)
                    if isinstance(op, HSMSSD):
                        state = g.nodes[-1].outputs[1]
                    join = ConvexResidual(d) if layer.residual == "convex" else ResidualAdd(d)
                    x = g.add(f"{block}.{slot}_residual", join, x, out, block=block)
                    if stage.dense_average:
                        earlier.append(x)
                        average = WeightedSum(d, inputs=len(earlier))
                        x = g.add(f"{block}.{slot}_average", average, *earlier, block=block)
        if state is not None:
            states.append(state)
    last = m.stages[-1].width
    x = g.add("final_norm", norm_cls(last, m.norm_eps), x)
    if m.head == "hidden_state_fusion":
        if len(states) != len(m.stages):
            raise ValueError(f"model.head: {_HEAD_NEEDS}")
        widths = tuple(s.width for s in m.stages)
        head = HiddenStateFusionHead(last, m.num_classes, widths, m.norm_eps)
        return g.build(g.add("logits", head, x, *states))
    return g.build(g.add("logits", ClassifierHead(d_model=last, num_classes=m.num_classes), x))


_HEAD_NEEDS = "hidden_state_fusion reads the hidden state of an hsm_ssd in every stage"


def _add_node(g: GraphBuilder, name: str, op: Op, x: str, block: str) -> str:
    """Append ``op(x)``; a node with several outputs (``hsm_ssd``: the grid and its hidden
    state) names its others ``<name>.out1``, ... Returns its first value, named like it."""
    outputs = (name, *(f"{name}.out{i}" for i in range(1, op.num_outputs)))
    g.nodes.append(Node(name, op, (x,), block, outputs=outputs))
    return name


def resolve_vision_spec(spec: ArchSpec) -> ArchSpec:
    """``spec`` with every ``auto`` attribute of its nodes filled in from its stage."""
    m = spec.model
    assert isinstance(m, VisionModelSpec)
    grids, problem = stage_grids(m)
    if problem is not None:
        return spec

    def resolve(mixer: Any, table: dict[str, Any], ctx: dict[str, Any], depth: int = 1) -> Any:
        """``mixer`` resolved in each block; an attribute given per block stays a list."""
        if mixer is None:
            return None
        blocks = [_op(mixer, ctx, k).resolved().attributes() for k in range(depth)]
        given = mixer.model_dump()
        data = {
            name: [b[name] for b in blocks] if isinstance(given[name], list) else value
            for name, value in blocks[0].items()
        }
        return table[mixer.kind].model_validate({"kind": mixer.kind, **data})

    stages = []
    for i, (stage, grid) in enumerate(zip(m.stages, grids, strict=True)):
        ctx = stage_context(m, i, grid)
        block = [
            layer.model_copy(
                update={
                    "token_mixer": resolve(
                        layer.token_mixer, STAGE_TOKEN_MIXER_SPECS, ctx, stage.depth
                    ),
                    "channel_mixer": resolve(
                        layer.channel_mixer, STAGE_CHANNEL_MIXER_SPECS, ctx, stage.depth
                    ),
                }
            )
            for layer in stage.block
        ]
        down = resolve(stage.downsample, DOWNSAMPLE_SPECS, ctx)
        stages.append(stage.model_copy(update={"block": block, "downsample": down}))
    return spec.model_copy(update={"model": m.model_copy(update={"stages": stages})})


def vision_spec_from_graph(graph: Graph) -> ArchSpec:
    """The spec of an image classifier's graph (inverse of :func:`graph_from_vision_spec`),
    e.g. a search winner whose layers differ within a stage: a stage's layers are written as
    ``depth`` copies of the shortest block that repeats to them (depth 1 when none does)."""
    image = graph.model.image
    assert image is not None
    norm = graph.node("final_norm").op
    downsample: dict[int, Any] = {}
    layers: dict[int, dict[str, dict[str, Any]]] = {}
    averaged: set[int] = set()  # stages with dense_average (weighted_sum nodes)
    names = {node.name for node in graph.nodes}
    for node in graph.nodes:
        parts = node.name.split(".")
        if parts[0] != "stages":
            continue
        stage = int(parts[1])
        if parts[2] == "downsample":
            downsample[stage] = node.op
        elif node.name.endswith("_average"):
            averaged.add(stage)
        elif node.name.endswith("_mixer"):
            layer = layers.setdefault(stage, {}).setdefault(node.block or "", {})
            layer[parts[-1]] = {"kind": node.op.kind, **node.op.attributes()}
            # how the branch meets the stream (StageLayerSpec's residual / pre_norm; the
            # defaults are left out, as the spec's own dump leaves them out)
            slot = parts[-1].removesuffix("_mixer")
            join = graph.node(f"{node.block}.{slot}_residual").op
            if join.kind == ConvexResidual.kind:
                layer["residual"] = "convex"
            if f"{node.block}.{slot}_norm" not in names:
                layer["pre_norm"] = False
    stages = []
    for i in sorted(downsample):
        found = list(layers.get(i, {}).values())
        period = next(p for p in range(1, len(found) + 1) if found == found[:p] * (len(found) // p))
        stage_spec: dict[str, Any] = {
            "width": downsample[i].d_model,
            "depth": len(found) // period,
            "downsample": {"kind": downsample[i].kind, **downsample[i].attributes()},
            "block": found[:period],
        }
        if i in averaged:
            stage_spec["dense_average"] = True
        stages.append(stage_spec)
    model = {
        "name": graph.model.name,
        "task": IMAGE_TASK,
        "image_size": image.image_size,
        "in_channels": image.in_channels,
        "num_classes": image.num_classes,
        "norm": norm.kind,
        "norm_eps": norm.eps,  # type: ignore[attr-defined]
        "stages": stages,
    }
    if isinstance(graph.node("logits").op, HiddenStateFusionHead):
        model["head"] = "hidden_state_fusion"
    return ArchSpec.model_validate({"model": model})
