"""``lifecycle check-config`` finds the mistakes that load without an error, names where they are, suggests the fix.

Each case starts from the working configuration (which reports nothing) and breaks one thing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lifecycle.cli import main
from lifecycle.commands.check_config import EXIT_FINDINGS, EXIT_INVALID, EXIT_OK, EXIT_UNREACHABLE
from lifecycle.settings import get_settings
from tests.conftest import BASE_DN, ROOT


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("LIFECYCLE_MAPPING_FILE", str(ROOT / "mapping.example.toml"))
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LIFECYCLE_AD_BASE_DN", BASE_DN)
    monkeypatch.setenv("LIFECYCLE_WEBHOOK_HMAC_SECRET", "hmac-secret-value")
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def _mapping_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    assert old in text, f"the example mapping no longer contains {old!r}"
    changed = tmp_path / "mapping.toml"
    changed.write_text(text.replace(old, new, 1), encoding="utf-8")
    return changed


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


def test_the_working_configuration_reports_nothing(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("ok: mapping ")


def test_a_cloud_only_mapping_needs_no_ad_connection_and_an_ad_mapping_still_does(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 17: a mapping with no AD step (mapping.cloud-only.example.toml) is checked without LIFECYCLE_AD_*.
    env.delenv("LIFECYCLE_AD_BASE_DN")
    env.setenv("LIFECYCLE_MAPPING_FILE", str(ROOT / "mapping.cloud-only.example.toml"))
    get_settings.cache_clear()
    assert main(["check-config"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("ok: mapping ")
    env.setenv("LIFECYCLE_MAPPING_FILE", str(ROOT / "mapping.example.toml"))
    get_settings.cache_clear()
    assert main(["check-config"]) == EXIT_FINDINGS
    assert "LIFECYCLE_AD_BASE_DN" in capsys.readouterr().out


Breakage = Callable[[pytest.MonkeyPatch, Path], Path | None]


def _misspelled_variable(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("LIFECYCLE_AD_BASEDN", BASE_DN)


def _undefined_routing_target(env: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return _mapping_with(tmp_path, 'default = "default"', 'default = "defualt"')


def _missing_ca_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("LIFECYCLE_AD_CA_FILE", str(tmp_path / "no-such-ca.pem"))


def _plain_ldap(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("LIFECYCLE_AD_URL", "ldap://dc1.corp.example.com:389")


def _graph_without_tenant(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("LIFECYCLE_GRAPH_CLIENT_ID", "11111111-2222-3333-4444-555555555555")


def _base_dn_not_a_dn(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("LIFECYCLE_AD_BASE_DN", "corp.example.com")


def _base_dn_unset(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.delenv("LIFECYCLE_AD_BASE_DN")


def _misspelled_template_field(env: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return _mapping_with(tmp_path, 'department = "{department}"', 'department = "{departmnet}"')


def _misspelled_when_field(env: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return _mapping_with(tmp_path, 'when = { department = "Sales" }', 'when = { departement = "Sales" }')


@pytest.mark.parametrize(
    ("breakage", "field", "mentions", "line_of"),
    [
        (_misspelled_variable, "LIFECYCLE_AD_BASEDN", "did you mean LIFECYCLE_AD_BASE_DN?", None),
        (_undefined_routing_target, "routing.default", "did you mean default?", 'default = "defualt"'),
        (_missing_ca_file, "LIFECYCLE_AD_CA_FILE", "does not exist", None),
        (_plain_ldap, "LIFECYCLE_AD_URL", "LIFECYCLE_AD_START_TLS=true", None),
        (_graph_without_tenant, "LIFECYCLE_GRAPH_TENANT_ID", "without a tenant", None),
        (_base_dn_not_a_dn, "LIFECYCLE_AD_BASE_DN", "is not a DN", None),
        (_base_dn_unset, "LIFECYCLE_AD_BASE_DN", "no base DN", None),
        (_misspelled_template_field, "attributes.department", "did you mean department?", "{departmnet}"),
        (_misspelled_when_field, "groups.rules[*].when", "did you mean department?", "departement"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_each_mistake_is_found_with_where_it_is_and_the_fix(
    env: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    breakage: Breakage,
    field: str,
    mentions: str,
    line_of: str | None,
) -> None:
    mapping = breakage(env, tmp_path)
    if mapping is not None:
        env.setenv("LIFECYCLE_MAPPING_FILE", str(mapping))
    get_settings.cache_clear()

    assert main(["check-config"]) == EXIT_FINDINGS
    lines = capsys.readouterr().out.splitlines()
    pattern = re.compile(": " + re.escape(field).replace(r"\*", r"\d+") + ": ")
    found = [line for line in lines if pattern.search(line)]
    assert found, lines
    assert mentions in found[0]
    if line_of is not None:
        assert mapping is not None and found[0].startswith(f"{mapping}:{_line_of(mapping, line_of)}: ")

    assert main(["check-config", "--json"]) == EXIT_FINDINGS
    report = json.loads(capsys.readouterr().out)
    matching = [f for f in report["findings"] if pattern.fullmatch(f": {f['field']}: ")]
    assert matching and mentions in f"{matching[0]['problem']}; {matching[0]['fix']}"


def test_a_configuration_that_does_not_load_exits_3_with_one_line(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("LIFECYCLE_AD_URL", "https://dc1.corp.example.com")
    get_settings.cache_clear()
    assert main(["check-config"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.startswith("lifecycle: error: invalid configuration: LIFECYCLE_AD_URL") and err.count("\n") == 1


def test_a_variable_that_must_be_json_and_is_not_is_one_line_naming_it(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # pydantic-settings said 'error parsing value for field "ad_connections" from source "EnvSettingsSource"',
    # outside the invalid-configuration path; the reader of our own names the variable and the JSON error.
    env.setenv("LIFECYCLE_AD_CONNECTIONS", "{'b': {'url': 'ldaps://b'}}")
    get_settings.cache_clear()
    assert main(["check-config"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.startswith("lifecycle: error: invalid configuration: LIFECYCLE_AD_CONNECTIONS: Invalid JSON: ")
    assert err.count("\n") == 1


def test_online_checks_the_real_environment_and_exits_4_when_it_is_unreachable(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens on port 1 of the loopback address: the bind is refused at once, no wait, no network.
    env.setenv("LIFECYCLE_AD_URL", "ldaps://127.0.0.1:1")
    env.setenv("LIFECYCLE_AD_USER", "svc-lifecycle@corp.example.test")
    env.setenv("LIFECYCLE_AD_PASSWORD", "not-a-real-password-0123")
    env.setenv("LIFECYCLE_AD_TIMEOUT_SECONDS", "2")
    get_settings.cache_clear()
    assert main(["check-config"]) == EXIT_OK  # offline, the configuration is fine
    capsys.readouterr()
    assert main(["check-config", "--online"]) == EXIT_UNREACHABLE
    out = capsys.readouterr().out
    assert "✗" in out and "AD" in out


def test_a_cloud_only_mapping_is_reconciled_without_ad_and_only_asks_for_what_it_needs(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A cloud-only mapping is reconciled against Entra (tests/integration/m365/test_cloud_only_reconcile.py):
    # with no AD settings the reconcile asks only for the Halo API, never for a DC.
    env.delenv("LIFECYCLE_AD_BASE_DN")
    env.setenv("LIFECYCLE_MAPPING_FILE", str(ROOT / "mapping.cloud-only.example.toml"))
    get_settings.cache_clear()
    assert main(["reconcile"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Halo API" in err[0] and "AD" not in err[0]
