"""Language-model ends: token embedding, LM head, and the residual add between blocks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from archgen.ir.ops.base import (
    POSITIONWISE,
    Op,
    Role,
    Trait,
    _expect_arity,
    attr,
    linear_flops,
    register_op,
)
from archgen.ir.types import TensorType, TypeRuleError


@register_op
@dataclass(frozen=True)
class Embedding(Op):
    kind: ClassVar[str] = "embedding"
    role: ClassVar[Role] = Role.EMBEDDING
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = POSITIONWISE
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "vocab_size")
    summary: ClassVar[str] = "token embedding table"

    d_model: int = attr("model width", ge=1)
    vocab_size: int = attr("vocabulary size", ge=2)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (tokens,) = _expect_arity(self, inputs)
        if tokens.dtype != "int64" or len(tokens.shape) != 2:
            raise TypeRuleError(f"embedding: expected i64[B, L] tokens, got {tokens}")
        return TensorType((*tokens.shape, self.d_model), "float32")

    def params(self) -> int:
        return self.vocab_size * self.d_model


@register_op
@dataclass(frozen=True)
class LMHead(Op):
    kind: ClassVar[str] = "lm_head"
    role: ClassVar[Role] = Role.HEAD
    arity: ClassVar[int] = 1
    traits: ClassVar[frozenset[Trait]] = POSITIONWISE
    context_fields: ClassVar[tuple[str, ...]] = ("d_model", "vocab_size")
    summary: ClassVar[str] = "projection to vocabulary logits"

    d_model: int = attr("model width", ge=1)
    vocab_size: int = attr("vocabulary size", ge=2)
    tied: bool = attr("share the embedding table as the output projection", default=True)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = _expect_arity(self, inputs)
        if x.shape[-1] != self.d_model:
            raise TypeRuleError(f"lm_head: expected last dim {self.d_model}, got {x}")
        return x.with_last(self.vocab_size)

    def params(self) -> int:
        return 0 if self.tied else self.vocab_size * self.d_model

    def flops(self, seq_len: int) -> int:
        return linear_flops(self.d_model, self.vocab_size, seq_len)

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        return seq_len * self.vocab_size * dtype_bytes


@register_op
@dataclass(frozen=True)
class ResidualAdd(Op):
    """``stream + branch``: the pre-norm residual connection."""

    kind: ClassVar[str] = "residual_add"
    role: ClassVar[Role] = Role.RESIDUAL
    arity: ClassVar[int] = 2  # (stream, branch)
    traits: ClassVar[frozenset[Trait]] = POSITIONWISE
    summary: ClassVar[str] = "residual connection"

    d_model: int = attr("model width", ge=1)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        stream, branch = _expect_arity(self, inputs)
        if stream.shape != branch.shape:
            raise TypeRuleError(f"residual_add: shapes differ: {stream} vs {branch}")
        return stream

    def flops(self, seq_len: int) -> int:
        return seq_len * self.d_model
