from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# the smallest useful causal LM, for tests about commands and files rather than numerics
TINY_LM = """\
model:
  name: tiny
  vocab_size: 256
  d_model: 16
  max_seq_len: 32
  layers:
    - token_mixer: {kind: attention, heads: 2}
      channel_mixer: {kind: swiglu}
"""


def archgen(
    *args: str, cwd: Path = ROOT, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``archgen ARGS`` as a user runs it: a subprocess with a bare environment (no inherited
    variables unless ``env`` gives them) and wide lines, so messages do not wrap mid-word."""
    return subprocess.run(
        [sys.executable, "-m", "archgen.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(env) if env is not None else {"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        timeout=600,
    )


@pytest.fixture
def rng_seed(request: pytest.FixtureRequest) -> int:
    """A fresh seed per test, printed on failure so a bad draw can be replayed."""
    import random

    seed = random.randrange(2**31)
    request.node.user_properties.append(("seed", seed))
    return seed


@pytest.fixture
def count_steps(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts AdamW optimizer steps taken anywhere (independently of what the code reports)."""
    import torch

    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def step(self: torch.optim.Optimizer, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return calls


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist (`-n 2`, the default) two workers share the machine's cores: one torch
    # thread each, or their OpenMP pools oversubscribe the cores and spin against each other.
    # Subprocesses (`archgen(...)`) keep torch's own default.
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        help="rewrite the golden printed-IR files of tests/passes instead of comparing",
    )
