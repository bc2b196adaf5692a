"""The ``archgen`` command line: a thin layer over :mod:`archgen.api`.

Heavy imports (torch, the API) happen inside commands so ``archgen --help`` stays fast.
User errors (:class:`~archgen.errors.ArchgenError`) print as one clear message and exit non-zero
without a traceback.
"""

from __future__ import annotations

import codecs
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
def generate(
    spec: SpecArg,
    prompt: Annotated[str, typer.Option(help="text prompt (byte-level models)")],
    weights: Annotated[
        Path | None,
        typer.Option(help="weights.safetensors or a folder written by build/train"),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="tokens to generate")] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy")] = 0.8,
    top_k: Annotated[int | None, typer.Option(min=1, help="sample among the k best")] = 40,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
) -> None:
    """Generate text token by token with each mixer's incremental state."""
    from archgen import api
    from archgen import generate as gen

    if weights is None:
        err.print("note: no --weights given: generating from a randomly initialised model")
    model = gen.load_for_generation(spec, weights)
    info = api.compile_spec(spec).model
    tokens = gen.encode_prompt(prompt, info.vocab_size)
    typer.echo(prompt, nl=False)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    result = gen.generate(
        model,
        tokens,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        max_seq_len=info.max_seq_len,
        on_token=lambda t: typer.echo(decoder.decode(bytes([t])) if t < 256 else "", nl=False),
    )
    typer.echo("")
    err.print(
        f"{len(result.new_tokens)} tokens in {result.seconds:.2f} s "
        f"({result.tokens_per_second:.1f} tokens/s)"
    )


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
