"""The pass options shared by ``check``, ``build`` and ``export``: ``--passes`` and
``--dump-after`` (imports stay inside :func:`dump_ir`, so ``--help`` needs no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PassesOpt = Annotated[
    str | None,
    typer.Option(
        "--passes",
        help='rewrites to apply, e.g. "compress_segments{s=16,local=swa}" (`archgen passes` '
        "lists them); build and export record them in the written spec.yaml (model.passes)",
    ),
]
DumpAfterOpt = Annotated[
    list[str] | None,
    typer.Option("--dump-after", help="print the IR after this pass (repeatable)"),
]


def dump_ir(
    spec: Path, passes: str | None, dump_after: list[str] | None, seq_len: int | None = None
) -> None:
    """Print the IR after each pass named in ``dump_after`` of the spec's full pipeline."""
    if not dump_after:
        return
    from archgen import api
    from archgen.ir.printer import print_graph

    api.compile_spec(
        spec / "spec.yaml" if spec.is_dir() else spec,  # a model folder's own spec
        seq_len=seq_len,
        passes=passes,
        dump_after=dump_after,
        on_dump=lambda name, g: typer.echo(f"// IR after {name}\n{print_graph(g)}"),
    )
