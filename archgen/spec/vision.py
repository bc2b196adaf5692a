"""Image-classification specs <-> IR: the stage rules, the graph and the resolved spec.

The graph of a vision spec::

    pixels f32[B, S, S, C_in]
    stages.0.downsample          -> [B, H0, W0, width0]
    stages.0.layers.N.*          pre-norm residual layers, as in a language model (or
                                 convex residuals, branches without the norm: VisionLayerSpec)
    stages.1.downsample ...
    final_norm, logits           ClassifierHead: global mean pool + linear -> [B, num_classes]

A stage's context (its width, the grid it runs on, the width it receives) is given to every
node it builds, so a node's attributes in the spec are only the user's own.
"""

from __future__ import annotations

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
    causality_problem,
    layout_problem,
)
from archgen.ir.types import BATCH, TensorType
from archgen.spec.errors import SpecIssue
from archgen.spec.models import (
    CHANNEL_MIXER_SPECS,
    DOWNSAMPLE_SPECS,
    MAX_LAYERS,
    TOKEN_MIXER_SPECS,
    ArchSpec,
)
from archgen.spec.vision_models import StageGrid, VisionModelSpec, stage_blocks, stage_grids
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


def _op(spec: Any, context: dict[str, Any]) -> Any:
    return spec.to_op(**{k: context[k] for k in spec.op_class.context_fields})


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
                op = _op(mixer, ctx)
                for p in op.problems():
                    found.append(issue((*path, p.field), _in_stage(p.message, p.field, grid)))
                reason = causality_problem(op, IMAGE_TASK) or layout_problem(op, IMAGE_TASK)
                if reason is not None:
                    found.append(
                        issue(
                            (*path, "kind"),
                            f"{op.kind!r} runs on 1-D sequences only: it has no form over a "
                            "stage's 2-D token grid yet (stages take attention, raft, convglu "
                            "and the position-wise channel mixers)",
                        )
                    )
    return found


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
        for _ in range(stage.depth):
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
                    op = _op(mixer, ctx).resolved()
                    out = _add_node(g, f"{block}.{slot}_mixer", op, branch, block)
                    if isinstance(op, HSMSSD):
                        state = g.nodes[-1].outputs[1]
                    join = ConvexResidual(d) if layer.residual == "convex" else ResidualAdd(d)
                    x = g.add(f"{block}.{slot}_residual", join, x, out, block=block)
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

    def resolve(mixer: Any, table: dict[str, Any], ctx: dict[str, Any]) -> Any:
        if mixer is None:
            return None
        op = _op(mixer, ctx).resolved()
        return table[mixer.kind].model_validate({"kind": op.kind, **op.attributes()})

    stages = []
    for i, (stage, grid) in enumerate(zip(m.stages, grids, strict=True)):
        ctx = stage_context(m, i, grid)
        block = [
            layer.model_copy(
                update={
                    "token_mixer": resolve(layer.token_mixer, TOKEN_MIXER_SPECS, ctx),
                    "channel_mixer": resolve(layer.channel_mixer, CHANNEL_MIXER_SPECS, ctx),
                }
            )
            for layer in stage.block
        ]
        down = resolve(stage.downsample, DOWNSAMPLE_SPECS, ctx)
        stages.append(stage.model_copy(update={"block": block, "downsample": down}))
    return spec.model_copy(update={"model": m.model_copy(update={"stages": stages})})
