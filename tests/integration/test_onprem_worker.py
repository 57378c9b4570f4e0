"""``lifecycle worker``: the same worker consuming the Service Bus queue from inside the customer's network.

The queue is the Service Bus adapter on its SDK path (receive, then complete or schedule a copy, as a process
outside the Functions host settles) over the AMQP broker with the real SDK, the store is Table storage on
Azurite, AD the real Samba DC. What the
ingress (in Azure) sends, the on-premises worker applies.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient

from lifecycle.cli import main
from lifecycle.commands.worker import run_workers
from lifecycle.ingress import Ingress, Request
from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import Mapping
from lifecycle.queue.servicebus import ServiceBusQueue
from lifecycle.runtime import Runtime
from lifecycle.state.table import TableStore
from tests.conftest import make_settings
from tests.integration.azurite import Azurite, table_prefix
from tests.integration.conftest import AUTH, World, admin_connection, dc_settings, delivery, new_user
from tests.standins.amqp_broker.process import BrokerProcess
from tests.unit.conftest import Bus, Clock

pytestmark = pytest.mark.integration


def eventually(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.05)


@pytest.fixture
def onprem(
    directory: DCInfo, azurite: Azurite, amqp_broker: BrokerProcess, example_mapping: Mapping, tmp_path: Path
) -> Iterator[World]:
    bus = Bus(amqp_broker)  # a fresh queue on the AMQP broker, reached by the real SDK
    settings = dc_settings(directory, tmp_path, queue_backend="servicebus", store_backend="table")
    runtime = Runtime(settings, mapping=example_mapping)
    runtime.__dict__["store"] = TableStore(
        TableServiceClient.from_connection_string(azurite.connection_string), prefix=table_prefix()
    )
    runtime.__dict__["queue"] = ServiceBusQueue(
        bus.queue, client_factory=bus.client, clock=Clock(amqp_broker), receive_wait_seconds=0.5
    )
    conn = admin_connection(directory)
    world = World(directory, runtime, None, conn)  # type: ignore[arg-type]
    world.__dict__["bus"] = bus
    yield world
    conn.unbind()
    runtime.close()
    bus.close()


def test_the_on_premises_worker_applies_what_the_cloud_ingress_queued(onprem: World) -> None:
    user = new_user("Petra", "On-Premises")
    response = Ingress(onprem.runtime).events(
        Request("POST", json.dumps(delivery("created", user)).encode(), AUTH, {})
    )
    assert response.status == 202
    bus: Bus = onprem.__dict__["bus"]
    stop = threading.Event()
    workers = threading.Thread(target=run_workers, args=(onprem.runtime, stop, 2), kwargs={"poll_seconds": 0.5})
    workers.start()
    try:
        eventually(lambda: onprem.account(user["id"]) is not None and not bus.active())
    finally:
        stop.set()
        workers.join(timeout=30)
    assert not workers.is_alive()
    assert bus.dead_lettered() == []
    assert onprem.runtime.store.get_person(user["id"]) is not None
    [created] = [e for e in onprem.audit(user["id"]) if e.action == "create_user"]
    assert created.outcome == "changed"


def test_the_worker_command_refuses_the_local_backends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = Runtime(make_settings(tmp_path))
    monkeypatch.setattr("lifecycle.cli._runtime", lambda: runtime)
    assert main(["worker"]) == 3  # invalid configuration
    error = capsys.readouterr().err
    assert error.startswith("lifecycle: error: invalid configuration:")
    assert "LIFECYCLE_QUEUE_BACKEND=servicebus" in error
    assert len(error.strip().splitlines()) == 1
    runtime.close()
