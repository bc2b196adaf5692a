"""The ``model:`` section of an image-classification spec: stages over 2-D token grids.

>>> # model: {task: image-classification, image_size: 32, num_classes: 8, stages: [...]}
>>> # each stage: {width, depth, downsample: {kind: patch_embed, stride: 4}, block: [layers]}

A stage downsamples the grid it receives (the image for the first stage), then runs ``depth``
copies of ``block`` (a list of layers, each ``x += token_mixer(norm(x)); x += channel_mixer(...)``
as in a language model; :class:`StageLayerSpec` has the variants). A final norm and the
classifier head (global mean pool + linear) follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from archgen.ir.ops import Role, ops_with_role
from archgen.spec.models import (
    MAX_LAYERS,
    Bool,
    DownsampleSpec,
    Int,
    MixerSpec,
    Number,
    StrictModel,
    mixer_spec_model,
)

# A stage's mixers take any attribute as one value, or as a list of one value per block of the
# stage (``attention_heads: [1, 1, 3]`` with ``depth: 3``; iFormer's frequency ramp).
STAGE_TOKEN_MIXER_SPECS: dict[str, type[MixerSpec]] = {
    kind: mixer_spec_model(cls, per_block=True)
    for kind, cls in ops_with_role(Role.TOKEN_MIXER).items()
}
STAGE_CHANNEL_MIXER_SPECS: dict[str, type[MixerSpec]] = {
    kind: mixer_spec_model(cls, per_block=True)
    for kind, cls in ops_with_role(Role.CHANNEL_MIXER).items()
}


class StageLayerSpec(StrictModel):
    """One layer of a stage's block: ``x += token_mixer(norm(x)); x += channel_mixer(norm(x))``.
    An attribute given as a list takes its ``j``-th value in the stage's ``j``-th block.
    ``residual`` and ``pre_norm`` say how the branches meet the stream; EfficientViM's block is
    three layers with ``residual: convex`` (two of them ``pre_norm: false``)."""

    token_mixer: Annotated[
        Union[tuple(STAGE_TOKEN_MIXER_SPECS.values())],  # type: ignore[valid-type]  # noqa: UP007
        Field(discriminator="kind"),
    ]
    channel_mixer: (
        Annotated[
            Union[tuple(STAGE_CHANNEL_MIXER_SPECS.values())],  # type: ignore[valid-type]  # noqa: UP007
            Field(discriminator="kind"),
        ]
        | None
    ) = None
    residual: Literal["add", "convex"] = Field(
        "add",
        description="add: x + f(x); convex: (1 - a) x + a f(x), a = sigmoid(theta) per channel "
        "(EfficientViM's layer scale, theta starting at 1e-4)",
    )
    pre_norm: Bool = Field(
        True, description="apply the model's norm before each branch (false: f reads x itself)"
    )

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # specs that do not use the fields dump (--resolved, spec hash) as before they existed
        out = handler(self)
        if out.get("residual") == "add":
            out.pop("residual", None)
        if out.get("pre_norm") is True:
            out.pop("pre_norm", None)
        return out


class StageSpec(StrictModel):
    """One resolution level: downsampling to ``width``, then ``depth`` blocks."""

    width: Int = Field(ge=1, le=1 << 16, description="channels of the stage's token grid")
    depth: Int = Field(ge=1, le=MAX_LAYERS, description="copies of block (weights not shared)")
    downsample: DownsampleSpec = Field(  # type: ignore[valid-type]
        description="the patch embedding or patch merging that starts the stage"
    )
    block: list[StageLayerSpec] = Field(
        min_length=1,
        description="the layers of one block (RaftMLP: a vertical raft layer, then a horizontal "
        "one with the channel MLP); a mixer attribute may be a list of one value per block "
        "(length depth)",
    )
    dense_average: bool = Field(
        False,
        description="after each residual layer, feed on a learned weighted sum of the stage's "
        "input and every layer output so far (DenseFormer; MambaMixer's weighted averaging), "
        "initialised to the plain residual chain",
    )


class VisionModelSpec(StrictModel):
    name: str = Field("model", description="model name (used in reports and file names)")
    task: Literal["image-classification"] = Field(
        description="image-classification: images [B, H, W, C] in, class logits out"
    )
    image_size: Int = Field(ge=1, le=8192, description="height and width of the input images")
    in_channels: Int = Field(3, ge=1, le=64, description="channels of the input images")
    num_classes: Int = Field(ge=2, le=1 << 20, description="classes (width of the logits)")
    norm: Literal["layernorm", "rmsnorm"] = Field("layernorm", description="pre-norm kind")
    norm_eps: Number = Field(1e-6, gt=0, le=1, description="epsilon of every norm")
    stages: list[StageSpec] = Field(min_length=1, description="stages, input to head")
    head: Literal["pool", "hidden_state_fusion"] = Field(
        "pool",
        description="pool: global mean pool + linear; hidden_state_fusion: EfficientViM's "
        "multi-stage fusion of the pooled grid with each stage's last hsm_ssd hidden state",
    )

    @model_serializer(mode="wrap")
    def _omit_pool_head(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # specs with the default head dump (--resolved, spec hash) as before the field existed
        out = handler(self)
        if out.get("head") == "pool":
            out.pop("head", None)
        return out

    @property
    def passes(self) -> None:
        """Graph rewrites: none exist for vision graphs yet (the LM field's stand-in)."""
        return None


@dataclass(frozen=True)
class StageGrid:
    """What a stage sees: the width coming in and the grid after its downsampling."""

    in_channels: int
    height: int
    width: int


def stage_grids(model: VisionModelSpec) -> tuple[list[StageGrid], str | None]:
    """The grid of every stage, and why the image size cannot be divided (or None): each
    stage's stride must divide the grid it receives."""
    size, channels = model.image_size, model.in_channels
    grids: list[StageGrid] = []
    for i, stage in enumerate(model.stages):
        stride = _stride(stage.downsample)
        if getattr(stage.downsample.op_class, "rounds_up", False):  # padded convs: ceil
            size = -(-size // stride)
            grids.append(StageGrid(channels, size, size))
            channels = stage.width
            continue
        if size % stride:
            total = 1
            for s in model.stages:
                total *= _stride(s.downsample)
            return grids, (
                f"{model.image_size} cannot be divided by the stages' downsampling: stage {i} "
                f"gets a {size}x{size} grid, not divisible by its stride {stride} (use a "
                f"multiple of {total}, the product of the strides)"
            )
        size //= stride
        grids.append(StageGrid(channels, size, size))
        channels = stage.width
    return grids, None


def _stride(downsample: Any) -> int:
    found = getattr(downsample, "stride", None) or getattr(downsample, "factor", None)
    return int(found or getattr(downsample.op_class, "stride", 1))


def stage_blocks(model: VisionModelSpec) -> int:
    return sum(s.depth * len(s.block) for s in model.stages)
