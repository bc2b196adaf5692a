"""The search winner with trained weights (search/winner.py): assembled from the cached teacher
and blockwise blocks, finalised end to end, written as OUT/best/ that generate and export take.

Tiny: a 2-layer d=16 byte model, a 10-step teacher, 4-step block jobs, 3 finalisation steps."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from archgen import api
from archgen.backends.torch_model import build_model
from archgen.backends.weights import load_weights
from archgen.search.proxies import BlockwiseSetup, alternatives, blockwise_quality, train_teacher
from archgen.search.space import Choice, SearchSpace
from archgen.search.winner import Winner, assemble, build_winner, export_winner
from archgen.spec.loader import load_spec
from archgen.spec.search_space import search_proposals
from archgen.train.blockwise import block_weights
from tests.conftest import ROOT

SPEC = """
model:
  name: tiny-winner
  vocab_size: 256
  d_model: 16
  max_seq_len: 64
  layers:
    - repeat: 2
      layers:
        - token_mixer: {kind: attention, heads: 2}
          channel_mixer: {kind: swiglu}
data: {kind: text, paths: [CORPUS]}
train: {batch_size: 4, seq_len: 32, lr: 0.01, warmup_steps: 2, eval_batches: 2, seed: 0}
search:
  budget: 1s
  workload: {seq_len: 32, backend: "null", threads: 1, repeats: 3}
  quality: {fidelity: blockwise, teacher_steps: 10, distill_steps: 4}
  slots:
    - layers: all
      token_mixer:
        - {kind: attention, heads: 2}
        - {kind: swa, heads: 2, window: 4}
"""
SWAPPED = "layers.0.token_mixer"
CANDIDATE = {SWAPPED: "swa", "layers.1.token_mixer": "attention"}
quiet = lambda _: None  # noqa: E731


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    """The spec, its search space and a cache holding the teacher and every block job."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("winner")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(25):
        lines = [f"def f{i}_{j}(x):\n    return x * {j} + {i}  # line {j}\n" for j in range(40)]
        (corpus / f"m{i}.py").write_text("".join(lines))
    (root / "spec.yaml").write_text(SPEC.replace("CORPUS", str(corpus)))
    spec = load_spec(root / "spec.yaml")
    proposals, _ = search_proposals(spec)
    space = SearchSpace.build(
        api.compile_spec(spec),
        {n: [Choice(label, op) for label, op in choices] for n, choices in proposals.items()},
    )
    cache = root / "cache"
    blockwise_quality(spec, space, cache, False, quiet)  # what the search's trials did
    yield spec, space, cache, root
    torch.set_num_threads(before)


def test_assembly_takes_unchanged_nodes_from_the_teacher_and_swapped_blocks_from_the_cache(
    setup, count_steps
) -> None:
    spec, space, cache, _ = setup
    setup_ = BlockwiseSetup.of(spec, quick=False)
    teacher, _, prepared = train_teacher(spec, setup_.teacher_steps, cache, quiet)
    config = setup_.block_config(prepared.config)
    trained = block_weights(teacher, alternatives(space), prepared.data, config,
                            cache_dir=cache / "blockwise", log=quiet)  # fmt: skip
    assert count_steps["n"] == 0  # teacher and every block came from the cache
    graph = space.graph_for(CANDIDATE)
    block = trained[SWAPPED, "swa"]
    model, assembly = assemble(teacher, graph, {SWAPPED: block})
    mine, theirs = model.state_dict(), teacher.state_dict()
    assert assembly.not_carried == ()
    block0 = {n.name for n in graph.nodes if n.block == "layers.0" and n.op.params() > 0}
    assert set(assembly.from_blockwise) == block0
    assert "layers.1.token_mixer" in assembly.from_teacher and "embedding" in assembly.from_teacher
    for name, tensor in mine.items():
        if name.startswith("layers.0."):
            assert torch.equal(tensor, block[name]), name
        else:
            assert torch.equal(tensor, theirs[name]), name
    # the cached block was trained: its swa projections moved away from the teacher's attention
    q = "layers.0.token_mixer.q_proj.weight"
    assert q in block and not torch.equal(block[q], theirs[q])


def test_best_folder_is_finalised_reused_and_accepted_by_generate_and_export(
    setup, count_steps, tmp_path
) -> None:
    spec, space, cache, _ = setup
    out = tmp_path / "out"
    graph = space.graph_for(CANDIDATE)
    log: list[str] = []
    winner = build_winner(spec, graph, CANDIDATE, space, cache, out, finalize_steps=3,
                          quick=False, log=log.append)  # fmt: skip
    best = out / "best"
    assert winner.folder == best and count_steps["n"] == 3  # only the finalisation trained
    assert {p.name for p in best.iterdir()} == {"weights.safetensors", "spec.yaml",
        "manifest.json", "config.json", "metrics.jsonl", "loss.png"}  # fmt: skip
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging left
    for v in (winner.teacher, winner.assembled, winner.finalized):
        assert v is not None and v.bpb is not None and 0 < v.bpb < 9
    assert winner.finalized != winner.assembled
    manifest = json.loads((best / "manifest.json").read_text())
    assert manifest["command"] == "search" and manifest["spec_hash"] == api.spec_hash(
        api.load_spec(best / "spec.yaml"))  # fmt: skip
    assert Winner.from_json(manifest["winner"]) == winner
    # validate (and export) take the folder as --weights
    from archgen.export import validate

    assert validate(best / "spec.yaml", backend="eager", weights=best).report.passed
    assert json.loads(json.dumps(winner.to_json())) == winner.to_json()

    # finalisation changed the assembled weights
    teacher, _, _ = train_teacher(spec, 10, cache, quiet)
    assembled, _ = assemble(teacher, graph, {SWAPPED: _block(spec, space, cache)})
    final = build_model(api.compile_spec(best / "spec.yaml"))
    load_weights(final, best / "weights.safetensors")
    moved = [k for k, v in final.state_dict().items()
             if not torch.equal(v, assembled.state_dict()[k])]  # fmt: skip
    assert len(moved) > len(final.state_dict()) // 2

    # a rerun with the same winner keeps best/; another finalisation length rebuilds it
    count_steps["n"] = 0
    again = build_winner(spec, graph, CANDIDATE, space, cache, out, finalize_steps=3,
                         quick=False, log=quiet)  # fmt: skip
    assert again.reused and count_steps["n"] == 0 and again.finalized == winner.finalized
    raw = build_winner(spec, graph, CANDIDATE, space, cache, out, finalize_steps=0,
                       quick=False, log=quiet)  # fmt: skip
    assert raw.finalized is None and count_steps["n"] == 0
    load_weights(final, best / "weights.safetensors")
    for k, v in final.state_dict().items():
        assert torch.equal(v, assembled.state_dict()[k]), k


def _block(spec, space, cache):
    setup_ = BlockwiseSetup.of(spec, quick=False)
    teacher, _, prepared = train_teacher(spec, setup_.teacher_steps, cache, quiet)
    jobs = {SWAPPED: {"swa": space.slots[0].choice("swa").op}}
    trained = block_weights(teacher, jobs, prepared.data, setup_.block_config(prepared.config),
                            cache_dir=cache / "blockwise", log=quiet)  # fmt: skip
    return trained[SWAPPED, "swa"]


def test_generate_and_onnx_export_use_the_winners_weights(setup, tmp_path) -> None:
    import onnxruntime as ort

    spec, space, cache, _ = setup
    out = tmp_path / "out"
    graph = space.graph_for(CANDIDATE)
    build_winner(spec, graph, CANDIDATE, space, cache, out, finalize_steps=2, quick=False,
                 log=quiet)  # fmt: skip
    best = out / "best"

    result = subprocess.run(
        [sys.executable, "-m", "archgen.cli.main", "generate", str(best / "spec.yaml"),
         "--weights", str(best), "--prompt", "def f", "--max-new-tokens", "12",
         "--temperature", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = result.stdout.removesuffix("\n")  # a 10-step teacher writes mostly spaces: still text
    assert text.startswith("def f") and len(text) > len("def f") and "12 tokens" in result.stderr
    assert "randomly initialised" not in result.stderr

    exported = export_winner(best, tmp_path / "export-onnx", fmt="onnx")
    assert exported.report.passed
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(exported.out_dir / "model.onnx"))
    feed = {"input_ids": tokens.numpy().astype(np.int64)}
    onnx_logits = torch.from_numpy(session.run([graph.outputs[0]], feed)[0])

    trained = build_model(api.compile_spec(best / "spec.yaml")).eval()
    load_weights(trained, best / "weights.safetensors")
    seeded = build_model(api.compile_spec(best / "spec.yaml"), seed=0).eval()  # export's default
    with torch.no_grad():
        want, random_init = trained(tokens), seeded(tokens)
    torch.testing.assert_close(onnx_logits, want, rtol=1e-4, atol=1e-4)
    assert (onnx_logits - random_init).abs().max() > 0.1


def test_finalist_check_distils_graphs_without_writing_specs(setup, count_steps) -> None:
    from archgen.search.proxies import finalist_check

    spec, space, cache, _ = setup
    other = {SWAPPED: "swa", "layers.1.token_mixer": "swa"}
    result = finalist_check(spec, [(CANDIDATE, -0.1), (other, -0.2)], space, cache, 2, quiet)
    assert count_steps["n"] == 2 * 2  # the cached teacher, two finalists of two steps
    assert [r["params"] for r in result["finalists"]] == [CANDIDATE, other]
    assert all(r["e2e_loss"] > 0 for r in result["finalists"])
    assert result["spearman_cheap_vs_e2e"] is None  # fewer than three finalists
