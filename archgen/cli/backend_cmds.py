"""``archgen export | validate | doctor``: commands over :mod:`archgen.export`, and their tables.

Registered on the main app by :func:`register`; torch and the backends are imported inside the
commands so ``archgen --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from archgen.backends.validate import NumericsReport
    from archgen.export import DoctorReport

SpecArg = Annotated[Path, typer.Argument(help="architecture spec (YAML)", show_default=False)]
DTypeOpt = Annotated[
    str, typer.Option("--dtype", help="float32 | float64 | bfloat16 | float16 (backend-dependent)")
]
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
ProviderOpt = Annotated[str, typer.Option("--provider", help="onnxruntime EP: cpu|cuda|tensorrt")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="eager/compile: where the model runs, cpu | cuda")
]
PortableOpt = Annotated[
    bool,
    typer.Option(
        "--portable",
        help="onnx: standard ONNX ops only (no onnxruntime contrib ops such as the fused "
        "GroupQueryAttention); slower in onnxruntime, runs in other ONNX runtimes",
    ),
]
PassesOpt = Annotated[
    str | None,
    typer.Option(
        "--passes",
        help='rewrites to apply, e.g. "compress_segments{s=16,local=swa}"; recorded in the '
        "written spec.yaml (model.passes)",
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force", help="replace a previous `archgen export` output in --output (never other files)"
    ),
]

DTYPES = ("float32", "float64", "bfloat16", "float16")
DEVICES = ("cpu", "cuda")


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        from archgen.errors import ArchgenError

        raise ArchgenError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


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
            Path, typer.Option("--output", "-o", help="output folder (new or empty)")
        ],
        fmt: Annotated[
            str, typer.Option("--format", "-f", help="onnx | tensorrt | torch | hf")
        ] = "onnx",
        dtype: DTypeOpt = "float32",
        weights: WeightsOpt = None,
        min_seq: MinSeq = None,
        opt_seq: OptSeq = None,
        max_seq: MaxSeq = None,
        validation_seed: SeedOpt = None,
        provider: ProviderOpt = "cpu",
        portable: PortableOpt = False,
        passes: PassesOpt = None,
        force: ForceOpt = False,
    ) -> None:
        """Export an engine, validate it against the float64 reference, write it atomically."""
        from archgen import export as api
        from archgen.errors import ArchgenError

        _check_choice(fmt, (*api.FORMAT_BACKEND, "hf"), "format")
        _check_choice(dtype, DTYPES, "dtype")
        if fmt == "hf":  # a transformers folder: no engine, checked against transformers
            engine_opts = {"--dtype": dtype != "float32", "--provider": provider != "cpu",
                           "--portable": portable, "--min-seq/--opt-seq/--max-seq":
                           (min_seq, opt_seq, max_seq) != (None, None, None)}  # fmt: skip
            _export_hf(out, spec, output, weights, passes, validation_seed, force, engine_opts)
            return
        try:
            result = api.export(
                spec,
                output,
                fmt=fmt,  # type: ignore[arg-type]
                dtype=dtype,  # type: ignore[arg-type]
                weights=weights,
                profile=api.Profile(min_seq, opt_seq, max_seq),
                validation_seed=validation_seed,
                provider=provider,  # type: ignore[arg-type]
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
        out.print(f"exported {fmt} -> {result.out_dir}/ ({', '.join(result.files)})", markup=False)

    @app.command()
    def validate(
        spec: SpecArg,
        backend: Annotated[
            str, typer.Option("--backend", "-b", help="eager | compile | onnx | tensorrt")
        ] = "onnx",
        dtype: DTypeOpt = "float32",
        weights: WeightsOpt = None,
        min_seq: MinSeq = None,
        opt_seq: OptSeq = None,
        max_seq: MaxSeq = None,
        validation_seed: SeedOpt = None,
        provider: ProviderOpt = "cpu",
        device: DeviceOpt = "cpu",
        portable: PortableOpt = False,
        json_out: Annotated[
            Path | None, typer.Option("--json", help="also write the report (numerics.json)")
        ] = None,
    ) -> None:
        """Compare a backend with the eager float64 reference at every block boundary."""
        from archgen import export as api
        from archgen.backends.validate import NumericsError

        _check_choice(dtype, DTYPES, "dtype")
        _check_choice(device, DEVICES, "device")
        result = api.validate(
            spec,
            backend=backend,
            dtype=dtype,  # type: ignore[arg-type]
            weights=weights,
            profile=api.Profile(min_seq, opt_seq, max_seq),
            seed=validation_seed,
            provider=provider,  # type: ignore[arg-type]
            device=device,  # type: ignore[arg-type]
            portable=portable,
        )
        print_numerics(out, result.report)
        if json_out is not None:
            result.report.write(json_out)
        first = result.report.first_failure
        if first is not None:
            raise NumericsError(f"{backend} {dtype}: first failing block {first.name}")

    @app.command()
    def doctor(
        spec: SpecArg,
        deep: Annotated[
            bool, typer.Option("--deep/--quick", help="also trace each mixer for onnx (slower)")
        ] = True,
    ) -> None:
        """Which backend can lower each node kind of SPEC on this machine, and why not."""
        from archgen import export as api

        print_doctor(out, api.doctor(spec, deep=deep))
