"""Typed spec objects (pydantic), parsed once from YAML.

The mixer schemas are *generated* from the IR node classes (their dataclass fields and metadata),
so a node kind's attributes are declared in exactly one place: ``archgen.ir.ops``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any, Literal, Union

import annotated_types
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    Tag,
    create_model,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from archgen.ir.ops import Op, Role, ops_with_role
from archgen.spec.search_models import SearchSpec
from archgen.spec.training import DataSpec, TrainSpec


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "Input should be a valid number")
    return value


# YAML already types its scalars, so a spec says what it means: ``true``, ``'64'`` and ``64.0`` are
# not integers, ``1`` and ``'yes'`` are not booleans (pydantic's lax mode would take them all).
# Numbers stay lax for strings because YAML 1.1 reads ``1e-5`` (no dot) as a string.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Number = Annotated[float, BeforeValidator(_not_bool)]


def _spec_type(hint: Any, bounds: tuple[Any, ...] = ()) -> Any:
    """``hint`` with int/bool/float replaced by the spec's stricter versions (inside unions too).

    Bounds go inside the annotation, before the validator: pydantic cannot push a ``Field`` bound
    through a validator into a union member, and would emit a schema keyword that is not JSON
    Schema (``"gt"``) instead of ``exclusiveMinimum``.
    """
    if hint is int:
        return Annotated[(int, Strict(), *bounds)]
    if hint is bool:
        return Bool
    if hint is float:
        return Annotated[(float, *bounds, BeforeValidator(_not_bool))]
    if typing.get_origin(hint) is tuple:  # tuple[int, ...]: the bounds hold for every item
        (item, _) = typing.get_args(hint)
        return tuple[_spec_type(item, bounds), ...]  # type: ignore[misc]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is Union:
        members = (a if a is type(None) else _spec_type(a, bounds) for a in typing.get_args(hint))
        return Union[tuple(members)]  # noqa: UP007
    return hint


_BOUNDS = {"ge": annotated_types.Ge, "gt": annotated_types.Gt, "le": annotated_types.Le}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MixerSpec(StrictModel):
    """Base of the generated ``{kind: ..., <attributes>}`` models."""

    kind: str
    op_class: typing.ClassVar[type[Op]]

    def to_op(self, **context: Any) -> Op:
        attrs = self.model_dump(exclude={"kind"})
        return self.op_class(**context, **attrs)


def _field_for(f: dataclasses.Field, hint: Any) -> tuple[Any, Any]:
    meta = f.metadata
    bounds = tuple(make(meta[k]) for k, make in _BOUNDS.items() if k in meta)
    default = None if meta.get("auto") else f.default
    info = Field(default=default, description=meta.get("doc"))
    return _spec_type(hint, bounds), info


PER_BLOCK = "per_block"  # the union tag of an attribute given as one value per block


def _value_or_per_block(value: Any) -> str:
    return PER_BLOCK if isinstance(value, list) else "value"


def mixer_spec_model(op_class: type[Op], *, per_block: bool = False) -> type[MixerSpec]:
    """The ``{kind, <attributes>}`` model of ``op_class``. ``per_block``: every attribute may
    also be a list, one value per block of a vision stage (its length is checked with the
    stage's depth in archgen.spec.vision)."""
    hints = typing.get_type_hints(op_class)
    fields: dict[str, Any] = {
        "kind": (Literal[op_class.kind], Field(description=op_class.summary)),  # type: ignore[valid-type]
    }
    for f in op_class.attribute_fields():
        fields[f.name] = _field_for(f, hints[f.name])
        if per_block:
            one, info = fields[f.name]
            each = Union[Annotated[one, Tag("value")], Annotated[list[one], Tag(PER_BLOCK)]]  # type: ignore[valid-type]  # noqa: UP007
            fields[f.name] = (Annotated[each, Discriminator(_value_or_per_block)], info)
    model = create_model(  # type: ignore[call-overload]
        f"{op_class.__name__}{'Stage' if per_block else ''}Spec",
        __base__=MixerSpec,
        __doc__=op_class.summary or op_class.__doc__,
        **fields,
    )
    model.op_class = op_class
    return model


TOKEN_MIXER_SPECS: dict[str, type[MixerSpec]] = {
    kind: mixer_spec_model(cls) for kind, cls in ops_with_role(Role.TOKEN_MIXER).items()
}
CHANNEL_MIXER_SPECS: dict[str, type[MixerSpec]] = {
    kind: mixer_spec_model(cls) for kind, cls in ops_with_role(Role.CHANNEL_MIXER).items()
}

TokenMixerSpec = Annotated[
    Union[tuple(TOKEN_MIXER_SPECS.values())],  # type: ignore[valid-type]  # noqa: UP007
    Field(discriminator="kind"),
]
ChannelMixerSpec = Annotated[
    Union[tuple(CHANNEL_MIXER_SPECS.values())],  # type: ignore[valid-type]  # noqa: UP007
    Field(discriminator="kind"),
]
DOWNSAMPLE_SPECS: dict[str, type[MixerSpec]] = {
    kind: mixer_spec_model(cls) for kind, cls in ops_with_role(Role.DOWNSAMPLE).items()
}
DownsampleSpec = Annotated[
    Union[tuple(DOWNSAMPLE_SPECS.values())],  # type: ignore[valid-type]  # noqa: UP007
    Field(discriminator="kind"),
]


class LayerSpec(StrictModel):
    """One residual block pair: ``x += token_mixer(norm(x)); x += channel_mixer(norm(x))``."""

    token_mixer: TokenMixerSpec  # type: ignore[valid-type]
    channel_mixer: ChannelMixerSpec | None = None  # type: ignore[valid-type]


def _layer_tag(value: Any) -> str:
    if isinstance(value, dict):
        return "repeat" if "repeat" in value else "layer"
    return "repeat" if hasattr(value, "repeat") else "layer"


LayerItem = Annotated[
    Annotated[LayerSpec, Tag("layer")] | Annotated["RepeatSpec", Tag("repeat")],
    Discriminator(_layer_tag),
]


class RepeatSpec(StrictModel):
    """``repeat: N`` copies of a group of layers (weights are not shared)."""

    repeat: Int = Field(ge=1, le=4096, description="how many times to repeat the group")
    layers: list[LayerItem] = Field(min_length=1, description="the repeated group")


MAX_LAYERS = 4096


class ModelSpec(StrictModel):
    name: str = Field("model", description="model name (used in reports and file names)")
    # image-classification is listed so a typo's message names it; such a spec is a
    # VisionModelSpec (archgen.spec.vision), chosen by _model_tag before this model validates.
    task: Literal["causal-lm", "masked-diffusion-lm", "image-classification"] = Field(
        "causal-lm",
        description="what the model computes: causal-lm (next token; causal mixers), "
        "masked-diffusion-lm (LLaDA-style denoiser of masked tokens; bidirectional mixers; the "
        "last vocabulary id is the mask token) or image-classification (stages over 2-D token "
        "grids; see the image-classification form of model)",
    )
    vocab_size: Int = Field(ge=2, le=1 << 24, description="vocabulary size (256 for bytes)")
    d_model: Int = Field(ge=1, le=1 << 16, description="width of the residual stream")
    max_seq_len: Int = Field(ge=1, le=1 << 24, description="longest sequence the model accepts")
    norm: Literal["rmsnorm", "layernorm"] = Field("rmsnorm", description="pre-norm kind")
    norm_eps: Number = Field(1e-5, gt=0, le=1, description="epsilon of every norm")
    tie_embeddings: Bool = Field(True, description="LM head shares the embedding table")
    layers: list[LayerItem] = Field(min_length=1, description="blocks, bottom to top")
    passes: str | None = Field(
        None,
        description="graph rewrites applied after the layers are laid out, e.g. "
        '"compress_segments{s=16,local=swa}" (`archgen passes` lists them); written by '
        "archgen convert / build --passes, so a folder's spec.yaml rebuilds its graph",
    )

    @model_serializer(mode="wrap")
    def _omit_no_passes(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Specs without passes dump (--resolved, spec hash) exactly as before the field existed.
        out = handler(self)
        if out.get("passes") is None:
            out.pop("passes", None)
        return out


def _model_tag(value: Any) -> str:
    if isinstance(value, dict):
        return "image" if value.get("task") == "image-classification" else "lm"
    return "lm" if isinstance(value, ModelSpec) else "image"


class ArchSpec(StrictModel):
    """A whole spec file."""

    model: Annotated[
        Annotated[ModelSpec, Tag("lm")] | Annotated[VisionModelSpec, Tag("image")],
        Discriminator(_model_tag),
    ]
    search: SearchSpec | None = Field(None, description="architecture search (archgen search)")
    data: DataSpec | None = Field(  # type: ignore[valid-type]
        None, description="training data (archgen train; default: the built-in text corpus)"
    )
    train: TrainSpec | None = Field(None, description="training options (archgen train)")  # type: ignore[valid-type]

    @model_serializer(mode="wrap")
    def _omit_absent_sections(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A spec without data:/train: dumps (--resolved, spec hash) exactly as before they existed.
        out = handler(self)
        for key in ("data", "train"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


from archgen.spec.vision_models import VisionModelSpec  # noqa: E402 (needs LayerSpec)

RepeatSpec.model_rebuild()
ModelSpec.model_rebuild()
ArchSpec.model_rebuild()


def expand_layers(
    items: list[LayerSpec | RepeatSpec], path: tuple[str | int, ...]
) -> list[tuple[tuple[str | int, ...], LayerSpec]]:
    """Flatten repeat groups into ``(spec path of the layer's definition, layer)`` pairs."""
    out: list[tuple[tuple[str | int, ...], LayerSpec]] = []
    for i, item in enumerate(items):
        if isinstance(item, RepeatSpec):
            group = expand_layers(item.layers, (*path, i, "layers"))
            for _ in range(item.repeat):
                out.extend(group)
                if len(out) > MAX_LAYERS:
                    return out
        else:
            out.append(((*path, i), item))
    return out
