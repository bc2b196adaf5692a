"""Running the Optuna study: resumable, multi-worker, crash-tolerant.

Each worker runs an ask/tell loop over a shared storage until the study holds ``n_trials``
complete trials:

* **exact count**: ``n_trials`` is the number of distinct candidates evaluated. A trial only
  runs if fewer than ``n_trials`` evaluating trials with lower numbers are complete, running or
  waiting; so however many workers race, exactly ``n_trials`` candidates are evaluated (or every
  candidate of a smaller space).
* **heartbeats**: a thread stamps each running trial; a trial whose stamp is older than the grace
  period belongs to a killed worker and is marked failed and re-queued (at most ``max_retry``
  times). Rerunning the same command after a SIGKILL therefore resumes without loss. A worker
  that was only stalled past the grace period finds its trial failed and carries on.
* **failures**: an evaluation that raises is recorded as a failed trial with its error message,
  and the study continues.
* **no duplicate work**: a candidate identical to a completed one is not evaluated again and
  does not count towards ``n_trials``: in a small space a converged sampler proposes repeats
  often (a sixth of the trials of the efficiency benchmark), and each would otherwise cost an
  evaluation. Of two workers' trials of one candidate, the later one waits for the earlier
  (``_same_candidate``).
* **one complete trial per candidate**: a repeat is told as *pruned* with the user attribute
  ``same_as`` (the trial whose result stands), not as a second complete trial, so
  ``study.best_trials``, the Pareto front and optuna-dashboard list each candidate once. The
  sampler still learns from it: TPE counts a pruned trial without intermediate values among its
  poor ("above") trials once enough trials are complete, so a repeat makes the candidate less
  likely to be proposed again (as a second complete copy did), while the original complete trial
  keeps its values; NSGA-II and random sampling ignore it.
  A trial asked for but not needed (other workers already run the last trials) suggests its
  candidate before it is pruned: a pruned trial without parameters would empty the joint search
  space of the multivariate TPE (``IntersectionSearchSpace(include_pruned=True)``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from archgen.search.space import Candidate, SearchSpace

HEARTBEAT = "archgen:heartbeat"
ERROR = "archgen:error"
RETRIES = "archgen:retries"
WORKER = "worker"
SAME_AS = "same_as"  # a pruned repeat: the number of the complete trial of its candidate
UNNEEDED = "archgen:unneeded"  # a pruned trial asked for after the last needed one
BUDGET_CONSTRAINT = "latency_over_budget"  # reference units


@dataclass(frozen=True)
class Evaluation:
    quality: float  # higher is better
    latency: float  # reference units (x the base model): measured when measured, else predicted
    predicted: float
    measured: float | None = None
    # the budget constraint (> 0: over budget) as the evaluator judged it; None: no budget
    over_budget: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Evaluator = Callable[[Candidate], Evaluation]


@dataclass(frozen=True)
class StudyConfig:
    name: str
    n_trials: int
    seed: int = 0
    sampler: str = "tpe"
    heartbeat_interval: float = 2.0
    grace_period: float = 10.0
    max_retry: int = 2


def worker_id() -> str:
    """This process, as other workers of a shared study see it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def make_sampler(
    config: StudyConfig, offset: int, *, explore: bool = False
) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded with ``config.seed + offset``; ``explore``: a random one."""
    seed = config.seed + offset
    # Constraints reach the samplers through Trial.set_constraint (Optuna >= 5).
    if explore or config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: a trial another worker is running counts as a poor result, so
        # concurrent workers do not all propose the same promising candidate.
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=8, multivariate=True, constant_liar=True
        )


def open_study(
    storage: optuna.storages.BaseStorage, config: StudyConfig, baselines: Sequence[Candidate]
) -> optuna.Study:
    # run_worker re-seeds the sampler for every trial it asks for (see there)
    study = optuna.create_study(
        study_name=config.name,
        storage=storage,
        directions=["maximize", "minimize"],
        sampler=make_sampler(config, 0),
        load_if_exists=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["quality", "latency_vs_base"])  # latency: x the base model
    for candidate in baselines:
        study.enqueue_trial(dict(candidate), user_attrs={"baseline": True}, skip_if_exists=True)
    return study


class _Heartbeat:
    def __init__(self, study: optuna.Study, trial_id: int, interval: float) -> None:
        self._study, self._trial_id, self._interval = study, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self._study._storage.set_trial_user_attr(self._trial_id, HEARTBEAT, time.time())
            except Exception:  # the trial finished meanwhile; nothing to stamp
                return
            self._stop.wait(self._interval)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def fail_stale_trials(study: optuna.Study, config: StudyConfig) -> list[int]:
    """Mark running trials without a recent heartbeat as failed and re-queue their parameters."""
    now = time.time()
    failed = []
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = trial.user_attrs.get(HEARTBEAT)
        if last is None and trial.datetime_start is not None:
            last = trial.datetime_start.timestamp()
        if last is None or now - last < config.grace_period:
            continue
        try:  # the error goes first: a finished trial can no longer be annotated
            storage.set_trial_user_attr(
                trial._trial_id, ERROR, "worker stopped sending heartbeats (killed?)"
            )
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except Exception:  # another worker failed it first
            continue
        failed.append(trial.number)
        retries = int(trial.user_attrs.get(RETRIES, 0))
        if retries < config.max_retry and len(trial.params) == len(trial.distributions):
            attrs = {RETRIES: retries + 1, "retry_of": trial.number}
            if trial.user_attrs.get("baseline"):
                attrs["baseline"] = True
            study.enqueue_trial(dict(trial.params), user_attrs=attrs)
    return failed


def evaluates(trial: FrozenTrial) -> bool:
    """Whether ``trial`` evaluates its candidate (not a repeat of an earlier trial's)."""
    return SAME_AS not in trial.user_attrs


def _active_before(trials: Sequence[FrozenTrial], number: int) -> int:
    active = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    return sum(1 for t in trials if t.number < number and t.state in active and evaluates(t))


def _same_candidate(
    study: optuna.Study, trial: optuna.Trial, params: dict[str, Any], config: StudyConfig
) -> FrozenTrial | None:
    """A complete trial of the same candidate, waiting first for one that an earlier trial (of
    another worker) is still evaluating, so the candidate is not evaluated twice at once.

    Parameters reach the storage one ``suggest`` at a time, so an earlier trial whose candidate
    is still incomplete may yet turn out to be this one: it is waited for too. Each trial writes
    its whole candidate before it looks, and only defers to lower-numbered trials; so of two
    trials of one candidate the later always sees the earlier and waits, and the earlier never
    waits for the later -- exactly one evaluates, and no two wait for each other."""
    while True:
        trials = study.get_trials(deepcopy=False)
        same = [t for t in trials if t.params == params and t.number != trial.number]
        done = [t for t in same if t.state is TrialState.COMPLETE and evaluates(t)]
        if done:
            return done[0]
        earlier = [t for t in trials if t.state is TrialState.RUNNING and t.number < trial.number]
        if not any(t.params == params or not params.keys() <= t.params.keys() for t in earlier):
            return None
        time.sleep(config.heartbeat_interval / 2)
        fail_stale_trials(study, config)  # that worker may have been killed


def run_worker(
    study: optuna.Study,
    space: SearchSpace,
    evaluate: Evaluator,
    config: StudyConfig,
    *,
    on_trial: Callable[[FrozenTrial, Sequence[FrozenTrial]], None] | None = None,
) -> None:
    """Run trials until the study holds ``config.n_trials`` complete evaluating trials, or every
    candidate of a smaller space. A study also ends after ``n_trials`` repeats or ``n_trials``
    failures (at least ten): a sampler that only repeats, or a space whose every candidate
    crashes, must not keep a worker busy forever."""
    target = min(config.n_trials, space.size())
    give_up = max(config.n_trials, 10)
    repeated = False
    while True:
        fail_stale_trials(study, config)
        trials = study.get_trials(deepcopy=False)
        complete = sum(t.state is TrialState.COMPLETE and evaluates(t) for t in trials)
        running = sum(t.state is TrialState.RUNNING for t in trials)
        repeats = sum(not evaluates(t) for t in trials)
        failed = sum(t.state is TrialState.FAIL for t in trials)
        if complete >= target or repeats >= give_up or failed >= give_up:
            return
        if complete + running >= target:
            time.sleep(config.heartbeat_interval)  # others are finishing the last trials
            continue
        trial = study.ask()
        # Seeded by the trial number, which is unique across workers: two workers started
        # together would otherwise share a seed and propose the same candidates in lockstep.
        # After a repeat, one random proposal: a model-based sampler that has converged in a
        # small or mostly infeasible space keeps proposing its favourite, and the study would
        # end on the repeat limit short of its trials.
        study.sampler = make_sampler(config, trial.number, explore=repeated)
        repeated = False
        # UpdateFinishedTrialError: another worker declared this trial dead (its heartbeats
        # were starved past the grace period) and re-queued the candidate; the retry owns it.
        with (
            _Heartbeat(study, trial._trial_id, config.heartbeat_interval),
            contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError),
        ):
            repeated = _run_trial(study, trial, space, evaluate, config, target)
        if on_trial is not None:  # this worker's trial, and the whole study (all workers)
            trials = study.get_trials(deepcopy=False)
            on_trial(next(t for t in trials if t._trial_id == trial._trial_id), trials)


def _run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    space: SearchSpace,
    evaluate: Evaluator,
    config: StudyConfig,
    target: int,
) -> bool:
    """Run one trial; whether it repeated an earlier trial's candidate."""
    # The candidate is suggested first, even by a trial that is then not needed: see the module
    # docstring (a pruned trial without parameters empties the multivariate TPE's search space).
    candidate = {
        s.node: trial.suggest_categorical(s.node, [c.label for c in s.choices]) for s in space.slots
    }
    trial.set_user_attr(WORKER, worker_id())
    if _active_before(study.get_trials(deepcopy=False), trial.number) >= target:
        trial.set_user_attr(UNNEEDED, True)
        study.tell(trial, state=TrialState.PRUNED)  # lost a race: enough trials exist
        return False
    previous = _same_candidate(study, trial, candidate, config)
    if previous is not None:
        # Not a second complete trial of the candidate: pruned, pointing at the one that stands.
        trial.set_user_attr(SAME_AS, previous.number)
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        return True
    try:
        result = evaluate(candidate)
        _record(trial, result, config)
    except optuna.exceptions.UpdateFinishedTrialError:
        raise
    except Exception as exc:  # a crashing candidate must not stop the study
        trial.set_user_attr(ERROR, f"{type(exc).__name__}: {exc}")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    else:
        study.tell(trial, [result.quality, result.latency], skip_if_finished=True)
    return False


def _record(trial: optuna.Trial, result: Evaluation, config: StudyConfig) -> None:
    trial.set_user_attr("predicted_ratio", result.predicted)
    trial.set_user_attr("measured_ratio", result.measured)
    if result.over_budget is not None:
        trial.set_constraint(BUDGET_CONSTRAINT, result.over_budget)
    for key, value in result.extra.items():
        trial.set_user_attr(key, value)


def feasible(trial: FrozenTrial) -> bool:
    return all(c <= 0 for c in trial.constraints.values())


def pareto_front(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Complete, feasible, non-dominated trials (quality up, latency down), one per candidate."""
    fronts = pareto_fronts(trials, 1)
    return fronts[0] if fronts else []


def pareto_fronts(trials: Sequence[FrozenTrial], count: int) -> list[list[FrozenTrial]]:
    """The first ``count`` fronts of non-dominated sorting over the complete, feasible trials
    (one per candidate): front 1 is :func:`pareto_front`, front 2 the non-dominated trials once
    front 1 is set aside, and so on. Certification walks down them when a whole front measures
    over budget (search/certify.py), so the next-best models are the ones tried next."""
    pool: dict[tuple[tuple[str, Any], ...], FrozenTrial] = {}
    for t in trials:
        if t.state is TrialState.COMPLETE and feasible(t) and evaluates(t):
            pool.setdefault(tuple(sorted(t.params.items())), t)
    left = list(pool.values())
    fronts: list[list[FrozenTrial]] = []
    while left and len(fronts) < count:
        front = [t for t in left if not any(_dominates(o, t) for o in left)]
        fronts.append(sorted(front, key=lambda t: t.values[1]))
        taken = {t.number for t in front}
        left = [t for t in left if t.number not in taken]
    return fronts


def _dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
    """``a`` is at least as good as ``b`` on quality (up) and latency (down), better on one."""
    (qa, la), (qb, lb) = a.values, b.values
    return qa >= qb and la <= lb and (qa > qb or la < lb)
