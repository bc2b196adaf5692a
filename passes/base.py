"""Pass infrastructure: ``Pass(graph) -> PassResult(graph, changed)`` and an ordered pipeline.

A pass declares the facts it ``requires`` and ``ensures`` (e.g. ``"shapes"``, ``"cost"``) and
whether it is ``exact`` (numerically identical model) or approximate. Errors raised inside a
pass come out as :class:`PassError` naming the pass and the passes that ran before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from archgen.errors import ArchgenError
from archgen.ir.graph import Graph


@dataclass(frozen=True)
class PassResult:
    graph: Graph
    changed: bool


class PassError(ArchgenError):
    def __init__(self, pass_name: str, before: Sequence[str], message: str) -> None:
        self.pass_name = pass_name
        self.before = list(before)
        after = f"after [{', '.join(before)}]" if before else "as the first pass"
        super().__init__(f"in pass {pass_name}, {after}: {message}")


class GraphInvalid(Exception):
    """Raised by passes for a graph that breaks an IR rule; wrapped into :class:`PassError`."""


@dataclass(frozen=True)
class Pass:
    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    ensures: ClassVar[tuple[str, ...]] = ()
    exact: ClassVar[bool] = True

    def run(self, graph: Graph) -> PassResult:
        raise NotImplementedError

    def __call__(self, graph: Graph) -> PassResult:
        return self.run(graph)


DumpHook = Callable[[str, Graph], None]


def run_pipeline(
    graph: Graph,
    passes: Sequence[Pass],
    *,
    dump_after: Sequence[str] = (),
    on_dump: DumpHook | None = None,
) -> Graph:
    """Run ``passes`` in order; ``on_dump(name, graph)`` after each pass named in ``dump_after``."""
    known = {p.name for p in passes}
    unknown = [n for n in dump_after if n not in known]
    if unknown:
        raise ArchgenError(
            f"--dump-after names pass(es) not in the pipeline: {', '.join(unknown)}",
            hint=f"the pipeline is: {', '.join(p.name for p in passes)}",
        )
    facts: set[str] = set()
    done: list[str] = []
    for p in passes:
        missing = [f for f in p.requires if f not in facts]
        if missing:
            raise PassError(
                p.name, done, f"requires {', '.join(missing)}, which no earlier pass ensures"
            )
        try:
            result = p.run(graph)
        except (GraphInvalid, ValueError, KeyError) as exc:
            raise PassError(p.name, done, str(exc)) from exc
        graph = result.graph
        facts.update(p.ensures)
        done.append(p.name)
        if on_dump is not None and p.name in dump_after:
            on_dump(p.name, graph)
    return graph
