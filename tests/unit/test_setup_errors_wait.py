"""Set-up errors wait instead of burning deliveries, through the Functions host simulator.

An unresolved Key Vault reference (the runtime cannot be built) and a missing mapping file (the worker cannot
plan) each reschedule the message with a long delay; the cause is logged at error level and ``GET
/api/health`` answers 503 with it. Before, each abandoned the message at once: ten deliveries in a burst,
then the dead-letter queue. (Table storage refusing the identity: tests/integration/test_table_limits.py.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import azure.functions as func
import pytest

import function_app
from lifecycle import azure_host, readiness
from lifecycle.queue import OutgoingMessage, message_for
from lifecycle.queue.servicebus import ServiceBusQueue
from lifecycle.runtime import Runtime
from lifecycle.work import LifecycleEvent, WorkItem
from tests.conftest import make_settings
from tests.standins.functions_host import FunctionsHost
from tests.unit.conftest import Bus, Clock

KEY_VAULT_REFERENCE = "@Microsoft.KeyVault(VaultName=kv-halo;SecretName=ad-bind-password)"


@pytest.fixture(autouse=True)
def _fresh_host() -> Iterator[None]:
    readiness.clear()
    yield
    azure_host.use_runtime(None)
    azure_host.use_setup_queue(None)
    readiness.clear()


def a_work_item(user_id: int = 42) -> WorkItem:
    event = LifecycleEvent(
        kind="created", user_id=user_id, occurred_at=datetime.now(UTC), source="webhook", user={"id": user_id}
    )
    return WorkItem(work_id=f"w-{user_id}", lifecycle="joiner", event=event, steps=[])


def health() -> tuple[int, dict[str, object]]:
    request = func.HttpRequest(method="GET", url="https://func-halo.azurewebsites.net/api/health", body=b"")
    response = function_app.health(request)
    return response.status_code, json.loads(response.get_body())


def assert_waits(bus: Bus, clock: Clock, outcomes: list[str]) -> None:
    assert outcomes == ["completed"]  # not abandoned: no delivery is used up
    assert bus.dead_lettered() == []
    [copy] = bus.scheduled()
    # The adapter read the broker's clock last when it scheduled the copy (AMQP carries milliseconds).
    assert copy["visible_at"] == pytest.approx(clock.last + 600.0, abs=0.001)
    assert copy["properties"]["last_retry_reason"].startswith("set-up problem")


def test_an_unresolved_key_vault_reference_makes_the_message_wait_and_health_say_why(
    bus: Bus, clock: Clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LIFECYCLE_AD_PASSWORD", KEY_VAULT_REFERENCE)
    monkeypatch.setenv("LIFECYCLE_QUEUE_BACKEND", "servicebus")
    azure_host.use_runtime(None)
    azure_host.use_setup_queue(lambda: ServiceBusQueue(bus.queue, client_factory=bus.client, clock=clock))
    ServiceBusQueue(bus.queue, client_factory=bus.client, clock=clock).send([message_for(a_work_item())])

    with caplog.at_level(logging.ERROR, logger="lifecycle"):
        outcomes = [d.settled for d in FunctionsHost(bus.client(), bus.queue).drain(function_app.work)]
    assert_waits(bus, clock, outcomes)
    assert any("LIFECYCLE_AD_PASSWORD" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    status, body = health()
    assert status == 503
    assert "LIFECYCLE_AD_PASSWORD" in json.dumps(body) and "Key Vault" in json.dumps(body)


def test_a_missing_mapping_file_makes_the_message_wait_and_health_say_why(
    bus: Bus, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, mapping_file=tmp_path / "missing.toml", queue_backend="servicebus")
    runtime = Runtime(settings)
    runtime.__dict__["queue"] = ServiceBusQueue(bus.queue, client_factory=bus.client, clock=clock)
    azure_host.use_runtime(runtime)
    runtime.queue.send([OutgoingMessage("w-7", "7", a_work_item(7).to_bytes())])

    with caplog.at_level(logging.ERROR, logger="lifecycle"):
        outcomes = [d.settled for d in FunctionsHost(bus.client(), bus.queue).drain(function_app.work)]
    assert_waits(bus, clock, outcomes)
    assert any("missing.toml" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    status, body = health()
    assert status == 503 and "missing.toml" in json.dumps(body)
    runtime.close()
