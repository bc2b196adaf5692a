"""Image-classification specs <-> IR: the stage rules, the graph and the resolved spec.

The graph of a vision spec::

    pixels f32[B, S, S, C_in]
    stages.0.downsample          -> [B, H0, W0, width0]
    stages.0.layers.N.*          pre-norm residual layers, as in a language model
                                 (dense_average: each followed by a weighted_sum node)
    stages.1.downsample ...
    final_norm, logits           ClassifierHead: global mean pool + linear -> [B, num_classes]

A stage's context (its width, the grid it runs on, the width it receives) is given to every
node it builds, so a node's attributes in the spec are only the user's own.
"""

from __future__ import annotations

from typing import Any

from archgen.ir.graph import PIXELS, Graph, GraphBuilder, ImageInfo, ModelInfo
from archgen.ir.ops import (
    IMAGE_TASK,
    ClassifierHead,
    LayerNorm,
    ResidualAdd,
    RMSNorm,
    WeightedSum,
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
    LayerSpec,
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
    for i, (stage, grid) in enumerate(zip(m.stages, grids, strict=True)):
        ctx = stage_context(m, i, grid)
        x = g.add(f"stages.{i}.downsample", _op(stage.downsample, ctx).resolved(), x)
        d = stage.width
        n = 0
        earlier = [x]  # y^(0) and every residual layer's output, for dense_average
        for _ in range(stage.depth):
            for layer in stage.block:
                block = f"stages.{i}.layers.{n}"
                n += 1
                for slot, mixer in (("token", layer.token_mixer), ("channel", layer.channel_mixer)):
                    if mixer is None:
                        continue
                    normed = g.add(f"{block}.{slot}_norm", norm_cls(d, m.norm_eps), x, block=block)
                    out = g.add(
                        f"{block}.{slot}_mixer", _op(mixer, ctx).resolved(), normed, block=block
                    )
                    x = g.add(f"{block}.{slot}_residual", ResidualAdd(d), x, out, block=block)
                    if stage.dense_average:
                        earlier.append(x)
                        average = WeightedSum(d, inputs=len(earlier))
                        x = g.add(f"{block}.{slot}_average", average, *earlier, block=block)
    last = m.stages[-1].width
    x = g.add("final_norm", norm_cls(last, m.norm_eps), x)
    return g.build(g.add("logits", ClassifierHead(d_model=last, num_classes=m.num_classes), x))


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
            LayerSpec(
                token_mixer=resolve(layer.token_mixer, TOKEN_MIXER_SPECS, ctx),
                channel_mixer=resolve(layer.channel_mixer, CHANNEL_MIXER_SPECS, ctx),
            )
            for layer in stage.block
        ]
        down = resolve(stage.downsample, DOWNSAMPLE_SPECS, ctx)
        stages.append(stage.model_copy(update={"block": block, "downsample": down}))
    return spec.model_copy(update={"model": m.model_copy(update={"stages": stages})})
