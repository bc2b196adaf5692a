"""``archgen search`` options that used to be accepted and then ignored or failed late
(issue 16): each is refused in :func:`plan_search`, before anything is measured or trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from archgen.errors import ArchgenError
from archgen.search.budget import Budget, parse_budget
from archgen.search_api import SearchOptions, plan_search
from tests.search.test_search_cli import SPEC


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(SPEC)
    return path


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quality": "garbage"}, "unknown quality fidelity 'garbage'"),
        ({"quality": ""}, "unknown quality fidelity ''"),
        ({"budget": ""}, "cannot read the latency budget ''"),
        ({"budget": "1e400ms"}, "'1e400ms' is too large to be a number"),
        ({"export": "garbage"}, "unknown --export format 'garbage'"),
        ({"out": Path("/proc/x")}, "cannot write to /proc/x"),
    ],
)
def test_bad_option_is_refused_before_the_search(
    spec: Path, tmp_path: Path, options: dict, message: str
) -> None:
    options = {"out": tmp_path / "out", **options}
    with pytest.raises(ArchgenError) as info:
        plan_search(spec, SearchOptions(**options))
    assert message in str(info.value)


def test_zero_seed_and_known_export_are_kept(spec: Path, tmp_path: Path) -> None:
    plan = plan_search(spec, SearchOptions(out=tmp_path / "out", seed=0, export="torch"))
    assert plan.seed == 0 and plan.export == "torch"


def test_budget_parsing_rejects_infinity() -> None:
    assert parse_budget("10ms") == pytest.approx(0.01)
    with pytest.raises(ArchgenError, match="too large"):
        Budget.parse("1e400 s")
