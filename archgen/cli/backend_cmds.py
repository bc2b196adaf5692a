"""``archgen export | validate | doctor``: commands over :mod:`archgen.export`, and their tables.

Registered on the main app by :func:`register`; torch and the backends are imported inside the
commands so ``archgen --help`` stays fast.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from archgen.cli.pass_options import DumpAfterOpt, PassesOpt, dump_ir

if TYPE_CHECKING:
    from archgen.backends.validate import NumericsReport
    from archgen.export import DoctorReport


# Fixed choices as enums: --help lists them and typer refuses others (exit 2) before any work.
# Their values are the API's Literal types (backends/base.py, archgen/export.py); a test keeps
# the two in step (tests/cli/test_conventions.py). Commands pass ``.value`` on.
class DTypeChoice(str, Enum):
    float32 = "float32"
    float64 = "float64"
    bfloat16 = "bfloat16"
    float16 = "float16"


class ProviderChoice(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"


class DeviceChoice(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class FormatChoice(str, Enum):
    onnx = "onnx"
    tensorrt = "tensorrt"
    torch = "torch"
    hf = "hf"


class BackendChoice(str, Enum):
    eager = "eager"
    compile = "compile"
    onnx = "onnx"
    tensorrt = "tensorrt"


SpecArg = Annotated[Path, typer.Argument(help="architecture spec (YAML)", show_default=False)]
DTypeOpt = Annotated[DTypeChoice, typer.Option("--dtype", help="weights dtype (backend-dependent)")]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        help="safetensors weights, or a folder written by build/train/distill or a search's "
        "OUT/best (default: seeded init)",
    ),
]
MinSeq = Annotated[int | None, typer.Option("--min-seq", min=1, help="shortest sequence")]
OptSeq = Annotated[int | None, typer.Option("--opt-seq", min=1, help="typical sequence")]
MaxSeq = Annotated[
    int | None, typer.Option("--max-seq", min=1, help="longest sequence (default max_seq_len)")
]
SeedOpt = Annotated[
    int | None, typer.Option("--validation-seed", help="seed of the random test tokens")
]
ProviderOpt = Annotated[
    ProviderChoice, typer.Option("--provider", help="onnxruntime execution provider")
]
DeviceOpt = Annotated[
    DeviceChoice, typer.Option("--device", help="eager/compile: where the model runs")
]
PortableOpt = Annotated[
    bool,
    typer.Option(
        "--portable",
        help="onnx: standard ONNX ops only (no onnxruntime contrib ops such as the fused "
        "GroupQueryAttention, no archgen custom op such as the fused Mamba scan); slower in "
        "onnxruntime, runs in other ONNX runtimes",
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force", help="replace a previous `archgen export` output in --output (never other files)"
    ),
]


def print_numerics(console: Console, report: NumericsReport) -> None:
    """One row per block boundary, worst value over the sequence lengths; the first failing
    block is marked."""
    first = report.first_failure
    lens = ", ".join(str(n) for n in report.seq_lens)
    table = Table(
        title=f"numerics: {report.backend} {report.dtype} vs eager float64 "
        f"(B={report.batch}, L={lens}, seed {report.seed})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("block", no_wrap=True)
    # max_rel is in numerics.json; the terminal keeps to 80 columns.
    for col in ("max abs", "rmse ratio", "1-cosine", "top-1", "KL"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for name in report.boundaries:
        rows = [r for r in report.results if r.name == name]
        ms = [r.metrics for r in rows]
        failed = [r for r in rows if not r.passed]
        top1 = [m.top1 for m in ms if m.top1 is not None]
        kl = [m.kl for m in ms if m.kl is not None]
        if not failed:
            status = "[green]ok[/]"
        else:
            status = "[bold red]FIRST[/]" if first is not None and first.name == name else "fail"
        table.add_row(
            name,
            f"{max(m.max_abs for m in ms):.1e}",
            f"{max(m.rmse_ratio for m in ms):.1e}",
            f"{max(1 - m.cosine for m in ms):.1e}",
            f"{min(top1):.3f}" if top1 else "",
            f"{max(kl):.1e}" if kl else "",
            status,
        )
    console.print(table)
    for r in report.results:
        if not r.passed:
            console.print(f"  {r.name} at L={r.seq_len}: {'; '.join(r.failures)}", markup=False)
    if first is None:
        console.print(
            f"[green]passed[/]: every block within the {report.backend}/{report.dtype} tolerance"
        )
    else:
        console.print(
            f"[bold red]failed[/]: first failing block [bold]{first.name}[/] at "
            f"L={first.seq_len} ({'; '.join(first.failures)})"
        )


def print_doctor(console: Console, report: DoctorReport) -> None:
    """Node kinds x backends; an unavailable backend's reason is printed once, below."""
    table = Table(title="what each backend can lower here", title_justify="left")
    table.add_column("node kind")
    table.add_column("role")
    for name in report.backends:
        table.add_column(name, overflow="fold")
    for (kind, role), row in report.cells.items():
        cells = []
        for b in report.backends:
            if not report.available[b][0]:
                cells.append("[yellow]unavailable[/]")
            else:
                cells.append("[green]ok[/]" if row[b] == "ok" else f"[red]{escape(row[b])}[/]")
        table.add_row(kind, role, *cells)
    console.print(table)
    for name, (ok, why) in report.available.items():
        if not ok:
            console.print(f"{name}: not available on this machine: {why}", markup=False)


def _export_hf(
    out: Console,
    spec: Path,
    output: Path,
    weights: Path | None,
    passes: str | None,
    validation_seed: int | None,
    force: bool,
    engine_opts: dict[str, bool],
) -> None:
    """``export --format hf`` (:func:`archgen.hf_io.export_hf`); SPEC may be a model folder."""
    from archgen.errors import ArchgenError
    from archgen.hf_io import export_hf, quiet_transformers

    given = [name for name, used in engine_opts.items() if used]
    if given:
        raise ArchgenError(
            f"{', '.join(given)}: engine options, which --format hf does not take",
            hint="the weights are written in float32, as archgen holds them",
        )
    quiet_transformers()
    result = export_hf(
        spec, output, weights=weights, passes=passes, validation_seed=validation_seed, force=force
    )
    m = result.metrics
    out.print(
        f"exported hf ({result.architecture}) -> {result.out_dir}/ ({', '.join(result.files)}); "
        f"logits vs archgen float64: max abs {m.max_abs:.1e}, top-1 {m.top1:.3f}",
        markup=False,
        soft_wrap=True,
    )


def register(app: typer.Typer, out: Console) -> None:
    """Add the backend commands to ``app``."""

    @app.command()
    def export(
        spec: SpecArg,
        output: Annotated[
            Path, typer.Option("--output", "--out", "-o", help="output folder (new or empty)")
        ],
        fmt: Annotated[
            FormatChoice, typer.Option("--format", "-f", help="what to write")
        ] = FormatChoice.onnx,
        dtype: DTypeOpt = DTypeChoice.float32,
        weights: WeightsOpt = None,
        min_seq: MinSeq = None,
        opt_seq: OptSeq = None,
        max_seq: MaxSeq = None,
        validation_seed: SeedOpt = None,
        provider: ProviderOpt = ProviderChoice.cpu,
        portable: PortableOpt = False,
        passes: PassesOpt = None,
        dump_after: DumpAfterOpt = None,
        force: ForceOpt = False,
    ) -> None:
        """Export an engine, validate it against the float64 reference, write it atomically."""
        from archgen import export as api
        from archgen.errors import ArchgenError

        dump_ir(spec, passes, dump_after)
        if fmt is FormatChoice.hf:  # a transformers folder: no engine, checked against transformers
            engine_opts = {"--dtype": dtype is not DTypeChoice.float32,
                           "--provider": provider is not ProviderChoice.cpu,
                           "--portable": portable, "--min-seq/--opt-seq/--max-seq":
                           (min_seq, opt_seq, max_seq) != (None, None, None)}  # fmt: skip
            _export_hf(out, spec, output, weights, passes, validation_seed, force, engine_opts)
            return
        try:
            result = api.export(
                spec,
                output,
                fmt=fmt.value,  # type: ignore[arg-type]
                dtype=dtype.value,  # type: ignore[arg-type]
                weights=weights,
                profile=api.Profile(min_seq, opt_seq, max_seq),
                validation_seed=validation_seed,
                provider=provider.value,  # type: ignore[arg-type]
                portable=portable,
                passes=passes,
                force=force,
            )
        except ArchgenError as exc:  # NumericsError carries the report (its import needs torch)
            report = getattr(exc, "report", None)
            if report is not None:
                print_numerics(out, report)
            raise
        print_numerics(out, result.report)
        for name, why in result.artifact.meta.fallbacks().items():
            out.print(f"[yellow]fallback[/] {name}: {why}")
        for note in result.artifact.meta.notes:
            out.print(f"note: {note}", markup=False)
        out.print(
            f"exported {fmt.value} -> {result.out_dir}/ ({', '.join(result.files)})", markup=False
        )

    @app.command()
    def validate(
        spec: SpecArg,
        backend: Annotated[
            BackendChoice, typer.Option("--backend", "-b", help="the backend to compare")
        ] = BackendChoice.onnx,
        dtype: DTypeOpt = DTypeChoice.float32,
        weights: WeightsOpt = None,
        min_seq: MinSeq = None,
        opt_seq: OptSeq = None,
        max_seq: MaxSeq = None,
        validation_seed: SeedOpt = None,
        provider: ProviderOpt = ProviderChoice.cpu,
        device: DeviceOpt = DeviceChoice.cpu,
        portable: PortableOpt = False,
        json_out: Annotated[
            Path | None, typer.Option("--json", help="also write the report (numerics.json)")
        ] = None,
    ) -> None:
        """Compare a backend with the eager float64 reference at every block boundary."""
        from archgen import export as api
        from archgen.backends.validate import NumericsError
        from archgen.errors import ArchgenError
        from archgen.staging import check_output_file

        if json_out is not None:  # before the work, not after it
            check_output_file(json_out, "--json")
        result = api.validate(
            spec,
            backend=backend.value,
            dtype=dtype.value,  # type: ignore[arg-type]
            weights=weights,
            profile=api.Profile(min_seq, opt_seq, max_seq),
            seed=validation_seed,
            provider=provider.value,  # type: ignore[arg-type]
            device=device.value,  # type: ignore[arg-type]
            portable=portable,
        )
        print_numerics(out, result.report)
        if json_out is not None:
            try:
                result.report.write(json_out)
            except OSError as exc:
                raise ArchgenError(f"cannot write {json_out}: {exc.strerror or exc}") from None
        first = result.report.first_failure
        if first is not None:
            raise NumericsError(f"{backend.value} {dtype.value}: first failing block {first.name}")

    @app.command()
    def doctor(
        spec: SpecArg,
        deep: Annotated[
            bool,
            typer.Option(
                "--deep/--quick",
                help="also trace each mixer kind alone for onnx (seconds per kind; the quick "
                "default asks each backend's rules only)",
            ),
        ] = False,
    ) -> None:
        """Which backend can lower each node kind of SPEC on this machine, and why not."""
        from archgen import export as api

        print_doctor(out, api.doctor(spec, deep=deep))
