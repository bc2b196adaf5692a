"""Quality proxies of ``archgen search``, wired from the spec (the fidelity ladder of DESIGN §6).

* ``analytic``   -- :class:`archgen.search.quality.AnalyticQuality`, no training;
* ``capability`` -- each candidate trained briefly on in-context associative recall; quality is
  answer accuracy (cached per candidate in the study, so a repeated candidate is not retrained);
* ``blockwise``  -- the default: the spec's base model is trained once on the spec's data (the
  built-in corpus by default) as the *teacher* (cached on disk); every (layer, choice) block is
  distilled locally from it once (cached); a candidate's quality is minus its blocks' mean
  normalised distillation loss, so trials cost no training at all. Search processes sharing a
  cache folder (several workers of one study on one machine) take turns through a file lock:
  the first trains the teacher and its table, the others wait and reuse them, so every trial
  of the study is scored against the same teacher;
* finalists      -- optionally, the best Pareto models are distilled end to end from the teacher
  and the report says how well the cheap fidelity ranked them.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from archgen.ir.graph import Graph
from archgen.ir.ops import Op
from archgen.search.space import Candidate, SearchSpace
from archgen.spec.models import ArchSpec
from archgen.train.config import TrainConfig

Quality = Callable[[Candidate, Graph], float]
Log = Callable[[str], None]


def base_spec(spec: ArchSpec) -> ArchSpec:
    return spec.model_copy(update={"search": None})


def teacher_dir(spec: ArchSpec, steps: int, cache: Path) -> Path:
    """Keyed by the model *and* its data and training sections: all of them shape the teacher."""
    import hashlib
    import json

    from archgen.spec.expand import spec_to_data

    data = json.dumps(spec_to_data(base_spec(spec)), sort_keys=True, default=str)
    digest = hashlib.sha256(data.encode()).hexdigest()[:16]
    return cache / "teachers" / f"{spec.model.name}-{digest}-{steps}"


def train_teacher(spec: ArchSpec, steps: int, cache: Path, log: Log) -> tuple[Any, Path, Any]:
    """The base model trained for ``steps`` on the spec's data (reused when already trained)."""
    from archgen import training
    from archgen.backends.torch_model import build_model
    from archgen.backends.weights import load_weights
    from archgen.train.loop import train as run_train

    prepared = training.prepare(base_spec(spec), None, training.TrainOptions(steps=steps))
    folder = teacher_dir(spec, steps, cache)
    weights = folder / "weights.safetensors"
    if weights.is_file():
        log(f"teacher: reusing {folder}")
    else:
        log(f"teacher: training the base model for {steps} steps on {prepared.data.describe()}")
        result = run_train(
            prepared.graph, prepared.data, prepared.config, folder, resume=True, progress=True,
            log=log,
        )  # fmt: skip
        training.write_run_files(
            prepared.spec, prepared.graph, prepared.source, prepared.config, folder,
            {"steps": result.steps, "final": result.final}, tokenizer=prepared.data.tokenizer,
        )  # fmt: skip
        log(f"teacher: validation {result.final}")
    model = build_model(prepared.graph)
    load_weights(model, weights)
    return model.eval(), folder, prepared


@dataclass(frozen=True)
class BlockwiseSetup:
    """How long the teacher trains and how each block is distilled: what the teacher's and the
    blockwise cache's keys depend on, so the winner finds the same cached weights."""

    teacher_steps: int
    distill_steps: int

    @staticmethod
    def of(spec: ArchSpec, quick: bool) -> BlockwiseSetup:
        assert spec.search is not None
        q = spec.search.quality
        if quick:
            return BlockwiseSetup(min(q.teacher_steps, 150), min(q.distill_steps, 30))
        return BlockwiseSetup(q.teacher_steps, q.distill_steps)

    def block_config(self, teacher_config: TrainConfig) -> TrainConfig:
        """The teacher's options with the blockwise jobs' length and schedule."""
        steps = self.distill_steps
        return replace(
            teacher_config, steps=steps, warmup_steps=min(5, steps - 1), eval_interval=steps,
            checkpoint_interval=steps,
        )  # fmt: skip


def alternatives(space: SearchSpace) -> dict[str, dict[str, Op]]:
    """``{graph node: {choice label: op}}``: every (layer, choice) block the table scores
    (each node of a slot over several: a stage's layers are distilled one by one)."""
    return {node: {c.label: c.op for c in s.choices} for s in space.slots for node in s.targets}


def blockwise_quality(
    spec: ArchSpec, space: SearchSpace, cache: Path, quick: bool, log: Log
) -> tuple[Quality, dict[str, Any]]:
    from archgen.search.quality import TableQuality
    from archgen.train.blockwise import blockwise_scores

    setup = BlockwiseSetup.of(spec, quick)
    folder = teacher_dir(spec, setup.teacher_steps, cache)
    with one_process_at_a_time(folder.with_name(folder.name + ".lock"), log):
        teacher, folder, prepared = train_teacher(spec, setup.teacher_steps, cache, log)
        jobs = alternatives(space)
        config = setup.block_config(prepared.config)
        count = sum(len(v) for v in jobs.values())
        log(f"blockwise distillation: {count} (layer, choice) jobs of {setup.distill_steps} "
            "steps (cached)")  # fmt: skip
        table = blockwise_scores(teacher, jobs, prepared.data, config,
                                 cache_dir=cache / "blockwise", log=log)  # fmt: skip
    log(f"  {table.optimizer_steps} optimizer steps run, the rest from the cache")
    quality = TableQuality(table.scores("normalized"))
    info = {"teacher": str(folder), "blockwise_optimizer_steps": table.optimizer_steps,
            "table": [r.__dict__ for r in table.rows]}  # fmt: skip

    def score(candidate: Candidate, graph: Graph) -> float:
        nodes = space.node_choices(candidate)
        return quality.score({node: label for node, (label, _) in nodes.items()})

    return score, info


@contextlib.contextmanager
def one_process_at_a_time(path: Path, log: Log) -> Iterator[None]:
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"teacher: another archgen process is preparing it; waiting for {path}")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def unit_embeddings(model: Any) -> None:
    """Recall tasks need token identity to survive the residual stream: with the LM default
    (std 0.02) small models stay near chance for thousands of steps; std 1 learns in ~200."""
    import torch

    torch.nn.init.normal_(model.get_submodule("embedding").weight, std=1.0)


def capability_problem(graph: Graph) -> str | None:
    """Why the capability proxy's task cannot train ``graph`` (its vocabulary), or None."""
    from archgen.train.tasks import AssociativeRecall

    ids = AssociativeRecall().vocab_size
    room = graph.model.vocab_size - (1 if graph.model.mask_token is not None else 0)
    if room >= ids:
        return None
    mask = " besides its mask token" if graph.model.mask_token is not None else ""
    return (
        f"the capability proxy's task (associative recall) uses {ids} token ids; the model has "
        f"{room}{mask}"
    )


def capability_quality(spec: ArchSpec, quick: bool) -> Quality:
    """Accuracy on in-context associative recall after a short training run.

    A masked-diffusion LM is trained on the task as prompt/answer pairs with its own objective
    (LLaDA's SFT form: only the answers masked, train/diffusion.py); its accuracy is the exact
    match of the answers all filled in one denoiser call."""
    from archgen.train.config import TrainConfig
    from archgen.train.data import load_data
    from archgen.train.diffusion import MaskedDiffusion, check_diffusion_data
    from archgen.train.loop import train as run_train
    from archgen.train.tasks import AssociativeRecall

    task = AssociativeRecall()
    steps = 60 if quick else 200
    config = TrainConfig(
        steps=steps, batch_size=32, lr=3e-3, warmup_steps=10, eval_interval=steps,
        checkpoint_interval=steps, eval_batches=4, seed=spec.search.seed if spec.search else 0,
    )  # fmt: skip

    def score(candidate: Candidate, graph: Graph) -> float:
        data = load_data(task, vocab_size=graph.model.vocab_size, seq_len=task.seq_len)
        objective = None
        if graph.model.mask_token is not None:
            check_diffusion_data(data, graph.model.mask_token)
            objective = MaskedDiffusion(graph.model.mask_token)
        with tempfile.TemporaryDirectory() as tmp:
            result = run_train(
                graph, data, config, tmp, init=unit_embeddings, progress=False,
                log=lambda _: None, objective=objective,
                evaluator=objective.evaluate if objective is not None else None,
            )  # fmt: skip
        return float(result.final["accuracy"])

    return score


def finalist_check(
    spec: ArchSpec, finalists: list[tuple[Candidate, float]], space: SearchSpace, cache: Path,
    steps: int, log: Log, *, quick: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Distil each finalist end to end; rank agreement with the cheap fidelity's quality."""
    from scipy.stats import spearmanr

    from archgen import training

    setup = BlockwiseSetup.of(spec, quick)
    teacher, _, prepared = train_teacher(spec, setup.teacher_steps, cache, log)
    config = replace(prepared.config, steps=steps, eval_interval=steps, checkpoint_interval=steps)
    rows = []
    for candidate, cheap in finalists:
        with tempfile.TemporaryDirectory() as tmp:
            result = training.distill_graph(
                space.graph_for(candidate), teacher, prepared.data, config, Path(tmp) / "run",
                progress=False, log=lambda _: None,
            )  # fmt: skip
        loss = float(result.final["loss"])
        log(f"finalist {dict(candidate)}: end-to-end distillation loss {loss:.4f}")
        rows.append({"params": dict(candidate), "cheap_quality": cheap, "e2e_loss": loss})
    rho = None
    if len(rows) >= 3:
        rho = float(spearmanr([r["cheap_quality"] for r in rows],
                              [-r["e2e_loss"] for r in rows]).statistic)  # fmt: skip
    return {"finalists": rows, "spearman_cheap_vs_e2e": rho}
