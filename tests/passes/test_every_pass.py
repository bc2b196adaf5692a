"""Every pass on every example through the pass-testing helper, and the golden IR files."""

from __future__ import annotations

import pytest

from archgen.ir import print_graph
from archgen.passes import PASS_REGISTRY, parse_pipeline
from archgen.passes.base import GraphInvalid, PassError
from archgen.spec.expand import graph_from_spec
from archgen.spec.loader import load_spec
from tests.conftest import EXAMPLES
from tests.passes.passcheck import PASS_CASES, check_pass, golden_path

CASES = [case for cases in PASS_CASES.values() for case in cases]


def test_every_registered_pass_has_cases() -> None:
    assert set(PASS_CASES) == set(PASS_REGISTRY)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_pass_on_example(spec, case: str, rng_seed: int, request: pytest.FixtureRequest) -> None:
    (rewrite,) = parse_pipeline(case)
    try:
        after = check_pass(graph_from_spec(load_spec(spec)), rewrite, seed=rng_seed)
        text = print_graph(after) + "\n"
    except GraphInvalid as exc:  # a refusal is behaviour too: its reason is the golden text
        text = f"// {rewrite.describe()} refused: {exc}\n"
    except PassError as exc:
        # a rewrite that does not know the task (a causal mixer put into a masked-diffusion
        # LM) is caught by the verify after it: that refusal is the behaviour to pin
        if not isinstance(exc.__cause__, GraphInvalid):
            raise
        text = f"// {rewrite.describe()} refused by verify: {exc.__cause__}\n"
    path = golden_path(spec.stem, case)
    if request.config.getoption("--update-goldens"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"no golden file {path}: run pytest --update-goldens and review it"
    assert text == path.read_text(), f"{path} differs (pytest --update-goldens after review)"
