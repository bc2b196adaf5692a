"""CLI conventions (issue 16 item 12): one spelling of -o/--out on every command that writes,
fixed choices listed in --help, -h, --version, and a fast doctor by default."""

from __future__ import annotations

from enum import Enum
from typing import Any, get_args

import pytest
import typer
from typer.testing import CliRunner

from archgen.cli import backend_cmds as b
from archgen.cli.main import QualityChoice, WinnerFormat, app

COMMAND: Any = typer.main.get_command(app)  # typer's own click: duck-typed here
WRITERS = ("build", "export", "convert", "train", "distill", "search", "schema", "import")


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "-h"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


@pytest.mark.parametrize("command", WRITERS)
def test_every_command_that_writes_takes_o_out_and_output(command: str) -> None:
    output = next(p for p in COMMAND.commands[command].params if p.name == "output")
    assert {"-o", "--out", "--output"} <= set(output.opts)


@pytest.mark.parametrize(
    ("command", "flag", "choices"),
    [
        ("export", "--format", b.FormatChoice),
        ("export", "--dtype", b.DTypeChoice),
        ("export", "--provider", b.ProviderChoice),
        ("validate", "--backend", b.BackendChoice),
        ("validate", "--dtype", b.DTypeChoice),
        ("validate", "--device", b.DeviceChoice),
        ("validate", "--provider", b.ProviderChoice),
        ("search", "--quality", QualityChoice),
        ("search", "--export", WinnerFormat),
    ],
)
def test_fixed_choices_are_listed_in_help_and_others_refused(
    command: str, flag: str, choices: type[Enum]
) -> None:
    listed = "<" + "|".join(c.value for c in choices) + ">"
    assert listed in _help(command), (flag, listed)
    required = ["-o", "x"] if command == "export" else []
    refused = CliRunner().invoke(app, [command, "s.yaml", *required, flag, "nope"])
    assert refused.exit_code == 2 and "'nope' is not one of" in refused.output


def test_the_choices_are_the_apis() -> None:
    from archgen.backends.base import BACKENDS, Device, DType, Provider
    from archgen.export import FORMAT_BACKEND
    from archgen.search_api import FIDELITIES

    def values(enum: type) -> list[str]:
        return [m.value for m in enum]

    assert values(b.DTypeChoice) == list(get_args(DType))
    assert values(b.ProviderChoice) == list(get_args(Provider))
    assert values(b.DeviceChoice) == list(get_args(Device))
    assert values(b.FormatChoice) == [*FORMAT_BACKEND, "hf"]
    assert set(values(b.BackendChoice)) <= set(BACKENDS)
    assert values(WinnerFormat) == list(FORMAT_BACKEND)
    assert values(QualityChoice) == list(FIDELITIES)


@pytest.mark.parametrize("command", [[], *([c] for c in sorted(COMMAND.commands))])
def test_h_is_help(command: list[str]) -> None:
    short = CliRunner().invoke(app, [*command, "-h"])
    assert short.exit_code == 0 and "Usage:" in short.output
    assert short.output == CliRunner().invoke(app, [*command, "--help"]).output


def test_version() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"archgen {version('archgen')}"


def test_search_help_shows_its_default_folder() -> None:
    assert "(default: runs/search-NAME, NAME the spec's model.name)" in _help("search")


def test_doctor_is_quick_unless_deep(monkeypatch, tmp_path) -> None:
    from archgen import export

    asked: list[bool] = []

    def doctor(spec: object, *, deep: bool) -> export.DoctorReport:
        asked.append(deep)
        return export.DoctorReport([], {})

    monkeypatch.setattr(export, "doctor", doctor)
    spec = str(tmp_path / "s.yaml")
    for args in ([], ["--deep"], ["--quick"]):
        assert CliRunner().invoke(app, ["doctor", spec, *args]).exit_code == 0
    assert asked == [False, True, False]
