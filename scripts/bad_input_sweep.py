"""The bad-input sweep of issue 16: every archgen command given bad input, as a user gives it.

Each case runs the real CLI as a subprocess in a fresh temporary folder (its own ``ARCHGEN_CACHE``,
``HOME`` and ``XDG_CACHE_HOME`` too), with a timeout, and is judged:

- refused cleanly: a non-zero exit code (2 for usage and input errors, 3 for what this machine
  lacks), no ``Traceback`` on stdout or stderr, a non-empty error message;
- nothing lost: every file the case planted (a precious ``notes.txt`` inside an ``-o`` folder, a
  file named by ``-o``, a training run, the spec itself) is still there, byte for byte, and the
  command left nothing new behind (no staging folder, no empty output folder);
- nothing leaked: a password given in ``--storage`` appears nowhere in the output.

A few cases are inputs that look bad but must work (a raw non-UTF-8 byte in ``--prompt``,
``--resume`` after the newest checkpoint was damaged, a run folder as ``--weights``); they are
judged on exit 0 and no traceback.

    .venv/bin/python scripts/bad_input_sweep.py                  # all cases, 2 at a time
    .venv/bin/python scripts/bad_input_sweep.py --filter export  # cases whose row holds it
    .venv/bin/python scripts/bad_input_sweep.py --jobs 1 --list

Exit status: 0 when every case passes, 1 otherwise. ``tests/cli/test_bad_inputs.py`` runs a
representative subset of :data:`CASES` in the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repository root holds the scripts package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.bad_input_cases import CASES, PASSWORD, Case, Fixtures, data, spec

__all__ = ["CASES", "Outcome", "prepare_fixtures", "run_cases", "run_one"]


@dataclass
class Outcome:
    case: Case
    code: int | None
    passed: bool
    problems: list[str]
    message: str
    seconds: float


# -- running and judging -----------------------------------------------------------------------
def archgen_command() -> list[str]:
    script = Path(sys.executable).with_name("archgen")
    return [str(script)] if script.exists() else [sys.executable, "-m", "archgen.cli.main"]


def environment(home: Path) -> dict[str, str]:
    """A bare environment: no variables of the caller's leak in; the caches are the case's."""
    return {
        "PATH": "/usr/bin:/bin",
        "COLUMNS": "200",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "ARCHGEN_CACHE": str(home / "archgen-cache"),
        "OMP_NUM_THREADS": "1",
        "LANG": "C.UTF-8",
    }


FIXTURES = {  # name: the command line that makes it (in order: hf is exported from run)
    "model": ("build", "spec.yaml", "-o", "model"),
    "run": ("train", "spec.yaml", "--data", "data.txt", "-o", "run", "--no-progress"),
    "hf": ("export", "spec.yaml", "--format", "hf", "-o", "hf", "--weights", "run"),
}


def prepare_fixtures(root: Path, needed: set[str] | None = None) -> Fixtures:
    """The fixture folders ``needed`` (default: all), made by the CLI (exit 0 required)."""
    needed = set(FIXTURES) if needed is None else set(needed)
    if "hf" in needed:
        needed.add("run")
    fx = Fixtures(root)
    root.mkdir(parents=True, exist_ok=True)
    for plant in (spec(), data()):
        plant(fx, root)
    for name, args in FIXTURES.items():
        if name not in needed:
            continue
        done = subprocess.run(
            [*archgen_command(), *args],
            cwd=root,
            env=environment(root / "home"),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"fixture `archgen {' '.join(args)}` failed:\n{done.stderr}")
    return fx


def snapshot(here: Path) -> dict[str, bytes | None]:
    """Every path under ``here``: file contents, None for folders (links are not followed)."""
    found: dict[str, bytes | None] = {}
    for path in sorted(here.rglob("*")):
        rel = str(path.relative_to(here))
        if path.is_symlink():
            found[rel] = b"-> " + os.readlink(path).encode()
        elif path.is_dir():
            found[rel] = None
        else:
            try:
                found[rel] = path.read_bytes()
            except OSError:  # an unreadable file: compare its size and mode instead
                st = path.stat()
                found[rel] = f"<{st.st_size} bytes, mode {st.st_mode:o}>".encode()
    return found


def _under(rel: str, prefixes: Sequence[str]) -> bool:
    return any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in prefixes)


def first_message(stderr: str, stdout: str) -> str:
    lines = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
    for line in lines:
        if line.startswith("error:") or line.startswith("Error") or "│ " in line[:3]:
            return line.strip("│ ").strip()
    return lines[0] if lines else ""


def run_case(case: Case, fx: Fixtures, workdir: Path) -> Outcome:
    here = workdir / "case"
    here.mkdir(parents=True)
    home = workdir / "home"
    home.mkdir()
    for plant in case.setup:
        plant(fx, here)
    before = snapshot(here)
    start = time.perf_counter()
    problems: list[str] = []
    try:
        done = subprocess.run(
            [*archgen_command(), *case.args],
            cwd=here,
            env=environment(home),
            capture_output=True,
            timeout=case.timeout,
            stdin=subprocess.DEVNULL,
        )
        code: int | None = done.returncode
        stdout = done.stdout.decode("utf-8", "replace")
        stderr = done.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired as exc:
        code = None
        stdout = (exc.stdout or b"").decode("utf-8", "replace")
        stderr = (exc.stderr or b"").decode("utf-8", "replace")
        problems.append(f"timed out after {case.timeout:.0f} s")
    seconds = time.perf_counter() - start
    if "Traceback" in stdout or "Traceback" in stderr:
        problems.append("traceback")
    if PASSWORD in stdout or PASSWORD in stderr:
        problems.append("the password was printed")
    message = first_message(stderr, stdout)
    if code is not None:
        if case.expect == "error":
            if code == 0:
                problems.append("accepted (exit 0)")
            elif code not in case.codes:
                problems.append(f"exit {code}, expected {'/'.join(map(str, case.codes))}")
            if not stderr.strip():
                problems.append("no message on stderr")
        else:
            if code != 0:
                problems.append(f"exit {code}, expected 0")
            if case.expect == "warn" and "warning" not in stderr:
                problems.append("no warning")
    if PASSWORD in "".join(
        p.read_text(errors="replace") for p in here.rglob("*") if p.is_file() and not p.is_symlink()
    ):
        problems.append("the password was written to a file")
    after = snapshot(here)
    for rel, content in before.items():
        if _under(rel, case.may_change):
            continue
        if rel not in after:
            problems.append(f"lost {rel}")
        elif after[rel] != content:
            problems.append(f"changed {rel}")
    for rel in after.keys() - before.keys():
        if not _under(rel, case.may_create) and not _under(rel, case.may_change):
            problems.append(f"left {rel}")
    if len(problems) > 4:
        problems = [*problems[:4], f"... {len(problems) - 4} more"]
    return Outcome(case, code, not problems, problems, message, seconds)


def run_one(case: Case, fx: Fixtures, parent: Path) -> Outcome:
    workdir = Path(tempfile.mkdtemp(prefix="case-", dir=parent))
    try:
        return run_case(case, fx, workdir)
    finally:
        for path in workdir.rglob("*"):  # planted unreadable files and folders
            if not path.is_symlink():
                os.chmod(path, 0o700)
        shutil.rmtree(workdir, ignore_errors=True)


def run_cases(
    cases: Sequence[Case], jobs: int = 2, on_done: Callable[[Outcome], None] | None = None
) -> list[Outcome]:
    """Run ``cases`` (in a fresh temporary folder each, fixtures made once) ``jobs`` at a time;
    outcomes in the cases' order."""
    with tempfile.TemporaryDirectory(prefix="archgen-sweep-") as tmp:
        parent = Path(tmp)
        fx = prepare_fixtures(parent / "fixtures", set().union(*(c.fixtures for c in cases)))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(run_one, case, fx, parent) for case in cases]
            outcomes = []
            for future in futures:
                outcome = future.result()
                if on_done is not None:
                    on_done(outcome)
                outcomes.append(outcome)
    return outcomes


def _row(outcome: Outcome, width: int = 64) -> str:
    case = outcome.case
    verdict = "ok" if outcome.passed else "FAIL: " + "; ".join(outcome.problems)
    code = "-" if outcome.code is None else str(outcome.code)
    what = case.what if len(case.what) <= width else case.what[: width - 1] + "…"
    return f"{case.command:<9} {what:<{width}} {code:>4}  {verdict}  | {outcome.message[:110]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        help="only cases whose 'command: what' holds this text (repeatable: any of them)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    wanted = [f.lower() for f in args.filter] or [""]
    cases = [c for c in CASES if any(f in c.row.lower() for f in wanted)]
    if args.list:
        for case in cases:
            print(f"{case.row}  [{case.expect}]  archgen {' '.join(case.args)[:120]}")
        print(f"{len(cases)} cases")
        return 0
    if not cases:
        print(f"no case matches {' or '.join(map(repr, args.filter))}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    print(f"{'command':<9} {'what was wrong':<64} exit  verdict  | first line of the message")
    outcomes = run_cases(cases, jobs=args.jobs, on_done=lambda o: print(_row(o), flush=True))
    failed = [o for o in outcomes if not o.passed]
    wall = time.perf_counter() - start
    commands = sorted({c.command for c in cases})
    print(
        f"\n{len(outcomes)} cases over {len(commands)} commands ({', '.join(commands)}): "
        f"{len(outcomes) - len(failed)} passed, {len(failed)} failed, {wall:.0f} s wall "
        f"with {args.jobs} jobs"
    )
    for o in failed:
        print(f"  FAILED {o.case.row}: {'; '.join(o.problems)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
