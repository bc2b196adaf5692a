"""The ``archgen`` command line: a thin layer over :mod:`archgen.api`.

Heavy imports (torch, the API) happen inside commands so ``archgen --help`` stays fast.
User errors (:class:`~archgen.errors.ArchgenError`) print as one clear message and exit non-zero
without a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from archgen.errors import ArchgenError

app = typer.Typer(
    name="archgen",
    help="Compile mixer architectures: YAML spec -> typed IR -> passes -> PyTorch/ONNX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

SpecArg = Annotated[Path, typer.Argument(help="architecture spec (YAML)", show_default=False)]


@app.command()
def check(
    spec: SpecArg,
    seq_len: Annotated[
        int | None,
        typer.Option("--seq-len", "-L", min=1, help="sequence length for FLOPs/state"),
    ] = None,
    resolved: Annotated[
        bool, typer.Option("--resolved", help="print the spec with every default filled in")
    ] = False,
    dump_after: Annotated[
        list[str] | None,
        typer.Option("--dump-after", help="print the IR after this pass (repeatable)"),
    ] = None,
) -> None:
    """Validate a spec and print parameters, FLOPs and decode state per layer."""
    from archgen.ir.printer import print_graph

    from archgen import api
    from archgen.cli.report import print_check

    if resolved:
        typer.echo(api.resolved_yaml(spec), nl=False)
        return
    if dump_after:
        api.compile_spec(
            spec,
            seq_len=seq_len,
            dump_after=dump_after,
            on_dump=lambda name, g: typer.echo(f"// IR after {name}\n{print_graph(g)}"),
        )
    print_check(out, api.check(spec, seq_len=seq_len), spec)


@app.command()
def build(
    spec: SpecArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="output folder")],
    seed: Annotated[int, typer.Option(help="seed of the weight initialisation")] = 0,
) -> None:
    """Instantiate the model and write weights (safetensors), resolved spec and manifest."""
    from archgen import api

    result = api.build(spec, output, seed=seed)
    out.print(
        f"built {result.params:,} parameters -> {result.out_dir}/ "
        f"(weights.safetensors, spec.yaml, manifest.json; spec_hash {result.spec_hash})"
    )


@app.command()
def schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write to a file instead of stdout")
    ] = None,
) -> None:
    """Write the JSON Schema of the spec format (for editor completion)."""
    from archgen import api

    text = json.dumps(api.json_schema(), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        out.print(f"wrote {output}")


@app.command()
def version() -> None:
    """Print archgen's version."""
    from importlib.metadata import version as dist_version

    out.print(f"archgen {dist_version('archgen')}")


def main() -> None:
    try:
        app()
    except ArchgenError as exc:
        lines = str(exc).splitlines()
        for line in lines:
            prefix = "  " if line.startswith("  hint:") else "[bold red]error:[/] "
            err.print(prefix, end="", markup=True)
            err.print(line.strip() if prefix == "  " else line, markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
