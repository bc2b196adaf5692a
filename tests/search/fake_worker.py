"""A search worker over a fake evaluator (tests run it as a subprocess and may SIGKILL it).

usage: python -m tests.search.fake_worker STORAGE_URL N_TRIALS SLEEP_S [FAIL_LABEL]
"""

from __future__ import annotations

import os
import sys
import time

from archgen.ir import ops
from archgen.ir.graph import GraphBuilder, ModelInfo
from archgen.search.space import Choice, SearchSpace
from archgen.search.storage import open_storage, quiet_optuna
from archgen.search.study import Evaluation, StudyConfig, open_study, run_worker

D = 32
BUDGET_S = 12e-3
LABELS = {
    "attention": (ops.Attention(d_model=D, heads=4).resolved(), 1.0, 4.0),
    "swa": (ops.SlidingWindowAttention(d_model=D, heads=4, window=8).resolved(), 0.7, 2.0),
    "mamba": (ops.Mamba(d_model=D).resolved(), 0.8, 2.5),
    "ckpt": (ops.CheckpointAttention(d_model=D, heads=4, segment_size=4).resolved(), 0.75, 2.2),
}


def fake_space(layers: int = 4) -> SearchSpace:
    g = GraphBuilder(ModelInfo("fake", "causal-lm", 16, D, 64))
    x = g.add("embedding", ops.Embedding(d_model=D, vocab_size=16), "tokens")
    for i in range(layers):
        m = g.add(f"layers.{i}.token_mixer", LABELS["attention"][0], x, block=f"layers.{i}")
        x = g.add(f"layers.{i}.token_residual", ops.ResidualAdd(D), x, m, block=f"layers.{i}")
    graph = g.build(g.add("logits", ops.LMHead(d_model=D, vocab_size=16), x))
    choices = [Choice(label, op) for label, (op, _, _) in LABELS.items()]
    return SearchSpace.build(graph, {f"layers.{i}.token_mixer": choices for i in range(layers)})


def fake_evaluator(sleep: float, fail_label: str | None = None):
    def evaluate(candidate) -> Evaluation:
        time.sleep(sleep)
        labels = list(candidate.values())
        if fail_label is not None and labels.count(fail_label) >= 2:
            raise RuntimeError(f"simulated crash for {fail_label}")
        quality = sum(LABELS[label][1] for label in labels)
        latency = sum(LABELS[label][2] for label in labels) * 1e-3
        return Evaluation(quality, latency, latency, over_budget=latency - BUDGET_S)

    return evaluate


def main() -> None:
    url, n, sleep = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    fail_label = sys.argv[4] if len(sys.argv) > 4 else None
    quiet_optuna()
    space = fake_space()
    config = StudyConfig(
        os.environ.get("ARCHGEN_FAKE_STUDY", "fake"),
        n,
        heartbeat_interval=0.3,
        grace_period=2.0,
    )
    study = open_study(open_storage(url), config, space.homogeneous_candidates())
    run_worker(study, space, fake_evaluator(sleep, fail_label), config)


if __name__ == "__main__":
    main()
