"""The conformance suite every backend passes: subclass :class:`BackendConformance`, name the
backend, and say how to inject a fault into one block of a lowered artifact.

What it checks, for each backend:

* availability is a ``(bool, reason)`` pair, and lowering on an unavailable machine is a clear
  :class:`~archgen.errors.UnavailableError`;
* every example spec lowers and matches the eager float64 reference within the (backend, dtype)
  tolerance at two sequence lengths (examples whose mixers do not import yet are strict xfails);
* the meta names an implementation for every node and no silent fallback;
* ``save`` -> ``load`` reproduces the outputs exactly;
* an unsupported node kind and an unsupported dtype raise :class:`UnsupportedError` naming the
  node and the reason;
* a fault injected into ``layers.2`` of the artifact (not the reference) is reported by
  validation as exactly that block, with every earlier block passing.

Specs built inline are tiny (d_model 32, three layers) so the suite stays fast on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from archgen import api
from archgen.backends.base import (
    Artifact,
    Backend,
    LowerOptions,
    UnsupportedError,
    get_backend,
)
from archgen.backends.validate import tolerance_for, validate
from archgen.ir.graph import Graph
from archgen.ir.ops import Op, Role
from archgen.mixers.registry import has_implementation
from archgen.spec.models import ArchSpec, RepeatSpec
from tests.conftest import EXAMPLES

FAULT_BLOCK = "layers.2"

TINY_SPEC = """\
model:
  name: tiny
  task: causal-lm
  vocab_size: 64
  d_model: 32
  max_seq_len: 64
  layers:
    - repeat: 3
      layers:
        - token_mixer: {kind: attention, heads: 4, kv_heads: 2}
          channel_mixer: {kind: swiglu, hidden: 64}
"""


def tiny_graph(tmp_path: Path, text: str = TINY_SPEC) -> Graph:
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return api.compile_spec(path)


def missing_mixers(spec_path: Path) -> list[str]:
    """Mixer kinds of a spec whose torch implementation does not import (yet)."""
    graph = api.compile_spec(spec_path)
    roles = (Role.TOKEN_MIXER, Role.CHANNEL_MIXER)
    kinds = {type(n.op): n.op.kind for n in graph.nodes if n.op.role in roles}
    return sorted(kind for cls, kind in kinds.items() if not has_implementation(cls)[0])


def example_params(known_gaps: dict[str, str] | None = None) -> list[object]:
    """Every example. Those whose mixers are not implemented yet, or that use a mixer kind in
    ``known_gaps`` (a backend's known limitation: kind -> reason), are strict xfails: the day
    the gap closes the test passes, fails as XPASS, and the mark must go."""
    params = []
    for path in EXAMPLES:
        reasons = []
        missing = missing_mixers(path)
        if missing:
            reasons.append(f"mixers not implemented yet: {missing}")
        kinds = {n.op.kind for n in api.compile_spec(path).nodes}
        reasons += [f"{kind}: {why}" for kind, why in (known_gaps or {}).items() if kind in kinds]
        # raises=: only the backend's clear refusal counts as the expected failure
        xfail = pytest.mark.xfail(strict=True, raises=UnsupportedError, reason="; ".join(reasons))
        marks = [xfail] if reasons else []
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


def shrink(spec: ArchSpec) -> ArchSpec:
    """The spec with every ``repeat`` group once: same mixer kinds and attributes, fewer layers
    (for backends whose lowering time grows with the graph, like torch.compile)."""
    layers = [
        item.model_copy(update={"repeat": 1}) if isinstance(item, RepeatSpec) else item
        for item in spec.model.layers
    ]
    return spec.model_copy(update={"model": spec.model.model_copy(update={"layers": layers})})


@dataclass(frozen=True)
class Mystery(Op):
    """A node kind no backend knows (deliberately not registered)."""

    kind: ClassVar[str] = "mystery"
    role: ClassVar[Role] = Role.TOKEN_MIXER
    d_model: int = 32


def with_mystery_node(graph: Graph, name: str) -> Graph:
    nodes = tuple(
        replace(n, op=Mystery(d_model=graph.model.d_model)) if n.name == name else n
        for n in graph.nodes
    )
    return graph.with_nodes(nodes)


def random_tokens(graph: Graph, batch: int, seq_len: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, graph.model.vocab_size, (batch, seq_len), generator=gen)


class BackendConformance:
    """Subclass, set ``backend_name`` (and options), implement :meth:`inject_fault`."""

    backend_name: ClassVar[str]
    dtype: ClassVar[str] = "float32"
    seq_lens: ClassVar[tuple[int, ...]] = (5, 17)  # odd, short: fast and off power-of-2 paths
    shrink_examples: ClassVar[bool] = False
    extra_options: ClassVar[dict[str, object]] = {}
    known_gaps: ClassVar[dict[str, str]] = {}  # mixer kind -> why this backend cannot lower it

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrise ``spec_path`` over the examples, with this backend's known gaps."""
        if "spec_path" in metafunc.fixturenames:
            metafunc.parametrize("spec_path", example_params(self.known_gaps))

    @property
    def backend(self) -> Backend:
        return get_backend(self.backend_name)

    def options(self, **overrides: object) -> LowerOptions:
        base = {"dtype": self.dtype, "max_seq": max(self.seq_lens), **self.extra_options}
        return LowerOptions(**{**base, **overrides})  # type: ignore[arg-type]

    def lower(self, graph: Graph, **overrides: object) -> Artifact:
        return self.backend.lower(graph, self.options(**overrides))

    def inject_fault(self, artifact: Artifact, block: str, tmp_path: Path) -> Artifact:
        """Return an artifact whose weights in ``block`` differ from the reference's."""
        raise NotImplementedError

    # -- availability --------------------------------------------------------------------------
    def test_availability_is_a_reasoned_pair(self) -> None:
        ok, reason = self.backend.is_available()
        assert isinstance(ok, bool) and isinstance(reason, str) and reason
        assert ok or "no " in reason or "not" in reason, reason

    # -- numerics on every example -------------------------------------------------------------
    def test_example_matches_reference(self, spec_path: Path, rng_seed: int) -> None:
        spec = api.load_spec(spec_path)
        graph = api.compile_spec(shrink(spec) if self.shrink_examples else spec)
        artifact = self.lower(graph)
        report = validate(artifact, seq_lens=self.seq_lens, seed=rng_seed)
        assert report.seq_lens == self.seq_lens and len(report.results) == len(
            report.boundaries
        ) * len(self.seq_lens)
        first = report.first_failure
        assert first is None, f"{first.name} at L={first.seq_len}: {first.failures}"
        assert report.tolerance == tolerance_for(self.backend_name, self.dtype)

    # -- meta ----------------------------------------------------------------------------------
    def test_meta_names_an_implementation_for_every_node(self, tmp_path: Path) -> None:
        graph = tiny_graph(tmp_path)
        artifact = self.lower(graph)
        assert artifact.meta.backend == self.backend_name
        assert set(artifact.meta.nodes) == {n.name for n in graph.nodes}
        assert all(impl.impl for impl in artifact.meta.nodes.values())
        assert artifact.meta.fallbacks() == {}
        assert artifact.meta.to_json()["options"]["dtype"] == self.dtype

    # -- save / load ---------------------------------------------------------------------------
    def test_save_load_round_trip(self, tmp_path: Path) -> None:
        graph = tiny_graph(tmp_path)
        artifact = self.lower(graph, seed=7)
        files = artifact.save(tmp_path / "saved")
        assert all((tmp_path / "saved" / f).is_file() for f in files)
        loaded = self.backend.load(tmp_path / "saved", graph, artifact.meta.options)
        tokens = random_tokens(graph, 2, 11, seed=3)
        assert torch.equal(loaded.run(tokens), artifact.run(tokens))

    # -- clear errors --------------------------------------------------------------------------
    def test_unsupported_node_is_a_clear_error(self, tmp_path: Path) -> None:
        graph = with_mystery_node(tiny_graph(tmp_path), "layers.1.token_mixer")
        with pytest.raises(UnsupportedError, match=r"layers\.1\.token_mixer: .*mystery"):
            self.lower(graph)

    def test_unsupported_dtype_is_a_clear_error(self, tmp_path: Path) -> None:
        unsupported = sorted({"float16", "bfloat16", "float64"} - self.backend.dtypes)
        if not unsupported:
            pytest.skip(f"{self.backend_name} supports every dtype")  # nothing to reject
        with pytest.raises(UnsupportedError, match=f"not {unsupported[0]}"):
            self.lower(tiny_graph(tmp_path), dtype=unsupported[0])

    # -- fault injection -----------------------------------------------------------------------
    def test_injected_fault_is_reported_at_its_block(self, tmp_path: Path, rng_seed: int) -> None:
        graph = tiny_graph(tmp_path)
        assert FAULT_BLOCK in graph.blocks() and graph.blocks().index(FAULT_BLOCK) > 0
        clean = self.lower(graph)
        assert validate(clean, seq_lens=(9,), seed=rng_seed).passed
        faulty = self.inject_fault(clean, FAULT_BLOCK, tmp_path)
        report = validate(faulty, seq_lens=(9,), seed=rng_seed)
        first = report.first_failure
        assert first is not None and first.name == FAULT_BLOCK, report.to_json()["first_failure"]
        earlier = graph.blocks()[: graph.blocks().index(FAULT_BLOCK)]
        assert all(r.passed for r in report.results if r.name in earlier)


def scale_block_parameter(model: torch.nn.Module, block: str, factor: float = 1.5) -> str:
    """Scale the first parameter under ``block`` in place; returns its name."""
    name, param = next((n, p) for n, p in model.named_parameters() if n.startswith(block + "."))
    with torch.no_grad():
        param.mul_(factor)
    return name
