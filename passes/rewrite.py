"""The rule driver: rewrites as local rules applied to a fixpoint.

A :class:`Rule` looks at one node and answers ``None`` (not its business), a :class:`Rewrite`
(a function of the graph made of :mod:`archgen.ir.edit` calls, with a one-line description) or
a :class:`Reject` (it would apply here but cannot, and says why). :func:`apply_rules` scans the
graph in order, applies the first rewrite it finds, and starts again, until no rule rewrites or
``max_steps`` is reached (a rule set that does not converge is a bug, reported as such).

A :class:`RewritePass` is a pass made of rules. It notes when nothing matched (silence would
look like success) and, when ``strict``, turns rejections into an error naming every node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from archgen.ir.graph import Graph, Node
from archgen.passes.base import GraphInvalid, Pass, PassResult

DEFAULT_MAX_STEPS = 10_000


@dataclass(frozen=True)
class Rewrite:
    description: str
    apply: Callable[[Graph], Graph]


@dataclass(frozen=True)
class Reject:
    reason: str


class Rule(Protocol):
    name: str

    def match(self, graph: Graph, node: Node) -> Rewrite | Reject | None: ...


@dataclass(frozen=True)
class Applied:
    rule: str
    node: str
    description: str


@dataclass(frozen=True)
class Rejected:
    rule: str
    node: str
    reason: str


@dataclass(frozen=True)
class RewriteOutcome:
    graph: Graph
    applied: tuple[Applied, ...]
    rejected: tuple[Rejected, ...]


class NoFixpoint(GraphInvalid):
    """The rules kept rewriting past the step limit."""


def apply_rules(
    graph: Graph, rules: Sequence[Rule], *, max_steps: int = DEFAULT_MAX_STEPS
) -> RewriteOutcome:
    applied: list[Applied] = []
    rejected: dict[tuple[str, str], Rejected] = {}
    while True:
        step = _first_rewrite(graph, rules, rejected)
        if step is None:
            break
        if len(applied) >= max_steps:
            raise NoFixpoint(
                f"rules did not reach a fixpoint in {max_steps} rewrites "
                f"(last: {step[0].name} at %{step[1].name})"
            )
        rule, node, rewrite = step
        graph = rewrite.apply(graph)
        applied.append(Applied(rule.name, node.name, rewrite.description))
    # a rejection later made moot by a rewrite of the same node does not count
    still = tuple(r for r in rejected.values() if r.node in graph)
    return RewriteOutcome(graph, tuple(applied), still)


def _first_rewrite(
    graph: Graph, rules: Sequence[Rule], rejected: dict[tuple[str, str], Rejected]
) -> tuple[Rule, Node, Rewrite] | None:
    for node in graph.nodes:
        for rule in rules:
            answer = rule.match(graph, node)
            if isinstance(answer, Rewrite):
                rejected.pop((rule.name, node.name), None)
                return rule, node, answer
            if isinstance(answer, Reject):
                rejected[rule.name, node.name] = Rejected(rule.name, node.name, answer.reason)
    return None


@dataclass(frozen=True)
class RewritePass(Pass):
    """A pass made of rules (subclasses define :meth:`rules`)."""

    analysis: ClassVar[bool] = False
    invalidates: ClassVar[tuple[str, ...]] = ("shapes", "cost")
    strict: ClassVar[bool] = True  # a rejection is an error, not a note

    def rules(self, graph: Graph) -> Sequence[Rule]:
        raise NotImplementedError

    def run(self, graph: Graph) -> PassResult:
        outcome = apply_rules(graph, self.rules(graph))
        if outcome.rejected and self.strict:
            by_reason: dict[str, list[str]] = {}
            for r in outcome.rejected:
                by_reason.setdefault(r.reason, []).append(f"%{r.node}")
            raise GraphInvalid(
                "; ".join(f"cannot apply at {', '.join(n)}: {why}" for why, n in by_reason.items())
            )
        notes = [f"skipped %{r.node}: {r.reason}" for r in outcome.rejected]
        notes += [f"%{a.node}: {a.description}" for a in outcome.applied]
        if not outcome.applied:
            notes.append("matched nothing: the graph is unchanged")
        return PassResult(outcome.graph, bool(outcome.applied), tuple(notes))


__all__ = [
    "Applied",
    "Reject",
    "Rejected",
    "Rewrite",
    "RewriteOutcome",
    "RewritePass",
    "Rule",
    "apply_rules",
]
