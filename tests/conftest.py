from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture
def rng_seed(request: pytest.FixtureRequest) -> int:
    """A fresh seed per test, printed on failure so a bad draw can be replayed."""
    import random

    seed = random.randrange(2**31)
    request.node.user_properties.append(("seed", seed))
    return seed


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        help="rewrite the golden printed-IR files of tests/passes instead of comparing",
    )
