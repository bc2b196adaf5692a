"""The ``archgen`` command line: a thin layer over :mod:`archgen.api`.

Heavy imports (torch, the API) happen inside commands so ``archgen --help`` stays fast.
User errors (:class:`~archgen.errors.ArchgenError`) print as one clear message and exit non-zero
without a traceback.
"""

from __future__ import annotations

import codecs
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from archgen.cli.backend_cmds import register as register_backend_commands
from archgen.cli.pass_options import DumpAfterOpt, PassesOpt, dump_ir
from archgen.errors import ArchgenError

app = typer.Typer(
    name="archgen",
    help="Compile mixer architectures: YAML spec -> typed IR -> passes -> PyTorch/ONNX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version as dist_version

        out.print(f"archgen {dist_version('archgen')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", "-V", callback=_print_version, is_eager=True, help="print the version"
        ),
    ] = None,
) -> None:
    """Compile mixer architectures: YAML spec -> typed IR -> passes -> PyTorch/ONNX."""


SpecArg = Annotated[Path, typer.Argument(help="architecture spec (YAML)", show_default=False)]
# -o/--out/--output: the same spelling on every command that writes
NewFolderOpt = Annotated[
    Path, typer.Option("--output", "--out", "-o", help="output folder (new or empty)")
]
FORCE_HELP = "replace a previous `archgen {}` output in --output (never other files)"


class DenoiserBackend(str, Enum):  # what runs a masked-diffusion LM's denoiser in generate
    eager = "eager"
    compile = "compile"


class QualityChoice(str, Enum):  # archgen.search_api.FIDELITIES
    analytic = "analytic"
    capability = "capability"
    blockwise = "blockwise"


class WinnerFormat(str, Enum):  # archgen.export.FORMAT_BACKEND
    onnx = "onnx"
    tensorrt = "tensorrt"
    torch = "torch"


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
    passes: PassesOpt = None,
    dump_after: DumpAfterOpt = None,
) -> None:
    """Validate a spec and print parameters, FLOPs and decode state per layer."""
    from archgen import api
    from archgen.cli.report import print_check

    if resolved:
        typer.echo(api.resolved_yaml(spec), nl=False)
        return
    dump_ir(spec, passes, dump_after, seq_len)
    report = api.check(spec, seq_len=seq_len, passes=passes, on_note=_print_note)
    print_check(out, report, spec)
    for warning in report.warnings:
        err.print(f"warning: {warning}", markup=False, soft_wrap=True)


def _print_note(pass_name: str, note: str) -> None:
    err.print(f"note: {pass_name}: {note}", markup=False, soft_wrap=True)


@app.command("passes")
def list_passes() -> None:
    """List every pass: what it does, whether it is exact, and its options."""
    from archgen.cli.report import print_passes

    print_passes(out)


@app.command()
def build(
    spec: SpecArg,
    output: NewFolderOpt,
    seed: Annotated[int, typer.Option(help="seed of the weight initialisation")] = 0,
    passes: PassesOpt = None,
    dump_after: DumpAfterOpt = None,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP.format("build"))] = False,
) -> None:
    """Instantiate the model and write weights (safetensors), resolved spec and manifest."""
    from archgen import api

    dump_ir(spec, passes, dump_after)
    result = api.build(spec, output, seed=seed, passes=passes, force=force)
    out.print(
        f"built {result.params:,} parameters -> {result.out_dir}/ "
        f"(weights.safetensors, spec.yaml, manifest.json; spec_hash {result.spec_hash})"
    )


@app.command()
def convert(
    folder: Annotated[
        Path,
        typer.Argument(
            help="model folder (spec.yaml + weights.safetensors) from build/train/distill",
            show_default=False,
        ),
    ],
    passes: Annotated[
        str,
        typer.Option(
            "--passes",
            help='rewrites to apply, e.g. "compress_segments{s=16,local=swa}" (appended to the '
            "folder's model.passes)",
        ),
    ],
    output: NewFolderOpt,
    seed: Annotated[int, typer.Option(help="seed of the new tensors' initialisation")] = 0,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP.format("convert"))] = False,
) -> None:
    """Rewrite a model's graph and carry its weights: same-named, same-shaped tensors are
    copied, inserted mixers start at zero output."""
    from archgen.convert import convert as run

    result = run(folder, passes, output, seed=seed, force=force)
    w = result.weights
    out.print(
        f"converted {folder} -> {result.out_dir}/ (passes: {result.passes}): carried "
        f"{len(w.carried)} tensors, new {len(w.new)} ({len(w.zeroed)} mixers at zero output), "
        f"dropped {len(w.dropped)}"
        + (f", re-initialised {len(w.reshaped)} (shape changed)" if w.reshaped else ""),
        markup=False,
        soft_wrap=True,
    )
    for what, names in (("shape changed, initialised afresh", w.reshaped),
                        ("dropped (no place in the new model)", w.dropped)):  # fmt: skip
        for name in names:
            err.print(f"warning: {name}: {what}", markup=False)


@app.command("import")
def import_(
    hf_dir: Annotated[
        Path,
        typer.Argument(
            help="Hugging Face model folder (config.json + safetensors, e.g. from "
            "save_pretrained): Mamba, Mamba-2, Llama or Bamba",
            show_default=False,
        ),
    ],
    output: NewFolderOpt,
    name: Annotated[str | None, typer.Option(help="model name (default: the folder's)")] = None,
    max_seq_len: Annotated[
        int | None,
        typer.Option(
            "--max-seq-len", min=1, help="default: max_position_embeddings, else 4096 (Mamba)"
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP.format("import"))] = False,
) -> None:
    """Turn a transformers checkpoint into an archgen model folder (spec.yaml +
    weights.safetensors), checked logit for logit against transformers."""
    from archgen.hf_io import import_hf, quiet_transformers

    quiet_transformers()
    result = import_hf(hf_dir, output, name=name, max_seq_len=max_seq_len, force=force)
    out.print(
        f"imported {result.architecture} ({result.params:,} parameters) -> {result.out_dir}/ "
        f"(spec.yaml, weights.safetensors, manifest.json); logits vs transformers: max abs "
        f"{result.metrics.max_abs:.1e}, top-1 {result.metrics.top1:.3f}",
        markup=False,
        soft_wrap=True,
    )


@app.command()
def schema(
    output: Annotated[
        Path | None,
        typer.Option("--output", "--out", "-o", help="write to a file instead of stdout"),
    ] = None,
) -> None:
    """Write the JSON Schema of the spec format (for editor completion)."""
    from archgen import api
    from archgen.staging import check_output_file

    text = json.dumps(api.json_schema(), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    check_output_file(output, "-o")
    try:
        output.write_text(text)
    except OSError as exc:
        raise ArchgenError(f"cannot write {output}: {exc.strerror or exc}") from None
    out.print(f"wrote {output}")


@app.command()
def generate(
    spec: SpecArg,
    prompt: Annotated[
        str, typer.Option(help="text prompt (UTF-8 bytes, or the run's tokenizer.json)")
    ],
    weights: Annotated[
        Path | None,
        typer.Option(
            help="weights.safetensors or a folder written by build/train/distill or a "
            "search's OUT/best; masked-diffusion LMs also take an `archgen export --format "
            "onnx` folder (the decoder then calls model.onnx in onnxruntime)"
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="tokens to generate")] = 64,
    temperature: Annotated[
        float | None,
        typer.Option(min=0.0, help="0 = greedy (default 0.8; masked-diffusion decoding: 0 only)"),
    ] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="sample among the k best")] = 40,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    decoder: Annotated[
        str | None,
        typer.Option(
            help="masked-diffusion LMs: confidence{tokens=1,block=32}, threshold{tau=0.9,"
            "block=32} or localleap{tau=0.9,tau_relax=0.75,radius=4,block=32} (the default)"
        ),
    ] = None,
    backend: Annotated[
        DenoiserBackend | None,
        typer.Option(
            "--backend",
            "-b",
            help="masked-diffusion LMs: what runs the denoiser (eager, or compile: "
            "torch.compile); an onnx export folder as --weights runs in onnxruntime",
        ),
    ] = None,
) -> None:
    """Generate text token by token with each mixer's incremental state (masked-diffusion LMs:
    by denoising the answer with a --decoder policy)."""
    from archgen import api
    from archgen import generate as gen

    info = api.compile_spec(spec).model
    if info.mask_token is None and backend is not None:
        raise ArchgenError(
            f"--backend applies to masked-diffusion-lm models; {spec} is a {info.task}",
            hint="drop --backend (a causal LM decodes with each mixer's eager incremental state)",
        )
    if info.mask_token is None and decoder is not None:
        raise ArchgenError(
            f"--decoder applies to masked-diffusion-lm models; {spec} is a {info.task}",
            hint="drop --decoder (a causal LM samples token by token)",
        )
    if info.mask_token is not None:
        _generate_diffusion(spec, weights, prompt, max_new_tokens, temperature, decoder, backend)
        return
    if gen.is_onnx_export(weights):
        raise ArchgenError(
            f"{weights} is an onnx export folder: generate drives those for masked-diffusion "
            f"LMs only; {spec} is a {info.task}",
            hint="pass the weights it was exported from (a causal LM's decode_step.onnx is "
            "driven by OnnxArtifact.generate_greedy)",
        )
    if weights is None:
        err.print("note: no --weights given: generating from a randomly initialised model")
    tokenizer = gen.load_tokenizer(spec, weights, info.vocab_size)
    model = gen.load_for_generation(spec, weights)
    tokens = gen.encode_prompt(prompt, info.vocab_size, tokenizer)
    temperature = 0.8 if temperature is None else temperature
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
        on_token=lambda t: typer.echo(decoder.decode(gen.token_bytes(t, tokenizer)), nl=False),
        tokenizer=tokenizer,
    )
    typer.echo("")
    err.print(
        f"{len(result.new_tokens)} tokens in {result.seconds:.2f} s "
        f"({result.tokens_per_second:.1f} tokens/s)"
    )


def _generate_diffusion(
    spec: Path,
    weights: Path | None,
    prompt: str,
    max_new_tokens: int,
    temperature: float | None,
    decoder: str | None,
    backend: DenoiserBackend | None,
) -> None:
    from archgen import api, decoding
    from archgen import generate as gen

    policy = decoding.parse_decoder(decoder or "localleap")
    policy.check_length(max_new_tokens)  # before loading anything
    if temperature not in (None, 0.0):
        raise ArchgenError(
            f"--temperature {temperature}: masked-diffusion decoding is greedy (temperature 0) "
            "so far",
            hint="drop --temperature",
        )
    info = api.compile_spec(spec).model
    assert info.mask_token is not None
    tokenizer = gen.load_tokenizer(spec, weights, info.vocab_size - 1)
    tokens = gen.encode_prompt(prompt, info.vocab_size - 1, tokenizer)
    if weights is None:
        err.print("note: no --weights given: generating from a randomly initialised model")
    denoiser, runs_on = gen.load_denoiser(spec, weights, backend.value if backend else None)
    result = decoding.decode(
        denoiser, tokens, max_new_tokens, policy,
        mask_token=info.mask_token, max_seq_len=info.max_seq_len,
    )  # fmt: skip
    typer.echo(prompt + gen.decode_text(result.new_tokens, tokenizer))
    per_call = " ".join(str(n) for n in result.committed_per_call)
    err.print(
        f"{len(result.new_tokens)} tokens in {result.seconds:.2f} s with {policy} ({runs_on}): "
        f"NFE {result.nfe} ({result.tokens_per_call:.2f} tokens per call; per call: {per_call})",
        markup=False,
        soft_wrap=True,
    )


@app.command()
def search(
    spec: SpecArg,
    budget: Annotated[
        str | None,
        typer.Option(
            help="latency budget, e.g. 10ms, or 90% of the base model's latency measured here "
            "(overrides search.budget)"
        ),
    ] = None,
    trials: Annotated[
        int | None, typer.Option(min=1, help="candidates to evaluate (repeats are free)")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "--out",
            "-o",
            help="output folder (default: runs/search-NAME, NAME the "
            "spec's model.name); rerun with the same folder to resume",
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage URL (default: SQLite in the output folder)"),
    ] = None,
    quality: Annotated[
        QualityChoice | None, typer.Option(help="quality fidelity (overrides search.quality)")
    ] = None,
    quick: Annotated[bool, typer.Option(help="shorter defaults for a first look")] = False,
    export: Annotated[
        WinnerFormat | None, typer.Option(help="export the winner and validate its numerics")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="sampler seed (overrides search.seed)")] = None,
    finalize_steps: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="end-to-end distillation steps for the assembled winner written to OUT/best/ "
            "(default 100, 40 with --quick; 0 skips)",
        ),
    ] = None,
) -> None:
    """Search mixer placements under a latency budget; rerun the same command to resume."""
    from archgen.cli.search_view import SearchView
    from archgen.search_api import SearchOptions, run_search

    options = SearchOptions(
        budget=budget,
        trials=trials,
        out=output,
        storage=storage,
        quick=quick,
        quality=quality.value if quality is not None else None,
        export=export.value if export is not None else None,
        seed=seed,
        finalize_steps=finalize_steps,
    )
    with SearchView(out) as view:
        outcome = run_search(spec, options, log=view.log, on_trial=view.trial)
    view.summary(outcome)
    if outcome.best_spec is None:
        raise typer.Exit(4)


DataOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--data",
        help="text files/folders/globs (repeatable), a .bin/.npy token file, a nanoGPT folder "
        "(train.bin, val.bin) or task:NAME; default: the spec's data: section",
    ),
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", "--output", "-o", help="run folder (default: runs/NAME)")
]
DistillOutOpt = Annotated[
    Path | None,
    typer.Option("--out", "--output", "-o", help="run folder (default: runs/NAME-distilled)"),
]
StepsOpt = Annotated[
    int | None, typer.Option(min=1, help="optimizer steps (overrides train.steps)")
]
BatchOpt = Annotated[int | None, typer.Option(min=1, help="sequences per step (train.batch_size)")]
SeqLenOpt = Annotated[int | None, typer.Option(min=1, help="tokens per sequence (train.seq_len)")]
LrOpt = Annotated[float | None, typer.Option(min=0.0, help="peak learning rate (train.lr)")]
Bf16Opt = Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="bfloat16 autocast")]
SeedOpt = Annotated[int | None, typer.Option(min=0, help="weights and data-order seed")]
ResumeOpt = Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")]
DeviceOpt = Annotated[str, typer.Option(help="torch device (cpu, cuda)")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar")]
ThreadsOpt = Annotated[
    int | None, typer.Option(min=1, help="torch CPU threads (default: torch's choice)")
]


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _print_run(result: object, what: str) -> None:
    first, final = result.first, result.final  # type: ignore[attr-defined]
    parts = [f"loss {first.get('loss', float('nan')):.3f} -> {final['loss']:.3f}"]
    for key in ("bpb", "accuracy"):
        if key in final:
            parts.append(f"{key} {first.get(key, float('nan')):.3f} -> {final[key]:.3f}")
    out.print(
        f"{what} {result.trained_steps} steps in {result.seconds:.1f} s "  # type: ignore[attr-defined]
        f"(run at step {result.steps}) -> {result.out_dir}/; validation "  # type: ignore[attr-defined]
        f"{', '.join(parts)}"
    )


@app.command()
def train(
    spec: SpecArg,
    data: DataOpt = None,
    steps: StepsOpt = None,
    output: OutOpt = None,
    resume: ResumeOpt = False,
    batch_size: BatchOpt = None,
    seq_len: SeqLenOpt = None,
    lr: LrOpt = None,
    bf16: Bf16Opt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Train the spec's model (AdamW, warm-up + cosine, checkpoints, exact --resume)."""
    from archgen import training

    _set_threads(threads)

    options = training.TrainOptions(steps, batch_size, seq_len, lr, bf16, seed)
    result = training.train(
        spec, data=data, options=options, out=output, resume=resume, device=device,
        progress=progress, log=lambda m: err.print(m, markup=False),
    )  # fmt: skip
    _print_run(result, "trained")


@app.command()
def distill(
    student: Annotated[
        Path,
        typer.Argument(
            help="student spec (YAML), or a model folder (e.g. from archgen convert) whose "
            "weights it starts from",
            show_default=False,
        ),
    ],
    teacher: Annotated[
        Path, typer.Option(help="folder of the trained teacher (from archgen train or build)")
    ],
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="start the student from these weights (safetensors or a model folder; "
            "default: the student folder's, else the teacher's same-named tensors)",
        ),
    ] = None,
    data: DataOpt = None,
    steps: StepsOpt = None,
    output: DistillOutOpt = None,
    resume: ResumeOpt = False,
    temperature: Annotated[float | None, typer.Option(min=0.0, help="logit KL temperature")] = None,
    kd_weight: Annotated[float | None, typer.Option(min=0.0, help="logit KL weight")] = None,
    ce_weight: Annotated[float | None, typer.Option(min=0.0, help="label CE weight")] = None,
    feature_weight: Annotated[
        float | None, typer.Option(min=0.0, help="block-output feature loss weight")
    ] = None,
    batch_size: BatchOpt = None,
    seq_len: SeqLenOpt = None,
    lr: LrOpt = None,
    bf16: Bf16Opt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    progress: ProgressOpt = True,
    dump_wiring: Annotated[
        bool,
        typer.Option(
            "--dump-wiring", help="print the teacher/student pairing (taps, adapters, losses)"
        ),
    ] = False,
) -> None:
    """Train STUDENT (a spec or model folder) to imitate a trained teacher: logit KL + block
    feature losses."""
    from archgen import training
    from archgen.ir.distill import print_distill_graph

    _set_threads(threads)

    options = training.TrainOptions(steps, batch_size, seq_len, lr, bf16, seed)
    knobs = {"temperature": temperature, "kd_weight": kd_weight, "ce_weight": ce_weight,
             "feature_weight": feature_weight}  # fmt: skip
    result = training.distill(
        student, teacher, init=init, data=data, options=options, distill_options=knobs, out=output,
        resume=resume, device=device, progress=progress, log=lambda m: err.print(m, markup=False),
        on_wiring=(lambda pair: typer.echo(print_distill_graph(pair))) if dump_wiring else None,
    )  # fmt: skip
    _print_run(result, "distilled")


@app.command()
def version() -> None:
    """Print archgen's version."""
    from importlib.metadata import version as dist_version

    out.print(f"archgen {dist_version('archgen')}")


register_backend_commands(app, out)  # export, validate, doctor


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
