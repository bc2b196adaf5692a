"""``archgen search`` end to end on the null backend (cost-model latency), and its bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.conftest import archgen as run_archgen

SPEC = """
model:
  name: tiny-hybrid
  vocab_size: 64
  d_model: 32
  max_seq_len: 256
  layers:
    - repeat: 3
      layers:
        - token_mixer: {kind: mamba, d_state: 4}
          channel_mixer: {kind: swiglu}
search:
  budget: 1s
  trials: 10
  workload: {seq_len: 128, backend: "null", threads: 1, repeats: 3}
  quality: {fidelity: analytic}
  slots:
    - layers: all
      token_mixer:
        - {kind: mamba, d_state: 4}
        - {kind: swa, heads: 4, window: [8, 32]}
        - {kind: attention, heads: 4}
        - {kind: dense, causal: false}
"""


def archgen(*args: str, cwd=ROOT, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """The shared runner, inheriting this environment (the PostgreSQL test URL, caches)."""
    import os

    return run_archgen(*args, cwd=cwd, env={**os.environ, "COLUMNS": "200", **(env_extra or {})})


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def test_search_on_null_backend_writes_report_plots_and_a_valid_best_spec(spec, tmp_path) -> None:
    out = tmp_path / "out"
    env = {"ARCHGEN_CACHE": str(tmp_path / "cache")}
    result = archgen("search", str(spec), "-o", str(out), env_extra=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "excluded layers.0.token_mixer = dense: not causal" in result.stdout
    assert "Pareto set" in result.stdout
    # the baselines (base = all mamba, and one homogeneous model per choice) calibrate the
    # predictor, each block kind named by its choice
    assert "measuring 4 baseline model(s) against the base model" in result.stdout
    factors = next(ln for ln in result.stdout.splitlines() if "in-context block factors" in ln)
    for label in ("mamba", "swa(window=8)", "swa(window=32)", "attention"):
        assert f"{label} " in factors
    report = json.loads((out / "report.json").read_text())
    trials = report["trials"]
    assert trials["evaluated"] == 10  # distinct candidates; repeats reuse a result
    assert trials["complete"] == trials["evaluated"]  # a repeat is a pruned trial
    assert report["best"]["within_budget"] and report["best"]["measured_s"] <= 1.0
    assert report["best"]["measured_ratio"] <= report["budget_ratio"]
    for name in ("pareto.png", "history.png", "predicted_vs_measured.png", "best.yaml"):
        assert (out / name).exists(), name
    check = archgen("check", str(out / "best.yaml"))
    assert check.returncode == 0, check.stderr
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert "search" not in best
    # Rerunning the same command resumes the finished study: no new trials.
    again = archgen("search", str(spec), "-o", str(out), env_extra=env)
    assert again.returncode == 0
    assert json.loads((out / "report.json").read_text())["trials"] == trials


def test_relative_budget_is_a_fraction_of_the_base_model_and_survives_resume(
    spec, tmp_path
) -> None:
    import torch

    from archgen import api
    from archgen.backends.base import LowerOptions, get_backend

    out = tmp_path / "out"
    env = {"ARCHGEN_CACHE": str(tmp_path / "cache")}
    args = ("search", str(spec), "-o", str(out), "--budget", "95%", "--trials", "4")
    result = archgen(*args, env_extra=env)
    assert result.returncode == 0, result.stdout + result.stderr
    # The spec's base model (all Mamba) on the same backend, measured independently.
    graph = api.compile_spec(spec)
    options = LowerOptions(min_seq=1, opt_seq=128, max_seq=128, threads=1, decode_graph=False)
    base_s = get_backend("null").lower(graph, options).measure(torch.zeros(1, 128)).median_s
    report = json.loads((out / "report.json").read_text())
    # checked as a ratio to the base model, shown in seconds through its calibration
    assert report["budget_ratio"] == pytest.approx(0.95)
    assert report["budget_s"] == pytest.approx(0.95 * base_s)
    assert "95% of the base model" in result.stdout
    # no bookkeeping trial: every trial carries a candidate
    assert all(t["params"] for t in report["history"])
    again = archgen(*args, env_extra=env)
    assert again.returncode == 0
    assert json.loads((out / "report.json").read_text())["budget_ratio"] == pytest.approx(0.95)


def _fails_fast(result: subprocess.CompletedProcess, started: float, text: str) -> None:
    assert result.returncode != 0
    assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "measuring block latencies" not in result.stdout
    assert time.time() - started < 60


def test_unparsable_budget(spec) -> None:
    t = time.time()
    _fails_fast(archgen("search", str(spec), "--budget", "10parsecs"), t, "10parsecs")


def test_unreachable_storage(spec, tmp_path) -> None:
    t = time.time()
    result = archgen(
        "search",
        str(spec),
        "-o",
        str(tmp_path / "o"),
        "--storage",
        "postgresql://nobody@127.0.0.1:1/none",
    )
    _fails_fast(result, t, "cannot open the study storage")


def test_empty_search_space(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        SPEC.split("      token_mixer:\n")[0] + "      token_mixer:\n"
        "        - {kind: dense, causal: false}\n"
    )
    t = time.time()
    _fails_fast(archgen("search", str(path), "-o", str(tmp_path / "o")), t, "search space is empty")


def test_budget_below_the_cheapest_candidate(spec, tmp_path) -> None:
    result = archgen(
        "search",
        str(spec),
        "-o",
        str(tmp_path / "o"),
        "--budget",
        "1us",
        env_extra={"ARCHGEN_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 2
    assert "below the measured latency of the cheapest candidate" in result.stderr
    assert not (tmp_path / "o" / "report.json").exists()


def test_spec_without_search_section(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SPEC.split("search:")[0])
    result = archgen("search", str(path))
    assert result.returncode == 2 and "has no 'search:' section" in result.stderr


def _two_searches(spec: Path, url: str, tmp_path: Path, *args: str) -> list[str]:
    """Run two ``archgen search`` commands on one storage and one cache folder at once (output
    folders ``a`` and ``b``); both must succeed. Their outputs."""
    import os

    env = {**os.environ, "COLUMNS": "200", "ARCHGEN_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "archgen.cli.main", "search", str(spec), "--storage", url]
    workers = [
        subprocess.Popen(
            [*command, *args, "-o", str(tmp_path / name)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("a", "b")
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)
    return outputs


@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_two_search_processes_cooperate_on_one_study(backend, tmp_path) -> None:
    """Two ``archgen search`` commands on one storage (and one block-latency cache) share the
    trials: together they evaluate the requested number of distinct candidates, and each
    reports the whole study."""
    import os
    import uuid

    import optuna

    from archgen.search.storage import open_storage
    from tests.search.test_study import _evaluated

    if backend == "journal":
        url = f"journal://{tmp_path}/study.journal"
    elif not os.environ.get("ARCHGEN_TEST_POSTGRES"):
        pytest.skip("set ARCHGEN_TEST_POSTGRES=postgresql://... (.ci/run does) to test PostgreSQL")
    else:
        url = os.environ["ARCHGEN_TEST_POSTGRES"]
    path = tmp_path / "spec.yaml"  # a fresh study per run: the database outlives the test
    path.write_text(SPEC.replace("name: tiny-hybrid", f"name: duo-{uuid.uuid4().hex[:8]}"))
    _two_searches(path, url, tmp_path, "--trials", "12", "--budget", "95%")
    name = json.loads((tmp_path / "a" / "report.json").read_text())["study"]["name"]
    done = _evaluated(optuna.load_study(study_name=name, storage=open_storage(url)))
    assert len(done) == 12
    workers_seen, budgets, winners = set(), set(), set()
    for out in ("a", "b"):
        report = json.loads((tmp_path / out / "report.json").read_text())
        assert report["trials"]["evaluated"] == 12
        budgets.add(report["budget_ratio"])  # one relative budget for the study
        winners.add(report["best"]["number"])  # certified once, recorded in the study
        workers_seen |= {
            t["worker"]
            for t in report["history"]
            if t["state"] == "complete" and t["same_as"] is None
        }
    assert None not in workers_seen and 1 <= len(workers_seen) <= 2
    assert len(budgets) == 1 and len(winners) == 1


def test_search_processes_sharing_a_cache_train_one_teacher(tmp_path) -> None:
    """Two workers of one study on one machine: one trains the teacher and distils the blocks,
    the other waits for it and reuses both, so every trial is scored against the same teacher."""

    spec = SPEC.replace("vocab_size: 64", "vocab_size: 256").replace(
        "quality: {fidelity: analytic}",
        "quality: {fidelity: blockwise, teacher_steps: 12, distill_steps: 4}",
    )
    spec += f"""
data: {{kind: text, paths: ["{ROOT / "archgen"}"], include: "*.py"}}
train: {{batch_size: 4, seq_len: 32, eval_interval: 6, eval_batches: 1}}
"""
    path = tmp_path / "spec.yaml"
    path.write_text(spec)
    outputs = _two_searches(path, f"journal://{tmp_path}/study.journal", tmp_path, "--trials", "6")
    assert sum("teacher: training the base model" in out for out in outputs) == 1, outputs
    reports = [json.loads((tmp_path / n / "report.json").read_text()) for n in ("a", "b")]
    assert reports[0]["quality"]["teacher"] == reports[1]["quality"]["teacher"]
    steps = sorted(r["quality"]["blockwise_optimizer_steps"] for r in reports)
    assert steps[0] == 0 and steps[1] > 0
