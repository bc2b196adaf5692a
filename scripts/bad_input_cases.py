"""The case table of the bad-input sweep (``scripts/bad_input_sweep.py``, issue 16): what each
case plants in its temporary folder, the archgen command line it runs, and what it expects.

A case's command line is one shell-quoted string (or a tuple, for raw bytes); its paths are
relative to the case's folder. Setups are small functions of (:class:`Fixtures`, folder); the
fixtures (a built model, a 2-step training run with two checkpoints, a Hugging Face export) are
made once per sweep by the CLI itself and copied in. ``tests/cli/test_bad_inputs.py`` runs a
subset of :data:`CASES` in the test suite.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# -- the files cases start from ----------------------------------------------------------------
TINY = """\
model:
  name: tiny
  vocab_size: 256
  d_model: 16
  max_seq_len: 32
  layers:
    - token_mixer: {kind: attention, heads: 2}
      channel_mixer: {kind: swiglu}
train: {steps: 2, batch_size: 2, seq_len: 16, warmup_steps: 0, eval_interval: 1,
        eval_batches: 1, checkpoint_interval: 1}
"""
SEARCH_SECTION = """\
search:
  budget: 10ms
  trials: 2
  workload: {batch: 1, seq_len: 16, phase: prefill, threads: 1}
  quality: {fidelity: analytic}
  slots:
    - layers: [0]
      token_mixer:
        - {kind: attention, heads: 2}
        - {kind: swa, heads: 2, window: 8}
"""
SEARCH = TINY + SEARCH_SECTION
DIFFUSION = """\
model:
  name: tiny-diffusion
  task: masked-diffusion-lm
  vocab_size: 257
  d_model: 16
  max_seq_len: 32
  layers:
    - token_mixer: {kind: attention, heads: 2}
      channel_mixer: {kind: swiglu}
"""
WORDS = ("alpha", "beta", "gamma", "delta", "the", "a", "def", "return", "import", "class")
PASSWORD = "hunter2-s3cret"  # given in a --storage URL: must appear in no output
# A file that root cannot read either (mode 0200 in /proc/sys, where the mode binds root too).
ROOT_UNREADABLE = Path("/proc/sys/vm/compact_memory")


def edit(old: str, new: str, text: str = TINY) -> str:
    """``text`` with its first ``old`` replaced by ``new`` (which must be there)."""
    assert old in text, old
    return text.replace(old, new, 1)


@dataclass(frozen=True)
class Fixtures:
    """Folders made once per sweep: ``model`` (build), ``run`` (train, 2 steps, a checkpoint
    per step), ``hf`` (export --format hf of the run)."""

    root: Path


Setup = Callable[[Fixtures, Path], None]


# -- what a case plants in its folder ----------------------------------------------------------
def text(name: str, content: str | bytes) -> Setup:
    def plant(fx: Fixtures, here: Path) -> None:
        path = here / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return plant


def spec(content: str = TINY, name: str = "spec.yaml") -> Setup:
    return text(name, content)


def data(name: str = "data.txt") -> Setup:
    words = " ".join(WORDS[(i * 7 + i // 3) % len(WORDS)] for i in range(3000))
    return text(name, words + "\n")


def folder(name: str) -> Setup:
    def plant(fx: Fixtures, here: Path) -> None:
        (here / name).mkdir(parents=True, exist_ok=True)

    return plant


def notes(where: str = "out") -> Setup:
    """A user's folder with a precious file in it."""
    return text(f"{where}/notes.txt", "precious: do not delete\n")


def copy(fixture: str, name: str | None = None) -> Setup:
    """A copy of the fixture folder ``model``, ``run`` or ``hf``."""

    def plant(fx: Fixtures, here: Path) -> None:
        shutil.copytree(fx.root / fixture, here / (name or fixture), symlinks=True)

    plant.fixture = fixture  # type: ignore[attr-defined]
    return plant


def cut(name: str, size: int) -> Setup:
    """Truncate a planted file to ``size`` bytes (an interrupted copy)."""

    def plant(fx: Fixtures, here: Path) -> None:
        path = here / name
        path.write_bytes(path.read_bytes()[:size])

    return plant


def remove(name: str) -> Setup:
    def plant(fx: Fixtures, here: Path) -> None:
        path = here / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return plant


def link(name: str, target: str) -> Setup:
    def plant(fx: Fixtures, here: Path) -> None:
        os.symlink(target, here / name)

    return plant


def unreadable(name: str) -> Setup:
    """Mode 000; as root, who reads such files all the same, a link to a file root cannot read."""

    def plant(fx: Fixtures, here: Path) -> None:
        path = here / name
        if os.geteuid() == 0:
            path.unlink()
            path.symlink_to(ROOT_UNREADABLE)
        else:
            os.chmod(path, 0)

    return plant


@dataclass(frozen=True)
class Case:
    command: str  # the archgen command
    what: str  # what is wrong with the input
    args: tuple[str, ...]  # after ``archgen``; paths are relative to the case folder
    setup: tuple[Setup, ...] = ()
    expect: str = "error"  # "error": refused cleanly; "ok": must work; "warn": works, warns
    codes: tuple[int, ...] = (2,)  # the exit codes an "error" case may end with
    may_change: tuple[str, ...] = ()  # planted paths (and what is below) it may rewrite
    may_create: tuple[str, ...] = ()  # new paths (and what is below) it may leave
    timeout: float = 180.0

    @property
    def row(self) -> str:
        return f"{self.command}: {self.what}"

    @property
    def fixtures(self) -> set[str]:
        return {f for p in self.setup if (f := getattr(p, "fixture", None)) is not None}


def case(what: str, argv: str | tuple[str, ...], *setup: Setup, **options: object) -> Case:
    """A case; ``argv`` is the command line after ``archgen``, shell-quoted."""
    args = tuple(shlex.split(argv)) if isinstance(argv, str) else argv
    command = args[0] if not args[0].startswith("-") and args[0] != "bogus" else "archgen"
    return Case(command, what, args, setup, **options)  # type: ignore[arg-type]


# -- spec files --------------------------------------------------------------------------------
ONE_LAYER = "    - token_mixer: {kind: attention, heads: 2}\n      channel_mixer: {kind: swiglu}\n"
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)
BAD_SPECS: dict[str, tuple[Setup, ...]] = {
    "missing spec file": (),
    "spec is a folder": (folder("spec.yaml"),),
    "empty spec file": (text("spec.yaml", ""),),
    "spec is /dev/zero": (link("spec.yaml", "/dev/zero"),),
    "spec over 1 MiB": (spec(TINY + "# padding\n" * 220_000),),
    "spec with non-UTF-8 bytes": (text("spec.yaml", TINY.encode() + b"# caf\xe9\xff\n"),),
    "YAML syntax error": (spec(edit("d_model: 16", "d_model: [16")),),
    "spec is a YAML list": (spec("- model\n- layers\n"),),
    "!!python tag on a scalar": (spec(edit("name: tiny", "name: !!python/name:os.system")),),
    "!!python tag on a list": (
        spec(edit("layers:\n", "layers: !!python/object/apply:os.system\n")),
    ),
    "!!python tag on a mapping": (spec(edit("model:\n", "model: !!python/object:os.Foo\n")),),
    "YAML alias bomb": (spec(BOMB + TINY),),
    "unknown key model.layrs": (spec(edit("  layers:", "  layrs:")),),
    "unknown top-level section": (spec(TINY + "trian: {steps: 3}\n"),),
    "d_model is a string": (spec(edit("d_model: 16", "d_model: big")),),
    "unknown mixer kind": (spec(edit("kind: attention", "kind: atention")),),
    "d_model not divisible by heads": (spec(edit("heads: 2", "heads: 3")),),
    "model.name ../../x": (spec(edit("name: tiny", "name: ../../escaped")),),
    "model.name absolute path": (spec(edit("name: tiny", "name: /tmp/archgen-escaped")),),
    "model.name with a slash": (spec(edit("name: tiny", "name: a/b")),),
    "model.name ..": (spec(edit("name: tiny", 'name: ".."')),),
    "vocab_size 0": (spec(edit("vocab_size: 256", "vocab_size: 0")),),
    "negative max_seq_len": (spec(edit("max_seq_len: 32", "max_seq_len: -32")),),
    "duplicate key": (spec(edit("d_model: 16", "d_model: 16\n  d_model: 32")),),
    "empty layer list": (spec(edit("  layers:\n" + ONE_LAYER, "  layers: []\n")),),
    "heads 0": (spec(edit("heads: 2", "heads: 0")),),
    "unreadable spec file": (spec(), unreadable("spec.yaml")),
    "train.steps 0": (spec(edit("steps: 2", "steps: 0")),),
    "data.paths names a missing file": (spec(TINY + "data: {paths: [nowhere.txt]}\n"),),
}
# what every spec-taking command is tried with (check gets them all)
COMMON_SPECS = (
    "missing spec file",
    "spec is a folder",
    "spec is /dev/zero",
    "!!python tag on a mapping",
    "unknown key model.layrs",
    "unreadable spec file",
)
SPEC_COMMANDS = {  # the command line around the spec, and what it needs beside it
    "build": ("-o out", ()),
    "export": ("-o out", ()),
    "validate": ("", ()),
    "doctor": ("", ()),
    "generate": ("--prompt hi --max-new-tokens 2", ()),
    "train": ("--data data.txt -o out --no-progress", (data(),)),
    "distill": ("--teacher run --data data.txt -o out --no-progress", (copy("run"), data())),
    "search": ("-o out", ()),
}
HUGE = edit("d_model: 16", "d_model: 65536")  # 51.56 G parameters


def spec_cases() -> Iterator[Case]:
    for what, setup in BAD_SPECS.items():
        yield case(what, "check spec.yaml", *setup)
    for command, (args, extra) in SPEC_COMMANDS.items():
        for what in COMMON_SPECS:
            yield case(what, f"{command} spec.yaml {args}", *extra, *BAD_SPECS[what])
    for command, args in (("train", "--data data.txt"), ("search", "")):  # no -o: runs/NAME
        for what in ("model.name ../../x", "model.name absolute path"):
            yield case(f"{what}, default output", f"{command} spec.yaml {args}", data(),
                       *BAD_SPECS[what])  # fmt: skip
    yield case("data.paths names a missing file", "train spec.yaml -o out",
               *BAD_SPECS["data.paths names a missing file"])  # fmt: skip
    for command, args in (("build", "-o out"), ("export", "-o out"), ("validate", ""),
                          ("train", "--data data.txt -o out"), ("generate", "--prompt hi"),
                          ("distill", "--teacher run --data data.txt -o out")):  # fmt: skip
        yield case("d_model 65536 (51 G parameters)", f"{command} spec.yaml {args}", spec(HUGE),
                   data(), copy("run"))  # fmt: skip
    window = edit("kind: attention, heads: 2", "kind: swa, heads: 2, window: 64")
    yield case("window 64 > max_seq_len 32", "check spec.yaml", spec(window), expect="warn")


# -- output places -----------------------------------------------------------------------------
WRITERS = {  # label: command line without -o, and its setup
    "build": ("build spec.yaml", (spec(),)),
    "export": ("export spec.yaml", (spec(),)),
    "export --format hf": ("export spec.yaml --format hf", (spec(),)),
    "convert": ("convert model --passes verify", (copy("model"),)),
    "import": ("import hf", (copy("hf"),)),
    "train": ("train spec.yaml --data data.txt --no-progress", (spec(), data())),
    "distill": (
        "distill spec.yaml --teacher run --data data.txt --no-progress",
        (spec(), data(), copy("run")),
    ),
}


def output_cases() -> Iterator[Case]:
    """-o places refused before any work, every planted file kept."""
    mine = text("out.txt", "mine\n")
    for label, (args, setup) in WRITERS.items():
        yield case(f"{label} -o a folder holding notes.txt", f"{args} -o out", *setup, notes())
        yield case(f"{label} -o an existing file", f"{args} -o out.txt", *setup, mine)
        yield case(f"{label} -o .", f"{args} -o .", *setup)
        yield case(f"{label} -o /proc/x", f"{args} -o /proc/x", *setup)
        yield case(f"{label} -o through a file", f"{args} -o out.txt/sub", *setup, mine)
        yield case(f"{label} -o a link to a folder of notes", f"{args} -o out", *setup,
                   notes("real"), link("out", "real"))  # fmt: skip
        if not label.startswith(("train", "distill")):  # (they ask for --resume there)
            yield case(f"{label} -o a training run", f"{args} -o run2", *setup, copy("run", "run2"))
            yield case(f"{label} --force over notes.txt", f"{args} -o out --force", *setup, notes())
    yield case("-o a link to an empty folder", "build spec.yaml -o out", spec(), folder("real"),
               link("out", "real"))  # fmt: skip
    yield case("--force over a build's output", "export spec.yaml -o model --force", spec(),
               copy("model"))  # fmt: skip
    yield case("--force over an hf export", "build spec.yaml -o hf --force", spec(), copy("hf"))
    yield case("-o the input folder", "convert model --passes verify -o model", copy("model"))
    yield case("-o the input folder, --force", "convert model --passes verify -o model --force",
               copy("model"))  # fmt: skip
    yield case("-o '' (empty)", 'build spec.yaml -o ""', spec())
    yield case("-o a folder", "schema -o out", notes())
    yield case("-o /proc/x", "schema -o /proc/x")
    yield case("-o through a file", "schema -o out.txt/s.json", mine)
    yield case("-o in a missing folder", "schema -o nowhere/s.json")
    search = spec(SEARCH)
    yield case("-o an existing file", "search spec.yaml -o out.txt", search, mine)
    yield case("-o /proc/x", "search spec.yaml -o /proc/x", search)
    yield case("-o through a file", "search spec.yaml -o out.txt/sub", search, mine)
    yield case("--export onnx, OUT/export-onnx holds notes.txt",
               "search spec.yaml --export onnx -o out", search,
               notes("out/export-onnx"))  # fmt: skip
    yield case("--json names a folder", "validate spec.yaml -b eager --json out", spec(), notes())
    yield case("--json /proc/x", "validate spec.yaml -b eager --json /proc/x", spec())


# -- weights -----------------------------------------------------------------------------------
WIDER = edit("d_model: 16", "d_model: 32")
DAMAGED: dict[str, tuple[Setup, ...]] = {  # a copy of the built model, damaged
    "empty weights.safetensors": (cut("model/weights.safetensors", 0),),
    "weights.safetensors cut to 20 bytes": (cut("model/weights.safetensors", 20),),
    "weights.safetensors cut to 1000 bytes": (cut("model/weights.safetensors", 1000),),
    "weights.safetensors is text": (text("model/weights.safetensors", "hi\n"),),
    "weights.safetensors is a folder": (
        remove("model/weights.safetensors"),
        folder("model/weights.safetensors"),
    ),
    "folder without weights": (remove("model/weights.safetensors"),),
    "weights of another model": (spec(WIDER), text("model/spec.yaml", WIDER)),
}
READERS = {  # label: command line with {w} for the weights
    "generate": "generate spec.yaml --prompt hi --max-new-tokens 2 --weights {w}",
    "export": "export spec.yaml -o out --weights {w}",
    "export --format hf": "export spec.yaml --format hf -o out --weights {w}",
    "validate": "validate spec.yaml --backend eager --weights {w}",
    "distill --teacher": "distill spec.yaml --teacher {w} --data data.txt -o out --no-progress",
    "distill --init": "distill spec.yaml --teacher run --init {w} --data data.txt -o out",
    "convert": "convert {w} --passes verify -o out",
}


def weights_cases() -> Iterator[Case]:
    base = (spec(), data(), copy("run"), copy("model"))
    for label, args in READERS.items():
        for what, damage in DAMAGED.items():
            if what == "weights of another model" and label.startswith("distill --teacher"):
                continue  # a teacher of another width is a fine teacher
            yield case(f"{label} model: {what}", args.format(w="model"), *base, *damage)
        if label != "convert":
            yield case(f"{label} missing weights path", args.format(w="nope.safetensors"), *base)
    for label in ("generate", "export", "validate"):  # a file rather than the folder
        args = READERS[label].format(w="model/weights.safetensors")
        yield case(f"{label} a truncated weights file", args, *base, *DAMAGED[
            "weights.safetensors cut to 1000 bytes"])  # fmt: skip
    yield case("--weights a run killed before its end", READERS["generate"].format(w="run"),
               *base, remove("run/weights.safetensors"))  # fmt: skip
    yield case("--weights a run folder (works)", "export spec.yaml -o out -f torch --weights run",
               *base, expect="ok", may_create=("out",))  # fmt: skip


def resume_cases() -> Iterator[Case]:
    args = "train spec.yaml --data data.txt -o run --no-progress --steps 3"
    base = (spec(), data(), copy("run"))
    newest, oldest = "run/checkpoints/step_0000002", "run/checkpoints/step_0000001"
    ok = {"expect": "ok", "may_change": ("run",), "may_create": ("run",)}
    yield case("--resume, both checkpoints' state.pt truncated", f"{args} --resume", *base,
               cut(f"{newest}/state.pt", 100), cut(f"{oldest}/state.pt", 100))  # fmt: skip
    yield case("--resume, both checkpoints' weights truncated", f"{args} --resume", *base,
               cut(f"{newest}/weights.safetensors", 100),
               cut(f"{oldest}/weights.safetensors", 100))  # fmt: skip
    yield case("--resume, newest state.pt truncated (falls back)", f"{args} --resume", *base,
               cut(f"{newest}/state.pt", 100), **ok)  # fmt: skip
    yield case("--resume, newest weights truncated (falls back)", f"{args} --resume", *base,
               cut(f"{newest}/weights.safetensors", 100), **ok)  # fmt: skip
    yield case("--resume, config.json garbage", f"{args} --resume", *base,
               text("run/config.json", "{not json"))  # fmt: skip
    yield case("--resume, meta.json garbage in both (not needed)", f"{args} --resume", *base,
               text(f"{newest}/meta.json", "[["), text(f"{oldest}/meta.json", "[["),
               **ok)  # fmt: skip
    yield case("--resume, 'latest' names no checkpoint", f"{args} --resume", *base,
               text("run/checkpoints/latest", "step_0000099\n"), **ok)  # fmt: skip
    yield case("--resume without a run folder (starts one, with a note)",
               "train spec.yaml --data data.txt -o nothing --resume", spec(), data(), expect="ok",
               may_create=("nothing",))  # fmt: skip
    yield case("--resume, a trained run whose checkpoints are gone", f"{args} --resume", *base,
               remove("run/checkpoints"))  # fmt: skip
    yield case("--resume a run of another spec", f"{args} --resume",
               spec(edit("d_model: 16", "d_model: 32")), data(), copy("run"))  # fmt: skip
    yield case("an existing run without --resume", args, *base)
    yield case("a trained run whose checkpoints are gone", args, *base, remove("run/checkpoints"))


# -- option values -----------------------------------------------------------------------------
NPY_PICKLE = (b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (3,), }"
              + b" " * 50 + b"\n\x80\x04garbage")  # fmt: skip


def option_cases() -> Iterator[Case]:
    s, d, r, search, diffusion = spec(), data(), copy("run"), spec(SEARCH), spec(DIFFUSION)
    files = (folder("empty_dir"), text("empty.txt", ""), text("bad.npy", NPY_PICKLE),
             text("odd.bin", b"\x01\x02\x03"))  # fmt: skip
    train = "train spec.yaml -o out --no-progress"
    for opts in ("--steps 0", "--steps -1", "--steps abc", "--batch-size 0", "--seq-len 0",
                 "--seq-len 100000", "--lr -1", "--lr nan", "--lr inf", "--threads 0",
                 "--seed -1", "--device bogus", "--batch-size 1048576"):  # fmt: skip
        yield case(opts, f"{train} --data data.txt {opts}", s, d)
    for value in ("nowhere.txt", "task:bogus", "empty_dir", "empty.txt", "bad.npy", "odd.bin"):
        yield case(f"--data {value}", f"{train} --data {value}", s, *files)
    yield case("--device cuda (none here)", f"{train} --data data.txt --device cuda", s, d,
               codes=(2, 3))  # fmt: skip
    distill = "distill spec.yaml --data data.txt -o out --no-progress"
    for opts in ("--temperature -1", "--kd-weight -1", "--ce-weight x", "--feature-weight -2",
                 "--steps 0", "--batch-size 0", "--seq-len 100000", "--batch-size 1048576",
                 "--init nowhere.safetensors"):  # fmt: skip
        yield case(opts, f"{distill} --teacher run {opts}", s, d, r)
    for value in ("nowhere", "spec.yaml", "empty_dir"):
        yield case(f"--teacher {value}", f"{distill} --teacher {value}", s, d, *files)
    yield case("a teacher of another vocabulary", f"{distill} --teacher run",
               spec(edit("vocab_size: 256", "vocab_size: 128")), d, r)  # fmt: skip
    yield case("a student folder without spec.yaml", "distill model --teacher run -o out",
               copy("model"), remove("model/spec.yaml"), r)  # fmt: skip
    yield case("missing --teacher", "distill spec.yaml", s)
    export = "export spec.yaml -o out"
    for opts, codes in (("--provider foo", (2,)), ("--format garbage", (2,)),
                        ("--dtype garbage", (2,)), ("--provider cuda", (3,)),
                        ("--format tensorrt", (3,)), ("--min-seq 0", (2,)),
                        ("--max-seq 100000", (2,)), ("--min-seq 20 --max-seq 10", (2,)),
                        ("--passes nosuchpass", (2,)), ("--dump-after nosuchpass", (2,)),
                        ("--validation-seed x", (2,)),
                        ("--format hf --dtype float16", (2,))):  # fmt: skip
        yield case(opts, f"{export} {opts}", s, codes=codes)
    swa = edit("kind: attention, heads: 2", "kind: swa, heads: 2, window: 8")
    yield case("--format hf, a model transformers lacks", f"{export} -f hf", spec(swa))
    yield case("--format hf, a masked-diffusion LM", f"{export} -f hf", diffusion)
    for opts, codes in (("--backend garbage", (2,)), ("--device garbage", (2,)),
                        ("--dtype garbage", (2,)), ("-b eager --device cuda", (3,)),
                        ("--backend tensorrt", (3,)), ("--provider foo", (2,)),
                        ("--max-seq 0", (2,)), ("--max-seq 100000", (2,))):  # fmt: skip
        yield case(opts, f"validate spec.yaml {opts}", s, codes=codes)
    generate = "generate spec.yaml --prompt hi"
    for opts in ("--max-new-tokens 0", "--temperature -1", "--top-k 0",
                 "--decoder localleap (a causal LM)", "--max-new-tokens 100000",
                 "--prompt " + "x" * 40, '--prompt ""'):  # fmt: skip
        yield case(opts[:30], f"{generate} {opts.split(' (')[0]}", s)
    tokens = "generate spec.yaml --prompt hi --max-new-tokens 8"
    for value in ("garbage", "localleap{tau=2}", "confidence{block=0}", "threshold{tau=abc}",
                  "localleap{", "confidence{tokens=1,nope=3}", "threshold{block=3}",
                  "localleap{radius=-1}", ""):  # fmt: skip
        yield case(f"diffusion --decoder {value!r}", (*shlex.split(tokens), "--decoder", value),
                   diffusion)  # fmt: skip
    yield case("diffusion --temperature 0.5", f"{tokens} --temperature 0.5", diffusion)
    raw = ("generate", "spec.yaml", "--prompt", os.fsdecode(b"a\xff\xfeb"), "--max-new-tokens", "2")
    yield case("raw non-UTF-8 bytes in --prompt (works)", raw, s, expect="ok")
    yield case("a tokenizer.json that is garbage", f"{generate} --weights model", s,
               copy("model"), text("model/tokenizer.json", "{garbage"))  # fmt: skip
    search_cmd = "search spec.yaml -o out"
    for opts, codes in (('--budget ""', (2,)), ("--budget 1e400ms", (2,)),
                        ("--budget -5ms", (2,)), ("--budget garbage", (2,)),
                        ("--budget 0ms", (2,)), ("--budget 0%", (2,)), ("--budget 'nan ms'", (2,)),
                        ("--budget inf", (2,)), ("--budget 10", (2,)),
                        ("--budget '5 parsecs'", (2,)), ("--quality garbage", (2,)),
                        ('--quality ""', (2,)), ("--export garbage", (2,)),
                        ("--export tensorrt", (3,)), ("--trials 0", (2,)),
                        ("--finalize-steps -1", (2,)), ("--storage garbage://x", (2,)),
                        ("--storage sqlite:////proc/x/study.db", (2,))):  # fmt: skip
        yield case(opts, f"{search_cmd} {opts}", search, codes=codes)
    yield case("--storage: postgresql with a password, unreachable",
               f"{search_cmd} --storage postgresql://me:{PASSWORD}@127.0.0.1:1/db", search,
               codes=(2, 3))  # fmt: skip
    yield case("a spec without a search: section", search_cmd, s)
    yield case("a slot naming layer 7 of 1", search_cmd,
               spec(edit("layers: [0]", "layers: [7]", SEARCH)))  # fmt: skip
    yield case("workload seq_len > max_seq_len", search_cmd,
               spec(edit("seq_len: 16, phase", "seq_len: 64, phase", SEARCH)))  # fmt: skip
    m = copy("model")
    for value in ("", "nosuchpass", "compress_segments{s=abc}", "compress_segments{",
                  "replace_mixer{", "verify{x=1}", "compress_segments{s=-4}"):  # fmt: skip
        yield case(f"--passes {value!r}", ("convert", "model", "-o", "out", "--passes", value), m)
    for what, target, *setup in (("a missing folder", "nowhere"),
                                 ("a spec file instead of a folder", "spec.yaml", s),
                                 ("an empty folder", "empty_dir", *files),
                                 ("a folder without spec.yaml", "model", m,
                                  remove("model/spec.yaml")),
                                 ("spec.yaml garbage", "model", m,
                                  text("model/spec.yaml", "model: ["))):  # fmt: skip
        yield case(what, f"convert {target} --passes verify -o out", *setup)  # type: ignore[arg-type]
    yield case("missing --passes", "convert model -o out", m)
    h = copy("hf")
    gpt2 = '{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}'
    for what, *setup in (("a missing folder",), ("a file instead of a folder", text("hf", "x")),
                         ("an empty folder", folder("hf")),
                         ("config.json garbage", h, text("hf/config.json", "{garbage")),
                         ("config.json a list", h, text("hf/config.json", "[1, 2]")),
                         ("an unsupported model_type", h, text("hf/config.json", gpt2)),
                         ("no weights", h, remove("hf/model.safetensors")),
                         ("model.safetensors truncated", h, cut("hf/model.safetensors", 100)),
                         ("config.json missing", h, remove("hf/config.json")),
                         ("a garbage shard index", h, text("hf/model.safetensors.index.json",
                                                           "[1]"))):  # fmt: skip
        yield case(what, "import hf -o out", *setup)  # type: ignore[arg-type]
    for opts in ("--max-seq-len 0", "--name ../../escaped", "--name a/b"):
        yield case(opts, f"import hf -o out {opts}", h)
    for opts in ("--seq-len 0", "--seq-len -1", "--seq-len x", "--passes nosuchpass",
                 "--passes compress_segments{s=abc}", "--passes compress_segments{",
                 "--passes ,,", "--dump-after nosuchpass"):  # fmt: skip
        yield case(opts, f"check spec.yaml {opts}", s)
    for opts in ("--passes nosuchpass", "--dump-after nosuchpass", "--seed x", "-o"):
        yield case(opts, f"build spec.yaml -o out {opts}", s)
    yield case("missing -o", "build spec.yaml", s)
    yield case("missing --prompt", "generate spec.yaml", s)
    yield case("an unknown option", "doctor spec.yaml --bogus", s)
    yield case("an extra argument", "passes extra")
    yield case("an unknown option", "passes --bogus")
    yield case("an extra argument", "schema extra")
    yield case("an extra argument", "version extra")
    yield case("an unknown command", "bogus")
    yield case("an unknown option", "--bogus")


CASES: list[Case] = [*spec_cases(), *output_cases(), *weights_cases(), *resume_cases(),
                     *option_cases()]  # fmt: skip
