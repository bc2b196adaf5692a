"""Pass infrastructure: ``Pass(graph) -> PassResult(graph, changed, notes)`` and a pipeline.

A pass declares the facts it ``requires``, ``ensures`` and -- when it changes the graph --
``invalidates`` (``"shapes"``, ``"cost"``), and whether it is ``exact`` (the same function of
the inputs, forward and decode) or approximate. Its options are its dataclass fields, declared
with :func:`option` (a doc string each), so the CLI parses and lists them. Errors raised inside a
pass come out as :class:`PassError` naming the pass and the passes that ran before it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from archgen.errors import ArchgenError
from archgen.ir.graph import Graph


@dataclass(frozen=True)
class PassResult:
    graph: Graph
    changed: bool
    notes: tuple[str, ...] = ()  # what the user should know: nothing matched, what was skipped


class PassError(ArchgenError):
    def __init__(self, pass_name: str, before: Sequence[str], message: str) -> None:
        self.pass_name = pass_name
        self.before = list(before)
        after = f"after [{', '.join(before)}]" if before else "as the first pass"
        super().__init__(f"in pass {pass_name}, {after}: {message}")


class GraphInvalid(Exception):
    """Raised by passes for a graph that breaks an IR rule; wrapped into :class:`PassError`."""


def option(doc: str, default: Any = dataclasses.MISSING) -> Any:
    """A pass option: a dataclass field with the doc string ``archgen passes`` prints."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Pass:
    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    ensures: ClassVar[tuple[str, ...]] = ()
    invalidates: ClassVar[tuple[str, ...]] = ()  # facts a change by this pass makes stale
    exact: ClassVar[bool] = True
    analysis: ClassVar[bool] = True  # checks or annotates only; never changes the function

    def run(self, graph: Graph) -> PassResult:
        raise NotImplementedError

    def __call__(self, graph: Graph) -> PassResult:
        return self.run(graph)

    @classmethod
    def options(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    def describe(self) -> str:
        """``name{k=v,...}`` with the options that differ from their defaults."""
        set_ = [
            f"{f.name}={getattr(self, f.name)}"
            for f in self.options()
            if f.default is dataclasses.MISSING or getattr(self, f.name) != f.default
        ]
        return self.name + (f"{{{','.join(set_)}}}" if set_ else "")


PASS_REGISTRY: dict[str, type[Pass]] = {}
PassT = TypeVar("PassT", bound=type[Pass])


def register_pass(cls: PassT) -> PassT:
    """Class decorator: make ``cls`` runnable by name (one registry for all passes)."""
    if cls.name in PASS_REGISTRY:
        raise ValueError(f"duplicate pass name {cls.name!r}")
    PASS_REGISTRY[cls.name] = cls
    return cls


DumpHook = Callable[[str, Graph], None]
NoteHook = Callable[[str, str], None]


def run_pipeline(
    graph: Graph,
    passes: Sequence[Pass],
    *,
    dump_after: Sequence[str] = (),
    on_dump: DumpHook | None = None,
    on_note: NoteHook | None = None,
) -> Graph:
    """Run ``passes`` in order; ``on_dump(name, graph)`` after each pass named in ``dump_after``,
    ``on_note(name, note)`` for each note a pass returns. A pass that changes the graph drops
    the facts it ``invalidates``: a later pass requiring them needs an earlier one re-ensuring
    them (see :func:`archgen.passes.pipeline.full_pipeline`)."""
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
        if result.changed:
            facts.difference_update(p.invalidates)
        facts.update(p.ensures)
        done.append(p.name)
        if on_note is not None:
            for note in result.notes:
                on_note(p.name, note)
            if result.changed and not p.exact:
                on_note(
                    p.name,
                    "approximate: the rewritten model computes another function than the "
                    "original (its weights need training or distillation: archgen convert)",
                )
        if on_dump is not None and p.name in dump_after:
            on_dump(p.name, graph)
    return graph
