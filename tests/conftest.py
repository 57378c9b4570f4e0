"""Shared fixtures: sample events, the example mapping, a runtime on embedded queue and store."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lifecycle.mapping.schema import Mapping, load_mapping
from lifecycle.runtime import Runtime
from lifecycle.settings import Settings
from tests.reliability import secret_scan

ROOT = Path(__file__).resolve().parent.parent
EVENTS = Path(__file__).resolve().parent / "events"
BASE_DN = "DC=corp,DC=example,DC=test"


def _lifecycle_variables() -> list[str]:
    return [name for name in os.environ if name.startswith("LIFECYCLE_")]


# A developer's shell often holds `.local/dev.env` (LIFECYCLE_AD_URL and friends): the suite must not read them,
# or a test would pass or fail by what the shell happened to export. Cleared at import, before any session fixture
# builds Settings, and again around every test in case one leaked a variable.
for _name in _lifecycle_variables():
    del os.environ[_name]


@pytest.fixture(autouse=True)
def _no_lifecycle_variables_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _lifecycle_variables():
        monkeypatch.delenv(name)


def load_event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="session")
def example_mapping() -> Mapping:
    return load_mapping(ROOT / "mapping.example.toml")


@pytest.fixture
def sample_user() -> dict[str, Any]:
    data = load_event("halo-user-sample.json")
    user: dict[str, Any] = copy.deepcopy(data["users"][0])
    # The seed's sample user is linked to agent 3 (an agent's own user record, which the example mapping's
    # [scope] excludes); the fixture stands for an ordinary member of staff.
    user.pop("linked_agent_id", None)
    return user


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "mapping_file": ROOT / "mapping.example.toml",
        "data_dir": tmp_path / "data",
        "webhook_basic_user": "halo",
        "webhook_basic_password": "basic-secret-value",
        "webhook_hmac_secret": "hmac-secret-value",
        "ad_base_dn": BASE_DN,
        # Most tests create dozens of accounts at once on purpose; the joiner guard's own tests set a limit.
        "guard_max_joiners": 0,
    }
    values.update(overrides)
    settings = Settings(**values)
    secret_scan.SCANNER.register(settings.secret_values())
    return settings


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime(make_settings(tmp_path))
    yield rt
    rt.close()


# The secret scan (tests/reliability/secret_scan.py): every log line and every file the suite writes.
@pytest.fixture(scope="session", autouse=True)
def _scan_for_secrets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    secret_scan.SCANNER.register(["basic-secret-value", "hmac-secret-value"])
    secret_scan.attach()
    yield
    secret_scan.SCANNER.scan_files(tmp_path_factory.getbasetemp())
    findings = secret_scan.SCANNER.findings
    if findings:
        pytest.fail(
            f"a configured secret was written {len(findings)} time(s): " + "; ".join(sorted(set(findings))[:10])
        )


@pytest.fixture(autouse=True)
def _secret_scan_attached() -> None:
    secret_scan.attach()  # again: a test may have called configure_logging, which replaces the handlers


# The AMQP 1.0 broker that stands in for Service Bus (tests/standins/amqp_broker): one process for the session,
# started here and stopped by its PID; each test takes a fresh queue on it.
@pytest.fixture(scope="session")
def amqp_broker() -> Iterator[Any]:
    from tests.standins.amqp_broker.process import BrokerProcess

    broker = BrokerProcess()
    secret_scan.SCANNER.register([broker.key])
    yield broker
    broker.stop()
