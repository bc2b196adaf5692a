"""The pass-testing discipline (issue 12, item 9), one helper for every pass.

For a pass and a graph, :func:`check_pass` asserts that the result verifies (the pipeline runs
``verify`` after the user's passes), that a second run changes nothing (idempotence), and, for
an *exact* pass, that the rewritten model computes the same function as the original in float64
on fresh random tokens: the full forward and token-by-token decode (:func:`assert_same_function`).
Golden printed IR of every example before and after every case is compared with
``tests/passes/golden``; ``pytest --update-goldens`` rewrites those files (and only then).
"""

from __future__ import annotations

from pathlib import Path

import torch

from archgen.backends.torch_model import ArchModel, build_model
from archgen.ir.graph import Graph
from archgen.passes import InferShapes, Pass, Verify, full_pipeline, run_pipeline
from tests.tolerances import assert_close

GOLDEN = Path(__file__).parent / "golden"

# Every registered pass, with the option strings each is checked with on every example.
PASS_CASES: dict[str, tuple[str, ...]] = {
    "verify": ("verify",),
    "infer_shapes": ("infer_shapes",),
    "annotate_cost": ("annotate_cost{seq_len=64}",),
    "compress_segments": (
        "compress_segments{s=1}",
        "compress_segments{s=16,local=swa,window=64}",
        "compress_segments{s=8,local=mamba}",
    ),
    "replace_mixer": ("replace_mixer{layers=[1],kind=swa,window=32}",),
    "fuse_kernels": ("fuse_kernels",),
}


def check_pass(graph: Graph, rewrite: Pass, *, seed: int) -> Graph:
    """The checks of the module docstring; returns the rewritten, verified, costed graph."""
    typed = run_pipeline(graph, [Verify(), InferShapes()])
    once = rewrite.run(typed)
    twice = rewrite.run(once.graph)
    assert not twice.changed, f"{rewrite.describe()} is not idempotent: a second run changed it"
    assert twice.graph == once.graph, f"{rewrite.describe()} is not idempotent"
    after = run_pipeline(graph, full_pipeline([rewrite]))  # verify runs after the pass
    assert after == once.graph
    if rewrite.exact:
        assert_same_function(graph, after, seed=seed)
    return after


def assert_same_function(
    original: Graph, rewritten: Graph, *, seed: int, weights: ArchModel | None = None
) -> None:
    """``rewritten`` with ``original``'s weights (or ``weights``' state) computes what
    ``original`` does, forward and decode, in float64 on random tokens of an odd length."""
    gen = torch.Generator().manual_seed(seed)
    before = weights.double() if weights is not None else build_model(original, seed=seed)
    before = before.to(torch.float64).eval()
    after = build_model(rewritten, dtype=torch.float64).eval()
    after.load_state_dict(before.state_dict(), strict=True)
    n = 19  # odd; crosses segment boundaries of the small segment sizes tested
    tokens = torch.randint(0, original.model.vocab_size, (2, n), generator=gen)
    with torch.no_grad():
        want = before(tokens)
        assert_close(after(tokens), want, msg="forward after the pass")
        if original.model.task != "causal-lm":
            return  # a bidirectional denoiser has no token-by-token decode to compare
        state = after.init_state(2)
        steps = []
        for t in range(n):
            logits, state = after.step(tokens[:, t], state, torch.tensor(t))
            steps.append(logits)
    assert_close(torch.stack(steps, dim=1), want, msg="decode after the pass")


def golden_path(example: str, case: str) -> Path:
    slug = "".join(c if c.isalnum() or c in "=_" else "_" for c in case).strip("_")
    return GOLDEN / example / f"{slug}.txt"
