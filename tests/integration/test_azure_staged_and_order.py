"""Staged work and per-person order in Azure: the Functions host simulator over the Service Bus stand-in,
Table storage on Azurite, the real Samba AD DC.

One clock drives the broker's scheduled messages, the Service Bus adapter's back-off copies and the worker
(staged-work due times, person gates), so "thirty days later" and "after the back-off" are clock moves, never
sleeps.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.data.tables import TableServiceClient

import function_app
from lifecycle import azure_host
from lifecycle.cli import main
from lifecycle.errors import Retryable
from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import Mapping
from lifecycle.queue.servicebus import ServiceBusQueue
from lifecycle.runtime import Runtime
from lifecycle.state.table import TableStore
from lifecycle.worker import Worker
from tests.integration.azurite import Azurite, table_prefix
from tests.integration.conftest import World, admin_connection, dc_settings, delivery, new_user
from tests.standins.amqp_broker.process import BrokerProcess
from tests.standins.functions_host import FunctionsHost, TimerError, fire_timer
from tests.unit.conftest import Bus

pytestmark = pytest.mark.integration
BASIC = "Basic " + base64.b64encode(b"halo:basic-secret-value").decode()
DAY = 86400.0


class Clock:
    """The AMQP broker's clock (wall time plus what the test moved it forward), read by the adapter and the
    worker too; moving it makes scheduled messages due and locks expire in the broker process."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.offset = broker.now() - time.time()

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset = self.broker.advance(seconds) - time.time()


@dataclass
class Azure:
    world: World
    clock: Clock
    bus: Bus
    host: FunctionsHost

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        request = func.HttpRequest(
            method="POST",
            url="https://func-halo.azurewebsites.net/api/halo/events",
            headers={"Authorization": BASIC, "Content-Type": "application/json"},
            params={},
            body=json.dumps(body).encode(),
        )
        response = function_app.halo_events(request)
        assert response.status_code == 202, response.get_body()
        accepted: dict[str, Any] = json.loads(response.get_body())
        return accepted

    def drain(self) -> list[str]:
        return [d.settled for d in self.host.drain(function_app.work)]

    def app_settings(self) -> dict[str, str]:
        return {"LIFECYCLE_RELEASE_SCHEDULE": self.world.runtime.settings.release_schedule}


@pytest.fixture
def azure(directory: DCInfo, azurite: Azurite, example_mapping: Mapping, tmp_path: Path) -> Iterator[Azure]:
    # A broker of its own: these tests move its clock by weeks, which the session's broker must not see.
    broker = BrokerProcess()
    clock = Clock(broker)
    bus = Bus(broker)  # a fresh queue on the AMQP broker, reached by the real SDK
    settings = dc_settings(
        directory, tmp_path, queue_backend="servicebus", store_backend="table", retry_base_seconds=30.0
    )
    runtime = Runtime(settings, mapping=example_mapping)
    runtime.__dict__["store"] = TableStore(
        TableServiceClient.from_connection_string(azurite.connection_string), prefix=table_prefix()
    )
    runtime.__dict__["queue"] = ServiceBusQueue(
        bus.queue, client_factory=bus.client, clock=clock, receive_wait_seconds=1
    )
    worker = Worker(runtime, clock=clock)
    azure_host.use_runtime(runtime, worker=worker)
    ldap = admin_connection(directory)
    yield Azure(World(directory, runtime, worker, ldap), clock, bus, FunctionsHost(bus.client(), bus.queue))
    azure_host.use_runtime(None)
    ldap.unbind()
    runtime.close()
    bus.close()
    broker.stop()


def halo_time(moment: datetime) -> str:
    """A timestamp the way Halo sends it: UTC without an offset."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")


# Staged work fires in Azure ----------------------------------------------------------------------------------
def test_the_release_timer_deletes_a_staged_account_through_the_functions_host(
    azure: Azure, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world = azure.world
    user = new_user("Stella", "Staged-Timer")
    azure.post(delivery("created", user))
    azure.post(delivery("deleted", user))
    assert azure.drain() == ["completed", "completed"]
    [staged] = world.runtime.store.pending(user_id=user["id"])
    assert staged.key == "05-delete_user"

    fire_timer(function_app.release_due, azure.app_settings())  # not due yet
    assert azure.drain() == []
    assert world.account(user["id"]) is not None

    azure.clock.advance(31 * DAY)
    fire_timer(function_app.release_due, azure.app_settings())
    assert azure.drain() == ["completed"]
    assert world.account(user["id"]) is None
    assert world.runtime.store.pending(user_id=user["id"]) == []

    monkeypatch.setattr("lifecycle.cli._runtime", lambda: world.runtime)
    assert main(["pending", "--user", str(user["id"]), "--released", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["pending"] == []
    assert [r["key"] for r in shown["released"]] == ["05-delete_user"]


def test_the_release_timer_takes_its_schedule_from_an_app_setting_the_host_must_resolve() -> None:
    trigger = function_app.release_due.build().get_bindings()[0].get_dict_repr()
    assert trigger["schedule"] == "%LIFECYCLE_RELEASE_SCHEDULE%"
    with pytest.raises(TimerError, match="does not resolve"):
        fire_timer(function_app.release_due, {})


def test_an_update_after_a_leaver_does_not_stop_the_staged_deletion(azure: Azure) -> None:
    world = azure.world
    now = datetime.now(UTC)
    user = new_user("Uma", "Update-After-Leaver")
    azure.post(delivery("created", user, at=halo_time(now - timedelta(hours=3))))
    azure.post(delivery("deleted", user, at=halo_time(now - timedelta(hours=2))))
    # The person's phone number is corrected in Halo after they left (still inactive).
    later = {**user, "inactive": True, "phonenumber": "+44 20 7946 0000"}
    azure.post(delivery("updated", later, at=halo_time(now - timedelta(hours=1))))
    assert azure.drain() == ["completed"] * 3
    assert [p.key for p in world.runtime.store.pending(user_id=user["id"])] == ["05-delete_user"]

    azure.clock.advance(31 * DAY)
    fire_timer(function_app.release_due, azure.app_settings())
    assert azure.drain() == ["completed"]
    assert world.account(user["id"]) is None
    assert not [e for e in world.audit(user["id"]) if e.outcome == "skipped"]


# One person's order holds on Service Bus ---------------------------------------------------------------------
def test_a_persons_later_event_waits_behind_an_earlier_one_that_backs_off(
    azure: Azure, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = azure.world
    now = datetime.now(UTC)
    user = new_user("Otto", "Order-On-Service-Bus")
    azure.post(delivery("created", user, at=halo_time(now - timedelta(minutes=30))))
    assert azure.drain() == ["completed"]

    first = azure.post(delivery("updated", {**user, "department": "Sales"}, at=halo_time(now - timedelta(minutes=20))))
    [first_item] = first["accepted"]
    failed: list[str] = []
    real = Worker._run_ad_step

    def dc_down_once(self: Worker, item: Any, step: Any, state: Any) -> Any:
        if item.work_id == first_item["work_id"] and not failed:
            failed.append(step.key)
            raise Retryable("the DC does not answer (connection refused)")
        return real(self, item, step, state)

    monkeypatch.setattr(Worker, "_run_ad_step", dc_down_once)
    assert azure.drain() == ["completed"]  # the original is completed; its back-off copy is scheduled
    assert failed
    second = azure.post(
        delivery("updated", {**user, "department": "Engineering"}, at=halo_time(now - timedelta(minutes=10)))
    )
    [second_item] = second["accepted"]
    assert azure.drain() == ["completed"]  # rescheduled: it waits behind the first
    account = world.account(user["id"])
    assert account is not None and "department" not in account

    azure.clock.advance(3600)
    assert azure.drain() == ["completed", "completed"]
    account = world.account(user["id"])
    assert account is not None and account["department"] == "Engineering"
    audit = world.audit(user["id"])
    assert not [e for e in audit if e.outcome == "skipped"], [e.message for e in audit if e.outcome == "skipped"]
    changed = [e.work_id for e in audit if e.outcome == "changed"]
    assert changed.index(first_item["work_id"]) < changed.index(second_item["work_id"])
    assert world.runtime.store.get_gate(user["id"]) is None
