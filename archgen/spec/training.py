"""The spec's ``data:`` and ``train:`` sections, generated from ``archgen.train``'s config classes.

The options are declared once, as documented and bounded dataclass fields in
:mod:`archgen.train.config` and :mod:`archgen.train.tasks`; this module turns them into strict
pydantic models (unknown keys are errors, YAML types are taken as written) and back.

```yaml
data: {kind: text, paths: [corpus/], split: document}     # or tokens, or a capability task
train: {steps: 600, batch_size: 16, seq_len: 128, lr: 3.0e-3}
```
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Annotated, Any, Literal, Union

import annotated_types
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from archgen.train.config import DataSource, TextData, TrainConfig, data_source_classes


def _not_bool(value: Any) -> Any:
    # YAML's ``true`` is not a number, although pydantic's lax float would take it.
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "Input should be a valid number")
    return value


_BOUNDS = {"ge": annotated_types.Ge, "gt": annotated_types.Gt, "le": annotated_types.Le}


def _field_type(hint: Any, bounds: tuple[Any, ...]) -> Any:
    if dataclasses.is_dataclass(hint):  # a nested options section, e.g. data.tokenizer
        return options_model(hint, f"{hint.__name__}Spec")  # type: ignore[arg-type]
    if hint is int:
        return Annotated[(int, Strict(), *bounds)]
    if hint is bool:
        return Annotated[bool, Strict()]
    if hint is float:
        return Annotated[(float, *bounds, BeforeValidator(_not_bool))]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is Union:
        members = tuple(
            a if a is type(None) else _field_type(a, bounds) for a in typing.get_args(hint)
        )
        return Union[members]  # noqa: UP007
    return hint


class OptionsModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    config_class: typing.ClassVar[type]

    def to_config(self) -> Any:
        """The ``archgen.train`` config object these options describe."""
        # ``kind`` is the union tag of data kinds; a config class may also have its own.
        tag_only = "kind" not in {f.name for f in dataclasses.fields(self.config_class)}
        values = {
            name: value.to_config() if isinstance(value, OptionsModel) else value
            for name, value in self
            if not (tag_only and name == "kind")
        }
        return self.config_class(**values)


def _cross_field_check(self: Any) -> Any:
    # A config class's cross-field rule (a static ``problem`` taking fields by name), raised
    # here so the loader reports it at the section's file:line.
    rule = self.config_class.problem
    problem = rule(**{name: getattr(self, name) for name in inspect.signature(rule).parameters})
    if problem is not None:
        raise PydanticCustomError("options_conflict", problem)
    return self


def options_model(cls: type, name: str, *, kind: str | None = None) -> type[OptionsModel]:
    """A strict pydantic model of a config dataclass (plus a ``kind`` tag when given)."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    if kind is not None:
        fields["kind"] = (Literal[kind], Field(description=getattr(cls, "summary", "")))  # type: ignore[valid-type]
    for f in dataclasses.fields(cls):
        bounds = tuple(make(f.metadata[k]) for k, make in _BOUNDS.items() if k in f.metadata)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = ...
        info = Field(default=default, description=f.metadata.get("doc"))
        fields[f.name] = (_field_type(hints[f.name], bounds), info)
    validators = {}
    if isinstance(cls.__dict__.get("problem"), staticmethod):
        validators["cross_field"] = model_validator(mode="after")(_cross_field_check)
    model = create_model(
        name, __base__=OptionsModel, __doc__=cls.__doc__, __validators__=validators, **fields
    )  # type: ignore[call-overload]
    model.config_class = cls
    return model


TrainSpec = options_model(TrainConfig, "TrainSpec")

DATA_SPECS: dict[str, type[OptionsModel]] = {
    kind: options_model(cls, f"{cls.__name__}Spec", kind=kind)
    for kind, cls in data_source_classes().items()
}

DataSpec = Annotated[
    Union[tuple(DATA_SPECS.values())],  # type: ignore[valid-type]  # noqa: UP007
    Field(discriminator="kind"),
]


def data_source(spec: OptionsModel | None) -> DataSource:
    """The data source of a ``data:`` section; no section means the built-in text corpus."""
    if spec is None:
        return TextData()
    return spec.to_config()


def train_config(spec: OptionsModel | None, **overrides: Any) -> TrainConfig:
    """The ``train:`` section (defaults when absent) with command-line ``overrides`` applied."""
    base = spec.model_dump() if spec is not None else {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)
