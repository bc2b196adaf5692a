"""The search space: which nodes of a base graph may change, and to what.

A :class:`Slot` names one mixer node of the base graph (``layers.3.token_mixer``), or a group of
nodes that take the same choice (an image model's ``per: stage`` slot ``stages.1.token_mixer``),
and its choices (resolved IR ops). A candidate is one choice per slot;
:meth:`SearchSpace.graph_for` swaps the ops into the base graph (the ``replace_mixer``
rewrite). Choices that break causality or that the target backend cannot lower are removed up
front, each with its reason (:attr:`SearchSpace.excluded`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from archgen.errors import ArchgenError
from archgen.ir.graph import Graph
from archgen.ir.ops import Op, causality_problem
from archgen.passes.replace_mixer import replace_mixers

Supports = Callable[[Op], tuple[bool, str]]


@dataclass(frozen=True)
class Choice:
    label: str
    op: Op


@dataclass(frozen=True)
class Slot:
    node: str  # the graph node this slot rewrites (or its group's name); the Optuna parameter
    choices: tuple[Choice, ...]
    nodes: tuple[str, ...] = ()  # a group's graph nodes, all taking the choice; () is (node,)

    @property
    def targets(self) -> tuple[str, ...]:
        """The graph nodes the slot's choice is applied to."""
        return self.nodes or (self.node,)

    def choice(self, label: str) -> Choice:
        for c in self.choices:
            if c.label == label:
                return c
        raise KeyError(f"{self.node}: no choice {label!r}")


@dataclass(frozen=True)
class Exclusion:
    node: str
    label: str
    reason: str


Candidate = Mapping[str, str]  # slot node -> choice label


@dataclass(frozen=True)
class SearchSpace:
    base: Graph
    slots: tuple[Slot, ...]
    excluded: tuple[Exclusion, ...] = ()

    @classmethod
    def build(
        cls,
        base: Graph,
        proposals: Mapping[str, list[Choice]],
        supports: Supports | None = None,
        groups: Mapping[str, tuple[str, ...]] | None = None,
    ) -> SearchSpace:
        """Keep the proposed choices that are causal (for causal LMs) and lowerable.
        ``groups[slot]`` names the graph nodes a slot that covers several rewrites."""
        slots: list[Slot] = []
        excluded: list[Exclusion] = []
        names = {n.name for n in base.nodes}
        groups = groups or {}
        for node, choices in proposals.items():
            targets = groups.get(node, (node,))
            if not targets or any(t not in names for t in targets):
                raise ArchgenError(f"search slot {node!r} names no node of the model")
            kept: list[Choice] = []
            for choice in choices:
                if (why := causality_problem(choice.op, base.model.task)) is not None:
                    excluded.append(Exclusion(node, choice.label, why))
                    continue
                if supports is not None:
                    ok, why = supports(choice.op)
                    if not ok:
                        excluded.append(Exclusion(node, choice.label, why))
                        continue
                kept.append(choice)
            if kept:
                slots.append(Slot(node, tuple(kept), targets if node in groups else ()))
        space = cls(base, tuple(slots), tuple(excluded))
        if space.size() <= 1:
            reasons = "; ".join(f"{e.node}={e.label}: {e.reason}" for e in excluded)
            raise ArchgenError(
                "the search space is empty: no slot has two or more usable choices"
                + (f" (excluded: {reasons})" if reasons else ""),
                hint="list at least two choices for some layer in the spec's search.slots",
            )
        return space

    def size(self) -> int:
        n = 1
        for slot in self.slots:
            n *= len(slot.choices)
        return n if self.slots else 0

    def graph_for(self, candidate: Candidate) -> Graph:
        """The base graph with each slot's chosen op (the ``replace_mixer`` rewrite)."""
        return replace_mixers(
            self.base, {node: op for node, (_, op) in self.node_choices(candidate).items()}
        )

    def node_choices(self, candidate: Candidate) -> dict[str, tuple[str, Op]]:
        """``{graph node: (choice label, op)}``: each node a slot of ``candidate`` rewrites."""
        out = {}
        for s in self.slots:
            choice = s.choice(candidate[s.node])
            for node in s.targets:
                out[node] = (choice.label, choice.op)
        return out

    def base_candidate(self) -> dict[str, str] | None:
        """The base graph as a candidate, when every slot's current op is one of its choices."""
        out = {}
        for slot in self.slots:
            current = {self.base.node(n).op for n in slot.targets}
            match = [c.label for c in slot.choices if current == {c.op}]
            if not match:
                return None
            out[slot.node] = match[0]
        return out

    def homogeneous_candidates(self) -> list[dict[str, str]]:
        """One candidate per choice label that every slot offers (all layers the same)."""
        common = set(c.label for c in self.slots[0].choices)
        for slot in self.slots[1:]:
            common &= {c.label for c in slot.choices}
        ordered = [c.label for c in self.slots[0].choices if c.label in common]
        return [{s.node: label for s in self.slots} for label in ordered]

    def baseline_candidates(self) -> list[dict[str, str]]:
        """The base model (when it is in the space) and the homogeneous models, each once."""
        base = self.base_candidate()
        out = ([base] if base is not None else []) + self.homogeneous_candidates()
        return list({self.key(c): c for c in out}.values())

    def all_candidates(self) -> Iterator[dict[str, str]]:
        labels = [[c.label for c in s.choices] for s in self.slots]
        for combo in itertools.product(*labels):
            yield dict(zip([s.node for s in self.slots], combo, strict=True))

    def key(self, candidate: Candidate) -> str:
        return "|".join(f"{s.node}={candidate[s.node]}" for s in self.slots)
