"""Value types of the IR: tensors with symbolic dims.

A dim is an ``int`` or a symbol (``"B"`` batch, ``"L"`` sequence length). Shapes are tuples of
dims; type rules in ``archgen.ir.ops`` map input types to output types.
"""

from __future__ import annotations

from dataclasses import dataclass

Dim = int | str

BATCH = "B"
SEQ = "L"

DTYPE_BYTES: dict[str, int] = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2, "int64": 8}


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    def __str__(self) -> str:
        short = {"float32": "f32", "float64": "f64", "bfloat16": "bf16", "float16": "f16"}
        dims = ", ".join(str(d) for d in self.shape)
        return f"{short.get(self.dtype, self.dtype)}[{dims}]"

    def with_last(self, dim: Dim, dtype: str | None = None) -> TensorType:
        return TensorType((*self.shape[:-1], dim), dtype or self.dtype)


class TypeRuleError(ValueError):
    """An op received inputs its type rule rejects."""
