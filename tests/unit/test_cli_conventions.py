"""One CLI convention across every command: a purpose line and an example, help on every option, ``--json``
wherever data is printed, ``--user`` always a Halo id, ``--version``, ``--env-file`` and ``--mapping``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle.cli import build_parser, main
from lifecycle.commands.examples import commands
from lifecycle.settings import get_settings
from tests.conftest import BASE_DN, ROOT

# Commands whose job is to print data a script may want (the rest serve, change or sign things).
PRINTS_DATA = {
    "lifecycle plan",
    "lifecycle dlq list",
    "lifecycle dlq show",
    "lifecycle dlq replay",
    "lifecycle audit",
    "lifecycle pending",
    "lifecycle doctor",
    "lifecycle held list",
    "lifecycle held show",
    "lifecycle check-config",
    "lifecycle reconcile",
    "lifecycle halo test",
    "lifecycle halo webhook-check",
    "lifecycle requests list",
    "lifecycle requests show",
    "lifecycle link list",
    "lifecycle impact",
}

ALL = commands(build_parser())
LEAVES = [
    (name, sub) for name, sub, _ in ALL if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
]


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]


@pytest.mark.parametrize(("name", "parser"), [(n, p) for n, p, _ in ALL], ids=[n for n, _, _ in ALL])
def test_every_command_has_a_purpose_line_and_an_example(name: str, parser: argparse.ArgumentParser) -> None:
    assert parser.description, f"{name} --help has no purpose line"
    assert parser.epilog and "example" in parser.epilog and "lifecycle " in parser.epilog, f"{name}: no example"


@pytest.mark.parametrize(("name", "parser"), LEAVES, ids=[n for n, _ in LEAVES])
def test_every_option_and_argument_says_what_it_is_for(name: str, parser: argparse.ArgumentParser) -> None:
    silent = [a.option_strings[0] if a.option_strings else a.dest for a in _options(parser) if not a.help]
    assert not silent, f"{name}: no help for {silent}"


@pytest.mark.parametrize(("name", "parser"), LEAVES, ids=[n for n, _ in LEAVES])
def test_json_wherever_data_is_printed_and_user_is_always_a_halo_id(name: str, parser: argparse.ArgumentParser) -> None:
    flags = {s: a for a in _options(parser) for s in a.option_strings}
    if name in PRINTS_DATA:
        assert "--json" in flags, f"{name} prints data but has no --json"
    if "--user" in flags:
        assert flags["--user"].type is int, f"{name} --user is not a Halo id (files are --file)"


def test_every_command_that_prints_data_is_a_real_command() -> None:
    assert {name for name, _ in LEAVES} >= PRINTS_DATA


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("lifecycle ") and out.strip() != "lifecycle"


@pytest.fixture
def clean_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LIFECYCLE_WEBHOOK_HMAC_SECRET", "hmac-secret-value")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_env_file_and_mapping_flags_choose_the_configuration(
    clean_settings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without the base DN check-config has a finding; the env file supplies it and the flag names the mapping.
    env_file = clean_settings / "dev.env"
    env_file.write_text(f"# written by make run\nexport LIFECYCLE_AD_BASE_DN='{BASE_DN}'\n", encoding="utf-8")
    assert main(["--mapping", str(ROOT / "mapping.example.toml"), "check-config"]) == 1
    capsys.readouterr()
    assert main(["--env-file", str(env_file), "--mapping", str(ROOT / "mapping.example.toml"), "check-config"]) == 0
    assert str(ROOT / "mapping.example.toml") in capsys.readouterr().out


def test_a_broken_env_file_is_a_one_line_error(clean_settings: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env_file = clean_settings / "broken.env"
    env_file.write_text("LIFECYCLE_AD_BASE_DN\n", encoding="utf-8")
    assert main(["--env-file", str(env_file), "check-config"]) == 2
    err = capsys.readouterr().err
    assert err == f"lifecycle: error: --env-file {env_file}:1: expected KEY=VALUE\n"
