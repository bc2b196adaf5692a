"""``replace_mixer``: swap the mixer of chosen layers for another kind (an approximate rewrite).

``replace_mixer{layers=[1,3],kind=swa,window=64}`` makes ``layers.1.token_mixer`` and
``layers.3.token_mixer`` sliding-window attention with a 64-token window; options other than
``layers``, ``kind`` and ``slot`` are the new op's attributes, typed and checked like a spec's
(the JustDense experiment: ``replace_mixer{kind=dense}``). The search's candidates are built by
the same function, :func:`replace_mixers`. Causality is not checked here: ``verify`` after the
pass rejects a non-causal mixer in a causal LM, naming it.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from archgen.ir.edit import replace_op
from archgen.ir.graph import Graph, Node
from archgen.ir.ops import OP_REGISTRY, Op, Role, Trait
from archgen.passes.base import option, register_pass
from archgen.passes.pipeline import PassOptionError, convert_value, suggest
from archgen.passes.rewrite import Reject, Rewrite, RewritePass, Rule

SLOT_ROLES = {"token": Role.TOKEN_MIXER, "channel": Role.CHANNEL_MIXER}


def replace_mixers(graph: Graph, ops: Mapping[str, Op]) -> Graph:
    """``graph`` with node ``name`` applying ``ops[name]``, for each name."""
    for name, op in ops.items():
        if graph.node(name).op != op:
            graph = replace_op(graph, name, op)
    return graph


@register_pass
@dataclass(frozen=True)
class ReplaceMixer(RewritePass):
    """Swap the token (or channel) mixer of chosen layers for another kind."""

    name: ClassVar[str] = "replace_mixer"
    exact: ClassVar[bool] = False
    extra_options: ClassVar[bool] = True  # the new op's attributes

    kind: str = option("the new mixer's kind (e.g. swa, mamba, dense, mlp)")
    layers: tuple[int, ...] | None = option("layer indices, e.g. [0,2] (default: all)", None)
    slot: Literal["token", "channel"] = option("which mixer of each layer", "token")
    extra: tuple[tuple[str, str], ...] = option("the new op's attributes (any other option)", ())

    def new_op(self, graph: Graph) -> Op:
        """The replacement op, built and checked from the options and the model context."""
        where = f"pass {self.name}"
        if self.kind not in OP_REGISTRY:
            raise PassOptionError(
                f"{where}: unknown kind {self.kind!r}", hint=suggest(self.kind, list(OP_REGISTRY))
            )
        cls = OP_REGISTRY[self.kind]
        if cls.role is not SLOT_ROLES[self.slot]:
            raise PassOptionError(
                f"{where}: {self.kind!r} is a {cls.role.value}, not a {self.slot} mixer",
                hint="slot=channel swaps channel mixers",
            )
        if Trait.SPATIAL in cls.traits or graph.model.image is not None:
            raise PassOptionError(
                f"{where}: replacing mixers of image-classification models (2-D grid ops) is not "
                "built yet (issue 13)",
                hint="edit the spec's stages instead",
            )
        fields = {f.name: f for f in cls.attribute_fields()}
        hints = typing.get_type_hints(cls)
        attrs = {}
        for key, raw in self.extra:
            if key not in fields:
                raise PassOptionError(
                    f"{where}: {self.kind} has no attribute {key!r}",
                    hint=suggest(key, list(fields)),
                )
            attrs[key] = convert_value(raw, hints[key], f"{where}: option {key}")
        context = {
            name: getattr(graph.model, name)
            for name in cls.context_fields
            if hasattr(graph.model, name)
        }
        op = cls(**context, **attrs).resolved()
        for problem in op.problems():
            raise PassOptionError(f"{where}: {self.kind}.{problem.field}: {problem.message}")
        return op

    def targets(self, graph: Graph) -> list[str]:
        layers = (
            self.layers
            if self.layers is not None
            else tuple(int(b.split(".")[1]) for b in graph.blocks() if b.startswith("layers."))
        )
        names = [f"layers.{i}.{self.slot}_mixer" for i in layers]
        unknown = [n for n in names if n not in graph]
        if unknown:
            raise PassOptionError(
                f"pass {self.name}: option layers: the model has no node {unknown[0]!r}",
                hint=f"layers are 0..{len(graph.blocks()) - 1}",
            )
        return names

    def rules(self, graph: Graph) -> Sequence[Rule]:
        return [_Replace(frozenset(self.targets(graph)), self.new_op(graph))]


@dataclass(frozen=True)
class _Replace:
    targets: frozenset[str]
    op: Op
    name: str = "replace"

    def match(self, graph: Graph, node: Node) -> Rewrite | Reject | None:
        if node.name not in self.targets or node.op == self.op:
            return None
        op = self.op
        return Rewrite(f"{node.op.kind} -> {op.kind}", lambda g: replace_op(g, node.name, op))


__all__ = ["ReplaceMixer", "replace_mixers"]
