"""Python API parity: every command line command is a thin layer over a documented library function."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

import toolkit
from toolkit.cli import Toolkit

README = (Path(__file__).resolve().parents[2] / "docs" / "usage.md").read_text(encoding="utf-8")

# command -> the function of `toolkit` it forwards to. A new command adds its line here.
COUNTERPARTS = {
    "analyze": "analyze",
    "summary": "summary",
    "plugins": "get_plugins",
    "plot": "plot",
    "report": "report",
    "quality": "quality",
    "rank": "rank",
    "metrics": "remeasure",  # toolkit.metrics is the metric chain's module
}


# CLI options spelt differently on the library side: the command line's --format, a list there.
RENAMED = {"plot": {"format": "formats"}}


def library_parameters(command: str) -> set[str]:
    """What the command's library counterpart accepts."""
    if command == "analyze":  # toolkit.analyze forwards to pipeline.analyze and AnalysisConfig
        from toolkit.config import AnalysisConfig
        from toolkit.pipeline import analyze

        return set(inspect.signature(analyze).parameters) | {
            f.name for f in dataclasses.fields(AnalysisConfig)}
    return set(inspect.signature(getattr(toolkit, COUNTERPARTS[command])).parameters)


def commands() -> list[str]:
    return sorted(name for name, _ in inspect.getmembers(Toolkit, inspect.isfunction)
                  if not name.startswith("_"))


def test_every_command_has_a_library_counterpart():
    assert commands() == sorted(COUNTERPARTS), "map each command to its toolkit function in COUNTERPARTS"


@pytest.mark.parametrize("command", commands())
def test_the_counterpart_is_public_and_documented(command):
    name = COUNTERPARTS[command]
    function = getattr(toolkit, name)
    assert name in toolkit.__all__ and inspect.getdoc(function)
    assert f"| `{command}` | `toolkit.{name}(" in README, "list it in the Python API table of docs/usage.md"


@pytest.mark.parametrize("command", commands())
def test_every_option_of_a_command_is_a_parameter_of_its_counterpart(command):
    options = set(inspect.signature(getattr(Toolkit, command)).parameters) - {"self"}
    options = {RENAMED.get(command, {}).get(name, name) for name in options}
    missing = options - library_parameters(command)
    assert not missing, f"{command} options without a library parameter: {sorted(missing)}"


def test_the_global_plugin_options_are_those_of_plugins_configure():
    from toolkit.plugins import configure

    from toolkit.cli import GLOBAL_OPTIONS

    options = set(inspect.signature(Toolkit.__init__).parameters) - {"self"}
    assert options == set(GLOBAL_OPTIONS)
    options -= {"limits"}  # toolkit.limits.raise_limits, not a plugin option
    assert {o.replace("disable_plugins", "disable") for o in options} <= set(
        inspect.signature(configure).parameters)
