"""Pass overhead: wall time of the whole pipeline (spec -> verified, typed, rewritten, costed
graph) on every example, with no user pass and with each rewrite the pass tests use.

Each cell is the median of ``--repeats`` runs of ``api.compile_spec`` on an already loaded spec
(the YAML parse is not a pass), so it is the time a user waits for the passes of ``archgen
check --passes ...``. Issue 12 asks for well under a second.

    python -m benchmarks.bench_passes [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

from archgen import api
from archgen.passes.base import GraphInvalid, PassError
from benchmarks.common import machine
from tests.conftest import EXAMPLES
from tests.passes.passcheck import PASS_CASES

# the rewrites (the analyses run in every pipeline anyway)
REWRITES = [c for n in ("compress_segments", "replace_mixer") for c in PASS_CASES[n]]


def time_pipeline(spec: object, passes: str | None, repeats: int) -> float | None:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            api.compile_spec(spec, passes=passes)  # type: ignore[arg-type]
        except (PassError, GraphInvalid):
            return None  # the pass refuses this example (its golden file says why)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    cases: list[str | None] = [None, *REWRITES]
    print(f"machine: {machine()}")
    print(f"median of {args.repeats} runs of api.compile_spec, milliseconds\n")
    print("| example | " + " | ".join(c or "(analyses only)" for c in cases) + " |")
    print("|---|" + "---:|" * len(cases))
    worst = 0.0
    for path in EXAMPLES:
        spec = api.as_spec(path)
        cells = []
        for case in cases:
            t = time_pipeline(spec, case, args.repeats)
            cells.append("refused" if t is None else f"{t * 1e3:.2f}")
            worst = max(worst, t or 0.0)
        print(f"| {path.stem} | " + " | ".join(cells) + " |")
    print(f"\nslowest pipeline: {worst * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
