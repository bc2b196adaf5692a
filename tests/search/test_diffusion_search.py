"""``archgen search`` on masked-diffusion specs (issue 15 item 3): the diffusion-decode workload
(a decode run = its denoiser calls), the quality proxy a denoiser can use, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from archgen.errors import ArchgenError
from archgen.search_api import SearchOptions, plan_search, run_search
from tests.conftest import archgen

SPEC = """
model:
  name: tiny-dlm
  task: masked-diffusion-lm
  vocab_size: 65
  d_model: 16
  max_seq_len: 64
  layers:
    - repeat: 2
      layers:
        - token_mixer: {kind: attention, heads: 2}
          channel_mixer: {kind: swiglu}
search:
  budget: 100%
  trials: 4
  workload: {seq_len: 64, backend: "null", threads: 1, repeats: 3, phase: diffusion-decode,
             decoder: "confidence{tokens=3,block=16}", gen_length: 32}
  quality: {fidelity: analytic}
  slots:
    - layers: all
      token_mixer:
        - {kind: attention, heads: 2}
        - {kind: dense, causal: false}
        - {kind: checkpoint_attention, heads: 2, segment_size: 8}
"""


def write(tmp_path: Path, edit: dict | None = None, model: dict | None = None) -> Path:
    doc = yaml.safe_load(SPEC)
    doc["search"]["workload"].update(edit or {})
    doc["model"].update(model or {})
    path = tmp_path / "dlm.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_diffusion_decode_workload_counts_the_decoders_denoiser_calls(tmp_path: Path) -> None:
    plan = plan_search(write(tmp_path), SearchOptions(out=tmp_path / "o"))
    w = plan.workload
    # confidence, 3 tokens per call, blocks of 16: ceil(16 / 3) = 6 calls per block, 2 blocks
    assert (w.phase, w.gen_length, w.calls) == ("diffusion-decode", 32, 12)
    assert w.decoder == "confidence{block=16,tokens=3}"
    assert "G32" in w.shape_key() and "x12" in w.shape_key()  # cached block rows keyed by it
    # threshold / localleap: calls from the given calls per token, never below one per block
    plan = plan_search(
        write(tmp_path, {"decoder": "localleap{block=16}", "calls_per_token": 0.25}),
        SearchOptions(out=tmp_path / "o"),
    )
    assert plan.workload.calls == 8
    # the default generation is half the sequence, with LocalLeap's defaults (blocks of 32)
    plan = plan_search(
        write(tmp_path, {"decoder": None, "gen_length": None, "calls_per_token": 0.5}),
        SearchOptions(out=tmp_path / "o"),
    )
    assert (plan.workload.gen_length, plan.workload.calls) == (32, 16)
    assert plan.workload.decoder.startswith("localleap{block=32,tau=0.9,tau_relax=0.75")
    # causal-only choices are excluded with the reason, bidirectional ones kept
    assert [e.label for e in plan.space.excluded] == ["checkpoint_attention"] * 2
    assert "no bidirectional form" in plan.space.excluded[0].reason


def test_a_decode_run_costs_its_calls_times_one_denoiser_forward(tmp_path: Path) -> None:
    from archgen.backends.base import LowerOptions, get_backend
    from archgen.search.measure import Measurer

    plan = plan_search(write(tmp_path), SearchOptions(out=tmp_path / "o"))
    graph = plan.space.base
    run_s = Measurer(plan.workload).measure_graph(graph)
    # independently: the null backend's forward of the whole sequence, once
    options = LowerOptions(min_seq=1, opt_seq=64, max_seq=64, threads=1, decode_graph=False)
    forward_s = get_backend("null").lower(graph, options).measure(torch.zeros(1, 64)).median_s
    assert run_s == pytest.approx(12 * forward_s, rel=1e-9)


def test_search_of_a_masked_diffusion_spec_finishes_with_a_masked_diffusion_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARCHGEN_CACHE", str(tmp_path / "cache"))
    outcome = run_search(write(tmp_path), SearchOptions(out=tmp_path / "out"), log=lambda _: None)
    assert outcome.best_spec is not None
    best = yaml.safe_load(outcome.best_spec.read_text())
    assert best["model"]["task"] == "masked-diffusion-lm"
    kinds = {layer["token_mixer"]["kind"] for layer in best["model"]["layers"]}
    assert kinds <= {"attention", "dense"}
    assert outcome.report["workload"]["calls"] == 12
    assert outcome.report["best"]["within_budget"]


def test_capability_quality_trains_a_denoiser_with_the_masked_diffusion_objective(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from archgen.search.proxies import capability_quality
    from archgen.train.diffusion import MaskedDiffusion

    plan = plan_search(write(tmp_path), SearchOptions(out=tmp_path / "o", quality="capability"))
    assert plan.fidelity == "capability"

    class Seen(Exception):
        pass

    def first_step(self: MaskedDiffusion, model, batch):  # type: ignore[no-untyped-def]
        x0, eligible = denoising_example(batch)
        raise Seen(self.mask_token, bool(eligible.all()), int(x0.max()))

    from archgen.train.diffusion import denoising_example

    monkeypatch.setattr(MaskedDiffusion, "loss", first_step)
    with pytest.raises(Seen) as info:  # the first training step, then stop: the wiring is it
        capability_quality(plan.spec, quick=True)({}, plan.space.base)
    mask, everything_eligible, top = info.value.args
    # the model's last id is the mask; only the answers are masked (the SFT form); the task's
    # tokens stay below the mask token
    assert mask == 64 and not everything_eligible and top < 64


def test_a_masked_diffusion_search_defaults_to_capability_quality(tmp_path: Path) -> None:
    doc = yaml.safe_load(SPEC)
    del doc["search"]["quality"]
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert plan_search(path, SearchOptions(out=tmp_path / "o")).fidelity == "capability"


@pytest.mark.parametrize(
    ("edit", "options", "message"),
    [
        ({}, {"quality": "blockwise"}, "quality fidelity 'blockwise' does not support"),
        ({"phase": "decode", "decoder": None, "gen_length": None}, {},
         "phase 'decode' times one causal step"),
        ({"phase": "prefill"}, {}, "decoder applies to phase diffusion-decode only"),
        ({"decoder": "localleap"}, {}, "give search.workload.calls_per_token"),
        ({"decoder": "threshold{block=16}", "calls_per_token": 0.01}, {},
         "below one call per block of 16"),
        ({"calls_per_token": 0.5}, {}, "the confidence decoder's calls are fixed"),
        ({"gen_length": 24}, {}, "block 16 does not divide the generation length 24"),
        ({"gen_length": 64}, {}, "leaves no prompt in seq_len 64"),
        ({"decoder": "localleap{tau_relax=0.95}", "calls_per_token": 0.5}, {},
         "tau_relax (0.95) must be <= tau"),
        ({"decoder": "beam"}, {}, "beam"),
    ],
)  # fmt: skip
def test_bad_diffusion_search_inputs_are_refused_before_measuring(
    tmp_path: Path, edit: dict, options: dict, message: str
) -> None:
    with pytest.raises(ArchgenError) as info:
        plan_search(write(tmp_path, edit), SearchOptions(out=tmp_path / "o", **options))
    assert message in str(info.value)


def test_capability_quality_needs_room_for_the_task_besides_the_mask_token(
    tmp_path: Path,
) -> None:
    # associative recall uses 64 ids; with vocab 64 the last one (63) is the mask token
    path = write(tmp_path, model={"vocab_size": 64})
    with pytest.raises(ArchgenError) as info:
        plan_search(path, SearchOptions(out=tmp_path / "o", quality="capability"))
    assert "uses 64 token ids; the model has 63 besides its mask token" in str(info.value)
    assert plan_search(path, SearchOptions(out=tmp_path / "o")).fidelity == "analytic"


def test_diffusion_decode_on_a_causal_lm_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, model={"task": "causal-lm", "vocab_size": 64})
    doc = yaml.safe_load(path.read_text())
    doc["search"]["slots"][0]["token_mixer"] = [
        {"kind": "attention", "heads": 2}, {"kind": "swa", "heads": 2, "window": 8}
    ]  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    r = archgen("search", str(path), "-o", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    assert "diffusion-decode applies to masked-diffusion-lm models" in r.stderr
    assert "Traceback" not in r.stderr
