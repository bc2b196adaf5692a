"""The study loop: exact trial counts, crash tolerance, resume after SIGKILL, several workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from archgen.search.storage import open_storage
from archgen.search.study import evaluates
from tests.conftest import ROOT

WORKER = [sys.executable, "-m", "tests.search.fake_worker"]


def _evaluated(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Complete trials, checked to be distinct candidates that each evaluated theirs; every
    repeat must be a pruned trial pointing at one of them."""
    done = [t for t in study.trials if t.state is TrialState.COMPLETE]
    assert all(evaluates(t) for t in done), "a repeat was stored as a complete trial"
    assert len({tuple(sorted(t.params.items())) for t in done}) == len(done), "evaluated twice"
    numbers = {t.number for t in done}
    for t in study.trials:
        if not evaluates(t):
            assert t.user_attrs["same_as"] in numbers and t.state is TrialState.PRUNED
            assert t.params == study.trials[t.user_attrs["same_as"]].params
    return done


def _complete(url: str) -> list[optuna.trial.FrozenTrial]:
    return _evaluated(optuna.load_study(study_name="fake", storage=open_storage(url)))


def _run(url: str, n: int, sleep: float, *extra: str, study: str = "fake") -> subprocess.Popen:
    env = {**os.environ, "ARCHGEN_FAKE_STUDY": study}
    return subprocess.Popen([*WORKER, url, str(n), str(sleep), *extra], cwd=ROOT, env=env)


def test_exact_count_failures_recorded_and_study_continues(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    assert _run(url, 14, 0.0, "mamba").wait(timeout=120) == 0
    study = optuna.load_study(study_name="fake", storage=open_storage(url))
    done = _evaluated(study)
    failed = [t for t in study.trials if t.state is TrialState.FAIL]
    assert len(done) == 14
    assert failed, "a candidate with two mamba layers should have crashed"
    assert all("simulated crash for mamba" in t.user_attrs["archgen:error"] for t in failed)
    # enqueued baselines (one homogeneous model per choice) ran first
    assert {tuple(set(t.params.values())) for t in study.trials[:4]} == {
        ("attention",),
        ("swa",),
        ("mamba",),
        ("ckpt",),
    }


def _kill_inside_a_trial(url: str) -> None:
    """Start a worker (trials of 0.4 s) and SIGKILL it inside a trial, after at least three
    are complete. Seeing a trial RUNNING and killing are two steps: on a loaded machine the
    trial can end between them, and the kill lands in the gap between two trials. Whether it
    landed inside one is read back after the kill (a dead worker's trial stays RUNNING); if not,
    the worker is started again (it resumes the study) and killed again."""
    for _ in range(5):
        worker = _run(url, 10, 0.4)
        deadline = time.time() + 60
        while time.time() < deadline:
            time.sleep(0.05)
            try:
                study = optuna.load_study(study_name="fake", storage=open_storage(url))
            except KeyError:  # study not created yet
                continue
            states = [t.state for t in study.trials]
            if states.count(TrialState.COMPLETE) >= 3 and TrialState.RUNNING in states:
                break
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        study = optuna.load_study(study_name="fake", storage=open_storage(url))
        if any(t.state is TrialState.RUNNING for t in study.trials):
            return
    raise AssertionError("five kills all landed between trials")


def test_sigkill_then_rerun_completes_without_loss_or_duplicates(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    _kill_inside_a_trial(url)
    before = len(_complete(url))
    assert 3 <= before < 10, "the worker must be killed mid-run"
    assert _run(url, 10, 0.05).wait(timeout=120) == 0
    study = optuna.load_study(study_name="fake", storage=open_storage(url))
    done = _evaluated(study)
    assert len(done) == 10
    assert len({t.number for t in done}) == 10
    killed = [t for t in study.trials if t.state is TrialState.FAIL]
    assert killed and "heartbeats" in killed[0].user_attrs["archgen:error"]
    # the killed trial's candidate was re-queued and finished
    assert any(t.user_attrs.get("retry_of") == killed[0].number for t in done)
    assert not [t for t in study.trials if t.state is TrialState.RUNNING]


def _two_workers(url: str, n: int, name: str = "fake") -> None:
    workers = [_run(url, n, 0.05, study=name), _run(url, n, 0.05, study=name)]
    assert [w.wait(timeout=180) for w in workers] == [0, 0]
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    done = _evaluated(study)
    assert len(done) == n
    assert len({t.number for t in done}) == n
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # a trial not needed after all (the other worker ran the last) still carries its candidate
    assert all(t.params for t in study.trials if t.state is TrialState.PRUNED)


def test_two_workers_share_a_journal_file(tmp_path) -> None:
    _two_workers(f"journal://{tmp_path}/study.journal", 16)


@pytest.mark.skipif(
    not os.environ.get("ARCHGEN_TEST_POSTGRES"),
    reason="set ARCHGEN_TEST_POSTGRES=postgresql://... (.ci/run does) to test PostgreSQL",
)
def test_two_workers_share_postgresql() -> None:
    # one fresh study per run: the database outlives the test
    _two_workers(os.environ["ARCHGEN_TEST_POSTGRES"], 16, name=f"fake-{uuid.uuid4().hex[:8]}")


def _in_process_study(tmp_path, layers: int, n: int, sampler: str = "tpe") -> optuna.Study:
    from archgen.search.study import StudyConfig, open_study
    from tests.search.fake_worker import fake_space

    config = StudyConfig("small", n, seed=3, sampler=sampler)
    storage = open_storage(f"sqlite:///{tmp_path}/small.db")
    return open_study(storage, config, fake_space(layers).homogeneous_candidates()), config


def test_repeats_reuse_results_and_do_not_count_towards_the_trials(tmp_path) -> None:
    from archgen.search.study import run_worker
    from tests.search.fake_worker import fake_evaluator, fake_space

    space = fake_space(2)  # 16 candidates: drawing 8 distinct ones at random repeats some
    study, config = _in_process_study(tmp_path, 2, 8, sampler="random")
    calls: list[dict] = []
    evaluate = fake_evaluator(0.0)
    run_worker(study, space, lambda c: calls.append(c) or evaluate(c), config)
    done = _evaluated(study)
    repeats = [t for t in study.trials if not evaluates(t)]
    assert len(done) == len(calls) == 8
    assert repeats, "this seed's random draws repeat candidates"
    assert all(t.state is TrialState.PRUNED and t.values is None for t in repeats)
    # Optuna's own view lists each candidate once
    best = study.best_trials
    assert best and all(evaluates(t) for t in best)
    assert len({tuple(sorted(t.params.items())) for t in best}) == len(best)


def test_repeats_are_pruned_in_memory_and_tpe_goes_on(tmp_path) -> None:
    """The default TPE sampler on an in-memory study: repeats are pruned trials (not complete,
    not among ``best_trials``), each candidate is evaluated once, and no trial is left without
    its candidate (a pruned trial without parameters empties the multivariate search space)."""
    from archgen.search.study import StudyConfig, open_study, run_worker
    from tests.search.fake_worker import fake_evaluator, fake_space

    space = fake_space(2)
    config = StudyConfig("memory", 12, seed=1, heartbeat_interval=5.0)
    study = open_study(optuna.storages.InMemoryStorage(), config, space.homogeneous_candidates())
    calls: list[dict] = []
    evaluate = fake_evaluator(0.0)
    run_worker(study, space, lambda c: calls.append(c) or evaluate(c), config)
    done = _evaluated(study)
    assert len(done) == len(calls) == 12
    assert [t for t in study.trials if not evaluates(t)], "this seed's TPE repeats candidates"
    assert {t.number for t in study.best_trials} <= {t.number for t in done}
    assert all(len(t.params) == 2 for t in study.trials)


def test_a_space_smaller_than_the_trials_ends_after_every_candidate(tmp_path) -> None:
    from archgen.search.study import run_worker
    from tests.search.fake_worker import fake_evaluator, fake_space

    space = fake_space(1)  # 4 candidates
    study, config = _in_process_study(tmp_path, 1, 30)
    run_worker(study, space, fake_evaluator(0.0), config)
    assert len(_evaluated(study)) == 4


def test_a_space_whose_every_candidate_crashes_ends(tmp_path) -> None:
    from archgen.search.study import run_worker
    from tests.search.fake_worker import fake_space

    def crash(candidate) -> None:
        raise MemoryError("out of memory")

    study, config = _in_process_study(tmp_path, 3, 12)
    run_worker(study, fake_space(3), crash, config)
    failed = [t for t in study.trials if t.state is TrialState.FAIL]
    assert len(failed) == 12 and not _evaluated(study)
    assert all("MemoryError: out of memory" in t.user_attrs["archgen:error"] for t in failed)


def test_a_later_trial_waits_for_an_earlier_one_still_writing_the_same_candidate(tmp_path) -> None:
    """The race behind a duplicate evaluation: the earlier trial has written only part of its
    candidate when the later one looks. The later must wait and reuse; the earlier must not wait."""
    import threading

    from archgen.search.study import StudyConfig, _same_candidate, open_study
    from tests.search.fake_worker import fake_space

    space = fake_space(2)
    config = StudyConfig("race", 8, heartbeat_interval=0.1, grace_period=60.0)
    study = open_study(open_storage(f"sqlite:///{tmp_path}/race.db"), config, [])
    params = {"layers.0.token_mixer": "swa", "layers.1.token_mixer": "mamba"}
    choices = {s.node: [c.label for c in s.choices] for s in space.slots}
    study.enqueue_trial(params)
    study.enqueue_trial(params)
    earlier, later = study.ask(), study.ask()
    earlier.suggest_categorical("layers.0.token_mixer", choices["layers.0.token_mixer"])
    for name, labels in choices.items():
        later.suggest_categorical(name, labels)

    def finish_earlier() -> None:
        time.sleep(0.3)
        earlier.suggest_categorical("layers.1.token_mixer", choices["layers.1.token_mixer"])
        assert _same_candidate(study, earlier, params, config) is None  # never waits for later
        time.sleep(0.3)
        study.tell(earlier, [1.0, 1e-3])

    writer = threading.Thread(target=finish_earlier)
    writer.start()
    reused = _same_candidate(study, later, params, config)
    writer.join()
    assert reused is not None and reused.number == earlier.number


def test_a_worker_whose_trial_was_declared_dead_carries_on(tmp_path) -> None:
    """Heartbeats starved past the grace period (a stalled machine): another worker fails the
    trial and re-queues it while it is still being evaluated. Its worker must not crash."""
    from dataclasses import replace

    from archgen.search.study import fail_stale_trials, run_worker
    from tests.search.fake_worker import fake_evaluator, fake_space

    study, config = _in_process_study(tmp_path, 2, 6)
    evaluate = fake_evaluator(0.0)
    declared_dead: list[int] = []

    def stalls_once(candidate):
        if not declared_dead:
            declared_dead.extend(fail_stale_trials(study, replace(config, grace_period=-1.0)))
        return evaluate(candidate)

    run_worker(study, fake_space(2), stalls_once, config)
    assert len(declared_dead) == 1
    assert len(_evaluated(study)) == 6
    dead = study.trials[declared_dead[0]]
    assert dead.state is TrialState.FAIL
    assert any(t.user_attrs.get("retry_of") == dead.number for t in _evaluated(study))


def test_a_sampler_stuck_on_one_candidate_still_gets_every_trial(tmp_path, monkeypatch) -> None:
    """A model-based sampler that has converged keeps proposing its favourite: each repeat is
    followed by one random proposal, so the study reaches its trials instead of ending on the
    repeat limit with one candidate evaluated."""
    from archgen.search import study as study_module
    from archgen.search.study import run_worker
    from tests.search.fake_worker import fake_evaluator, fake_space

    favourite = {"layers.0.token_mixer": "swa", "layers.1.token_mixer": "swa"}

    def stuck_sampler(config, offset, *, explore=False):
        random = optuna.samplers.RandomSampler(seed=offset)
        return random if explore else optuna.samplers.PartialFixedSampler(favourite, random)

    monkeypatch.setattr(study_module, "make_sampler", stuck_sampler)
    study, config = _in_process_study(tmp_path, 2, 8)
    run_worker(study, fake_space(2), fake_evaluator(0.0), config)
    assert len(_evaluated(study)) == 8
