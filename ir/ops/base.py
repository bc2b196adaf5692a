"""The node-kind protocol and its registry.

Each node kind is one frozen dataclass subclass of :class:`Op`. Its dataclass fields are its
attributes; the fields named in ``context_fields`` come from the model (``d_model``,
``vocab_size``, ...) and every other field is user-facing: the spec layer generates its schema
from them (field ``metadata``: ``doc``, bounds ``ge``/``le``/``gt``, ``auto=True`` for a field whose
``None`` default is resolved by :meth:`Op.resolved`). A class declares its type rule
(:meth:`infer`, or :meth:`infer_outputs` for a kind with several outputs), its static properties
as data (``role``, ``arity``, ``num_outputs``, ``traits``) and its cost as
closed-form functions of the shapes. A property that depends on an attribute (the dense mixer is
causal only with ``causal=True``) is answered by :meth:`Op.has`, which every reader asks.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from archgen.ir.types import TensorType, TypeRuleError


class Role(enum.Enum):
    TOKEN_MIXER = "token mixer"
    CHANNEL_MIXER = "channel mixer"
    NORM = "norm"
    EMBEDDING = "embedding"
    HEAD = "head"
    RESIDUAL = "residual"
    DOWNSAMPLE = "downsample"  # between vision stages: patch embedding, patch merging


class Trait(enum.Enum):
    """A static property of a node kind, declared in its class's ``traits``."""

    CAUSAL = "causal"  # output at position i depends on inputs at positions <= i only
    DECODABLE = "decodable"  # has an incremental one-token ``step`` (mixers/base.py)
    # ... and that step traces to one ONNX graph valid at every position (its state has a fixed
    # size or grows along one dynamic dim), so the onnx backend can export a decode graph
    DECODE_EXPORTABLE = "decode-exportable"
    # runs on a 2-D token grid ``[B, H, W, C]`` (a stage of an image-classification model)
    GRID = "grid"
    # mixes positions of a 2-D grid with their neighbours in both directions (a convolution, a
    # raft of rows): it needs a grid, has no 1-D sequence form, and is never causal
    SPATIAL = "spatial"


# What a mixer without its causal mask or scan direction loses: every output reads future
# tokens, so it is not causal and has no incremental decode step.
CAUSAL_ONLY: frozenset[Trait] = frozenset({Trait.CAUSAL, Trait.DECODABLE, Trait.DECODE_EXPORTABLE})

# Ops that act on each position independently: causal, their step is their forward, and they
# run on any layout of positions (a 1-D sequence or a 2-D grid).
POSITIONWISE: frozenset[Trait] = frozenset(
    {Trait.CAUSAL, Trait.DECODABLE, Trait.DECODE_EXPORTABLE, Trait.GRID}
)


@dataclass(frozen=True)
class Constraint:
    """A problem with one attribute, found by :meth:`Op.problems`."""

    field: str
    message: str


@dataclass(frozen=True)
class Op:
    """Base of all node kinds (see the module docstring)."""

    kind: ClassVar[str]
    role: ClassVar[Role]
    arity: ClassVar[int]  # number of operands
    num_outputs: ClassVar[int] = 1  # number of values a node of this kind produces
    traits: ClassVar[frozenset[Trait]]
    context_fields: ClassVar[tuple[str, ...]] = ("d_model",)
    summary: ClassVar[str] = ""

    # -- attributes ----------------------------------------------------------------------------
    @classmethod
    def attribute_fields(cls) -> tuple[dataclasses.Field, ...]:
        """The user-facing attributes (everything but the model context)."""
        return tuple(f for f in dataclasses.fields(cls) if f.name not in cls.context_fields)

    def attributes(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.attribute_fields()}

    def resolved(self) -> Op:
        """This op with every ``auto`` attribute filled in. Idempotent."""
        return self

    def has(self, trait: Trait) -> bool:
        """Whether this op has ``trait``. An op whose ``causal`` attribute is false (its
        bidirectional form, set from the task) lacks the causal-only traits; subclasses narrow
        further by their own attributes."""
        if trait in CAUSAL_ONLY and getattr(self, "causal", True) is False:
            return False
        return trait in self.traits

    def problems(self) -> list[Constraint]:
        """Bounds from field metadata plus the cross-attribute rules of :meth:`extra_problems`."""
        found = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            for key, ok, word in (
                ("ge", lambda v, b: v >= b, ">="),
                ("gt", lambda v, b: v > b, ">"),
                ("le", lambda v, b: v <= b, "<="),
            ):
                if key in f.metadata and not ok(value, f.metadata[key]):
                    found.append(
                        Constraint(f.name, f"must be {word} {f.metadata[key]}, got {value}")
                    )
        return found + self.extra_problems()

    def extra_problems(self) -> list[Constraint]:
        return []

    def operand_count(self) -> int:
        """Operands a node of this op takes: ``arity``, or a variadic kind's own count
        (``weighted_sum``: its ``inputs``)."""
        return self.arity

    # -- type rule -----------------------------------------------------------------------------
    def infer_outputs(self, inputs: Sequence[TensorType]) -> tuple[TensorType, ...]:
        """The type of each output, in order (``num_outputs`` of them). Single-output kinds
        define :meth:`infer`; kinds with several outputs override this."""
        return (self.infer(inputs),)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        """Default rule of shape-preserving mixers: one input ``[B, L, d_model]``, same output."""
        (x,) = _expect_arity(self, inputs)
        d_model = getattr(self, "d_model", None)
        if x.shape[-1] != d_model:
            raise TypeRuleError(
                f"{self.kind}: expected last dim {d_model}, got {x} (width mismatch)"
            )
        return x

    # -- cost (per sequence, batch 1) ----------------------------------------------------------
    def params(self) -> int:
        return 0

    def flops(self, seq_len: int) -> int:
        """Forward FLOPs (2 per multiply-accumulate) for one sequence of ``seq_len`` tokens."""
        return 0

    def activation_bytes(self, seq_len: int, dtype_bytes: int = 4) -> int:
        """Bytes of the node's output plus the intermediates it must keep for backward."""
        return seq_len * getattr(self, "d_model", 0) * dtype_bytes

    def state_bytes(self, context_len: int, dtype_bytes: int = 4) -> int:
        """Decode-time state (recurrent state or KV cache) after ``context_len`` tokens."""
        return 0


def _expect_arity(op: Op, inputs: Sequence[TensorType]) -> Sequence[TensorType]:
    if len(inputs) != op.operand_count():
        raise TypeRuleError(f"{op.kind}: expected {op.operand_count()} input(s), got {len(inputs)}")
    return inputs


# what a masked-diffusion spec can use instead of a causal-only token mixer
BIDIRECTIONAL_FORMS = (
    "use attention, swa, mamba or mamba2 (bidirectional in this task), or dense with causal: false"
)


def causality_problem(op: Op, task: str) -> str | None:
    """Why ``op`` cannot be a node of a model with ``task``, or None: a causal LM needs every
    node causal (only token mixers can fail); a masked-diffusion LM needs every token mixer
    bidirectional (a causal one would hide from each masked position the context after it).
    The one rule behind the spec loader, ``verify``, the search space and blockwise training;
    each reports it in its own way."""
    if task == "causal-lm" and not op.has(Trait.CAUSAL):
        return "not causal in a causal-lm"
    if task == "masked-diffusion-lm" and op.role is Role.TOKEN_MIXER and op.has(Trait.CAUSAL):
        if any(f.name == "causal" for f in dataclasses.fields(op)):  # a bidirectional form
            return "causal in a masked-diffusion-lm, which needs bidirectional token mixers"
        return (
            f"causal-only in a masked-diffusion-lm: {op.kind} has no bidirectional form yet "
            f"({BIDIRECTIONAL_FORMS})"
        )
    return None


IMAGE_TASK = "image-classification"


def layout_problem(op: Op, task: str) -> str | None:
    """Why ``op`` cannot run on the tokens a model with ``task`` gives it, or None: a vision
    stage gives its mixers a 2-D grid ``[B, H, W, C]``, a language model a 1-D sequence. The
    rule behind the spec loader and ``verify`` (with :func:`causality_problem`)."""
    mixes = op.role in (Role.TOKEN_MIXER, Role.CHANNEL_MIXER)
    if task == IMAGE_TASK and mixes and not op.has(Trait.GRID):
        return "a 1-D sequence mixer: it has no form over an image stage's 2-D token grid yet"
    if task != IMAGE_TASK and op.has(Trait.SPATIAL):
        return f"a 2-D grid op (task {IMAGE_TASK} only): a {task} has 1-D token sequences"
    return None


OpT = TypeVar("OpT", bound=type[Op])

OP_REGISTRY: dict[str, type[Op]] = {}


def register_op(cls: OpT) -> OpT:
    """Class decorator: make ``cls`` known under ``cls.kind`` (one registry for all node kinds)."""
    if cls.kind in OP_REGISTRY:
        raise ValueError(f"duplicate node kind {cls.kind!r}")
    # readers (verify, the causality rule, the onnx decode export) rely on both being declared
    missing = [name for name in ("arity", "traits") if not hasattr(cls, name)]
    if missing:
        raise TypeError(f"node kind {cls.kind!r} does not declare {', '.join(missing)}")
    OP_REGISTRY[cls.kind] = cls
    return cls


def ops_with_role(role: Role) -> dict[str, type[Op]]:
    return {k: c for k, c in OP_REGISTRY.items() if c.role is role}


def linear_params(d_in: int, d_out: int, bias: bool) -> int:
    return d_in * d_out + (d_out if bias else 0)


def linear_flops(d_in: int, d_out: int, tokens: int) -> int:
    return 2 * d_in * d_out * tokens


def causal_pairs(seq_len: int) -> int:
    """Query-key pairs of causal attention: L(L+1)/2."""
    return seq_len * (seq_len + 1) // 2


def attr(
    doc: str, *, default: Any = dataclasses.MISSING, auto: bool = False, **bounds: float
) -> Any:
    """A documented attribute field; ``auto=True`` means ``None`` is resolved from the context."""
    meta = {"doc": doc, "auto": auto, **bounds}
    if auto:
        default = None
    return dataclasses.field(default=default, metadata=meta)


def iter_ops() -> Iterator[type[Op]]:
    return iter(OP_REGISTRY.values())


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = [
    "BIDIRECTIONAL_FORMS",
    "IMAGE_TASK",
    "OP_REGISTRY",
    "POSITIONWISE",
    "Constraint",
    "Op",
    "Role",
    "Trait",
    "attr",
    "causal_pairs",
    "causality_problem",
    "ceil_div",
    "layout_problem",
    "linear_flops",
    "linear_params",
    "ops_with_role",
    "register_op",
]
