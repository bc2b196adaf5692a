"""The eager model built from the IR: names, seeding, safetensors, decoding."""

from __future__ import annotations

import pytest
import torch

from archgen import api
from archgen.backends.torch_model import ArchModel, build_model
from archgen.backends.weights import load_weights, save_weights
from archgen.errors import ArchgenError
from archgen.ir.slicing import block_io, subgraph
from tests.conftest import EXAMPLES
from tests.tolerances import assert_close

TRANSFORMER = next(p for p in EXAMPLES if p.stem == "transformer")


def test_parameter_names_are_readable_and_follow_node_names() -> None:
    graph = api.compile_spec(TRANSFORMER)
    names = {n for n, _ in build_model(graph).named_parameters()}
    assert "embedding.weight" in names
    assert "layers.3.token_mixer.q_proj.weight" in names
    assert "layers.0.channel_mixer.gate_proj.weight" in names
    assert "final_norm.weight" in names
    assert "lm_head.weight" not in names  # tied to the embedding


def test_initialisation_is_deterministic_per_seed() -> None:
    graph = api.compile_spec(TRANSFORMER)
    a, b, c = build_model(graph, seed=3), build_model(graph, seed=3), build_model(graph, seed=4)
    for (n, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), n
    assert not torch.equal(a.state_dict()["embedding.weight"], c.state_dict()["embedding.weight"])


def test_safetensors_round_trip(tmp_path) -> None:
    graph = api.compile_spec(TRANSFORMER)
    a, b = build_model(graph, seed=1), build_model(graph, seed=2)
    save_weights(a, tmp_path / "w.safetensors", {"note": "x"})
    load_weights(b, tmp_path / "w.safetensors")
    tokens = torch.randint(0, 256, (2, 13))
    assert torch.equal(a(tokens), b(tokens))


def test_loading_weights_of_another_model_is_a_clear_error(tmp_path) -> None:
    spec = api.load_spec(TRANSFORMER)
    other = spec.model_copy(update={"model": spec.model.model_copy(update={"d_model": 128})})
    save_weights(build_model(api.compile_spec(other)), tmp_path / "w.safetensors")
    with pytest.raises(ArchgenError, match="do not match the model"):
        load_weights(build_model(api.compile_spec(spec)), tmp_path / "w.safetensors")


def test_decode_steps_reproduce_full_forward_logits() -> None:
    graph = api.compile_spec(TRANSFORMER)
    model = build_model(graph, dtype=torch.float64).eval()
    tokens = torch.randint(0, 256, (2, 21))
    full = model(tokens)
    state = model.init_state(2)
    steps = []
    for t in range(tokens.shape[1]):
        logits, state = model.step(tokens[:, t], state, torch.tensor(t))
        steps.append(logits)
    assert_close(torch.stack(steps, dim=1), full)


def test_capture_returns_block_outputs() -> None:
    graph = api.compile_spec(TRANSFORMER)
    model = build_model(graph)
    names = tuple(graph.block_outputs().values())
    logits, values = model.run(torch.randint(0, 256, (1, 5)), capture=names)
    assert list(values) == list(names) and all(v.shape == (1, 5, 256) for v in values.values())
    assert logits.shape == (1, 5, 256)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_a_block_alone_is_the_whole_models_block(path) -> None:
    # One interpreter for models and blocks: a block cut out of the graph computes what the
    # block computes inside the whole model, from parameters named as in the whole model.
    graph = api.compile_spec(path)
    block = graph.blocks()[len(graph.blocks()) // 2]
    io = block_io(graph, block)
    whole = build_model(graph, seed=1, dtype=torch.float64).eval()
    tokens = torch.randint(0, graph.model.vocab_size, (2, 9))
    _, values = whole.run(tokens, capture=(io.entering, io.leaving))
    alone = ArchModel(subgraph(graph, block), dtype=torch.float64).eval()
    theirs = whole.state_dict()
    assert set(alone.state_dict()) == {k for k in theirs if k.startswith(block + ".")}
    alone.load_state_dict({k: theirs[k] for k in alone.state_dict()})
    torch.testing.assert_close(alone(values[io.entering]), values[io.leaving])


def test_a_checkpoint_loads_after_a_rename(rng_seed: int) -> None:
    # node identity is separate from weight names: the rewritten model loads the old weights
    from archgen.ir.edit import rename

    graph = api.compile_spec(next(p for p in EXAMPLES if p.stem == "transformer"))
    before = build_model(graph, seed=rng_seed, dtype=torch.float64).eval()
    renamed = rename(rename(graph, "layers.0.token_mixer", "mixer0"), "final_norm", "norm_out")
    after = build_model(renamed, dtype=torch.float64).eval()
    after.load_state_dict(before.state_dict(), strict=True)
    tokens = torch.randint(0, graph.model.vocab_size, (2, 11))
    with torch.no_grad():
        assert_close(after(tokens), before(tokens))
        state = after.init_state(2)
        logits, _ = after.step(tokens[:, 0], state, torch.tensor(0))
        assert_close(logits, before(tokens[:, :1])[:, 0])
