"""The compile backend (torch.compile, Inductor C++) against the conformance suite.

Kept small: torch.compile takes tens of seconds per graph on the 2 shared cores, so examples are
shrunk to one copy of each repeat group and compiled once with dynamic shapes for both lengths.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch

from archgen.backends.base import Artifact
from tests.backends.conformance import (
    TINY_SPEC,
    BackendConformance,
    scale_block_parameter,
    tiny_graph,
)


class TestCompile(BackendConformance):
    backend_name = "compile"
    shrink_examples = True
    extra_options: ClassVar[dict[str, object]] = {"compile_dynamic": True}

    def inject_fault(self, artifact: Artifact, block: str, tmp_path: Path) -> Artifact:
        # Parameters are inputs of the compiled graph (not frozen constants): an in-place change
        # is what the next call computes with.
        scale_block_parameter(artifact.model, block)  # type: ignore[attr-defined]
        return artifact

    def test_first_call_compile_time_is_recorded_per_shape(self, tmp_path: Path) -> None:
        graph = tiny_graph(tmp_path)
        artifact = self.lower(graph)
        artifact.run(torch.zeros(1, 6, dtype=torch.long))
        assert list(artifact.meta.extra["compile_s"]) == ["1x6"]
        assert artifact.meta.extra["compile_s"]["1x6"] > 0


def test_more_artifacts_and_shapes_than_dynamos_default_cache(tmp_path: Path) -> None:
    """A search or benchmark lowers many models in one process; with dynamic=False each model
    and each length is one entry of the shared cache of BoundaryModule.forward (default 8)."""
    from archgen.backends.base import LowerOptions, get_backend

    for depth in (1, 2, 3):  # three different models
        graph = tiny_graph(tmp_path, TINY_SPEC.replace("repeat: 3", f"repeat: {depth}"))
        artifact = get_backend("compile").lower(graph, LowerOptions(max_seq=64))
        for length in (3, 4, 5, 6):
            assert artifact.run(torch.zeros(1, length, dtype=torch.long)).shape[1] == length
        assert len(artifact.meta.extra["compile_s"]) == 4


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    """Each test compiles its own graphs; stale caches of earlier tests would count against
    the recompile limit the backend turns into an error."""
    torch._dynamo.reset()
