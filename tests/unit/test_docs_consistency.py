"""The documents and the code name the same settings, CLI commands and actions, in both directions.

A setting, command or action the docs name but the code lacks sends a reader to something that is not there;
one the code has but no document names is a feature nobody can find.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from lifecycle.actions import registry
from lifecycle.cli import build_parser
from lifecycle.settings import app_setting_names
from lifecycle.settings_reference import DOC, render
from tests.conftest import ROOT

# Variables that tune the test suite, not the service; docs/reliability.md names them for whoever reruns it.
TEST_KNOBS = frozenset({"LIFECYCLE_FUZZ_EXAMPLES", "LIFECYCLE_RELIABILITY_SEED"})


def _documents() -> dict[Path, str]:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return {path: path.read_text(encoding="utf-8") for path in paths}


def _all_text() -> str:
    return "\n".join(_documents().values())


def test_the_settings_reference_is_what_the_settings_model_renders() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), "run: python -m lifecycle.settings_reference"


def test_every_setting_the_docs_name_exists() -> None:
    known = app_setting_names() | TEST_KNOBS
    for path, text in _documents().items():
        # A name ending in "_" is a family ("LIFECYCLE_GRAPH_*"), written as a prefix.
        named = {n for n in re.findall(r"LIFECYCLE_[A-Z0-9_]*[A-Z0-9]\b", text)}
        unknown = sorted(n for n in named if n not in known and not any(k.startswith(n + "_") for k in known))
        assert not unknown, f"{path.relative_to(ROOT)} names settings the service does not read: {unknown}"


def test_every_setting_is_documented() -> None:
    text = _all_text()
    missing = sorted(name for name in app_setting_names() if name not in text)
    assert not missing, f"no document names {missing}"


def _commands(parser: argparse.ArgumentParser, prefix: str = "lifecycle") -> list[str]:
    found = []
    for action in parser._actions:  # argparse keeps its sub-commands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(f"{prefix} {name}")
                found += _commands(sub, f"{prefix} {name}")
    return found


def test_every_cli_command_is_documented() -> None:
    text = _all_text()
    missing = [command for command in _commands(build_parser()) if command not in text]
    assert not missing, f"no document shows {missing}"


def test_every_cli_command_the_docs_name_exists() -> None:
    top_level = {command.split()[1] for command in _commands(build_parser())}
    for path, text in _documents().items():
        # Commands as a reader would type them: at the start of a code line or inside backticks.
        named = set(re.findall(r"(?:^|`|\$ )lifecycle ([a-z][a-z-]+)", text, flags=re.MULTILINE))
        unknown = sorted(named - top_level)
        assert not unknown, f"{path.relative_to(ROOT)} shows commands that do not exist: {unknown}"


def test_every_action_is_documented() -> None:
    text = _all_text()
    missing = sorted(name for name in registry() if name not in text)
    assert not missing, f"no document names the actions {missing}"


def test_the_readmes_first_screen_is_short_and_leads_into_the_docs() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    first_link = next(i for i, line in enumerate(lines, start=1) if "](docs/" in line)
    assert first_link <= 40, f"the first link into docs/ is on line {first_link}"
    assert any(line.startswith("make run") for line in lines[:first_link])
    assert any(line.startswith("make test") for line in lines[:first_link])
