"""The Azure Functions app end to end: HTTP function -> Service Bus -> worker function -> the real Samba AD DC.

Service Bus is the stand-in at the SDK boundary (no emulator runs here), driven the way the Functions host
drives a session trigger; Table storage is the real Azurite; AD is the real DC. The replay tests run on both
queues: Service Bus (with the Table parking) and the embedded queue of local mode.
"""

from __future__ import annotations

import base64
import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.data.tables import TableServiceClient
from azure.servicebus import ServiceBusClient

import function_app
from lifecycle import azure_host
from lifecycle.cli import main
from lifecycle.ingress import Ingress, Request
from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import Mapping, load_mapping
from lifecycle.queue import OutgoingMessage
from lifecycle.queue.servicebus import ServiceBusQueue
from lifecycle.runtime import Runtime
from lifecycle.state.table import TableStore
from lifecycle.state.table_parking import TableParking
from lifecycle.worker import Worker
from tests.conftest import ROOT
from tests.integration.azurite import Azurite, table_prefix
from tests.integration.conftest import AUTH, World, admin_connection, dc_settings, delivery, new_user
from tests.standins.amqp_broker.process import BrokerProcess
from tests.standins.functions_host import FunctionsHost, functions_message

pytestmark = pytest.mark.integration
BASIC = "Basic " + base64.b64encode(b"halo:basic-secret-value").decode()
_sites = itertools.count(1)


@dataclass
class Site:
    """A site whose OU the mapping names but AD does not have yet: its joiners fail permanently."""

    name: str
    ou: str


@pytest.fixture
def missing_site(directory: DCInfo, tmp_path: Path) -> tuple[Site, Mapping]:
    site = Site(f"Atlantis {next(_sites)} {tmp_path.name[-6:]}", "")
    site.ou = f"OU={site.name},OU=Staff,OU=Halo,{directory.base_dn}"
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    text += (
        f'\n[[ou.rules]]\nwhen = {{ site_name = "{site.name}" }}\nou = "OU={site.name},OU=Staff,OU=Halo,{{base_dn}}"\n'
    )
    path = tmp_path / "mapping.toml"
    path.write_text(text, encoding="utf-8")
    return site, load_mapping(path)


@dataclass
class Stack:
    """One way of running the service: what posts, what drains, and the queue it runs on."""

    name: str
    world: World
    post: Callable[[dict[str, Any]], dict[str, Any]]
    drain: Callable[[], list[str]]


def _azure_stack(
    directory: DCInfo, azurite: Azurite, broker: BrokerProcess, mapping: Mapping, tmp_path: Path
) -> Iterator[Stack]:
    # Service Bus is the AMQP broker, reached by the real SDK; a fresh queue as the Bicep declares it.
    queue = f"lifecycle-work-{uuid.uuid4().hex[:8]}"
    broker.create_queue(queue, max_delivery_count=10)
    clients: list[Any] = []

    def client() -> Any:
        made = ServiceBusClient.from_connection_string(broker.connection_string)
        clients.append(made)
        return made

    prefix = table_prefix()
    settings = dc_settings(directory, tmp_path, queue_backend="servicebus", store_backend="table")
    runtime = Runtime(settings, mapping=mapping)
    runtime.__dict__["store"] = TableStore(
        TableServiceClient.from_connection_string(azurite.connection_string), prefix=prefix
    )
    parking = TableParking(TableServiceClient.from_connection_string(azurite.connection_string), prefix=prefix)
    runtime.__dict__["queue"] = ServiceBusQueue(queue, client_factory=client, parking=parking, receive_wait_seconds=1)
    azure_host.use_runtime(runtime)
    host = FunctionsHost(client(), queue)
    ldap = admin_connection(directory)

    def post(body: dict[str, Any]) -> dict[str, Any]:
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

    def drain() -> list[str]:
        return [d.settled for d in host.drain(function_app.work)]

    stack = Stack("servicebus", World(directory, runtime, Worker(runtime), ldap), post, drain)
    stack.world.__dict__["bus"] = (broker, queue)
    yield stack
    azure_host.use_runtime(None)
    stack.world.worker.close()
    ldap.unbind()
    runtime.close()
    for made in clients:
        made.close()


def _embedded_stack(directory: DCInfo, mapping: Mapping, tmp_path: Path) -> Iterator[Stack]:
    runtime = Runtime(dc_settings(directory, tmp_path), mapping=mapping)
    worker = Worker(runtime)
    ldap = admin_connection(directory)

    def post(body: dict[str, Any]) -> dict[str, Any]:
        response = Ingress(runtime).events(Request("POST", json.dumps(body).encode(), AUTH, {}))
        assert response.status == 202, response.body
        accepted: dict[str, Any] = response.json()
        return accepted

    def drain() -> list[str]:
        outcomes: list[str] = []
        while (message := runtime.queue.receive(timeout=0)) is not None:
            outcomes.append(worker.process_message(message).outcome)
        return outcomes

    yield Stack("embedded", World(directory, runtime, worker, ldap), post, drain)
    worker.close()
    ldap.unbind()
    runtime.close()


@pytest.fixture
def azure_stack(
    directory: DCInfo, azurite: Azurite, amqp_broker: BrokerProcess, example_mapping: Mapping, tmp_path: Path
) -> Iterator[Stack]:
    yield from _azure_stack(directory, azurite, amqp_broker, example_mapping, tmp_path)


@pytest.fixture(params=["servicebus", "embedded"])
def failing_stack(
    request: pytest.FixtureRequest, directory: DCInfo, missing_site: tuple[Site, Mapping], tmp_path: Path
) -> Iterator[tuple[Stack, Site]]:
    site, mapping = missing_site
    if request.param == "servicebus":
        azurite: Azurite = request.getfixturevalue("azurite")
        broker: BrokerProcess = request.getfixturevalue("amqp_broker")
        for stack in _azure_stack(directory, azurite, broker, mapping, tmp_path):
            yield stack, site
    else:
        for stack in _embedded_stack(directory, mapping, tmp_path):
            yield stack, site


def create_ou(directory: DCInfo, dn: str) -> None:
    conn = admin_connection(directory)
    try:
        conn.add(dn, ["top", "organizationalUnit"])
    finally:
        conn.unbind()


def usn(world: World, user_id: int) -> str:
    account = world.account(user_id)
    assert account is not None
    return str(account["uSNChanged"])


# HTTP function -> Service Bus -> worker function -> AD -----------------------------------------------------
def test_a_webhook_through_the_functions_creates_the_account_and_a_redelivery_changes_nothing(
    azure_stack: Stack,
) -> None:
    world = azure_stack.world
    broker, queue = world.__dict__["bus"]
    user = new_user("Ada", "Azure-Functions")
    accepted = azure_stack.post(delivery("created", user))
    [item] = accepted["accepted"]
    [sent] = broker.active(queue)
    assert (sent["message_id"], sent["session_id"]) == (item["work_id"], str(user["id"]))
    assert sent["properties"] == {"event": "created", "lifecycle": "joiner", "schema_version": "1"}

    assert azure_stack.drain() == ["completed"]
    account = world.account(user["id"])
    assert account is not None and account["sAMAccountName"] == "ada.azure-functions"
    assert world.runtime.store.get_person(user["id"]) is not None  # in Table storage
    changes = len(world.changes(user["id"]))
    before = usn(world, user["id"])

    # The host delivers the same message again (its lock was lost after the work was done).
    function_app.work(
        functions_message(
            sent["body"].encode(),
            message_id=sent["message_id"],
            session_id=str(user["id"]),
            delivery_count=2,
            sequence_number=1,
            application_properties=sent["properties"],
        )
    )
    assert usn(world, user["id"]) == before
    assert len(world.changes(user["id"])) == changes


def test_a_message_that_crashes_the_worker_ends_in_the_sub_queue_and_replays_once_fixed(
    azure_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = azure_stack.world
    user = new_user("Bob", "Crash-Loop")

    def bug(self: Worker, item: Any, requested_by: Any) -> Any:
        raise RuntimeError("a bug in this version")

    monkeypatch.setattr(Worker, "run", bug)
    azure_stack.post(delivery("created", user))
    outcomes = azure_stack.drain()
    assert outcomes == ["abandoned"] * 10  # the queue's max delivery count
    [dead] = world.runtime.queue.dead_letters()
    assert (dead.reason, dead.delivery_count) == ("MaxDeliveryCountExceeded", 10)
    assert world.account(user["id"]) is None

    monkeypatch.undo()  # the fixed version is deployed
    new_id = world.runtime.queue.replay(dead.sequence_number)
    assert new_id == f"{dead.message_id}:r1"
    assert azure_stack.drain() == ["completed"]
    assert world.account(user["id"]) is not None
    assert world.runtime.queue.dead_letters() == []


# Replay, on both queues ------------------------------------------------------------------------------------
def test_a_permanent_failure_is_dead_lettered_with_its_reason_and_replayed_once_after_the_fix(
    failing_stack: tuple[Stack, Site],
    directory: DCInfo,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack, site = failing_stack
    world = stack.world
    user = new_user("Cleo", f"Replay-{stack.name}", site_name=site.name)
    stack.post(delivery("created", user))
    stack.drain()
    assert world.account(user["id"]) is None
    monkeypatch.setattr("lifecycle.cli._runtime", lambda: world.runtime)

    assert main(["dlq", "list", "--json", "--user", str(user["id"])]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["reason"] == "Permanent" and "does not exist" in listed["description"]
    assert site.name in listed["description"]
    dead = world.runtime.queue.dead_letter_by_sequence(listed["sequence_number"])  # type: ignore[attr-defined]
    assert dead is not None

    create_ou(directory, site.ou)  # the operator's fix
    assert main(["dlq", "replay", "--reason", site.name, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["new_message_id"] == f"{dead.message_id}:r1" and lines[0]["done"] == 1
    assert lines[-1] == {"replayed": 1, "not_found": 0}
    assert main(["dlq", "list", "--json", "--user", str(user["id"])]) == 0
    assert json.loads(capsys.readouterr().out) == []

    assert stack.drain() == ["completed"]
    account = world.account(user["id"])
    assert account is not None and str(account["dn"]).endswith(site.ou)
    changes, before = len(world.changes(user["id"])), usn(world, user["id"])
    replayed = [e for e in world.audit(user["id"]) if e.requested_by.get("source") == "replay"]
    assert replayed and {e.requested_by["message_id"] for e in replayed} == {lines[0]["new_message_id"]}

    # Replayed twice by accident: another copy of the same dead letter (a replay that crashed between sending
    # and removing the entry, repeated after the duplicate window) is processed and changes nothing in AD.
    properties = {**dead.properties, "original_message_id": dead.message_id, "replay_count": "2"}
    world.runtime.queue.send([OutgoingMessage(f"{dead.message_id}:r2", dead.session_id, dead.body, properties)])
    assert stack.drain() == ["completed"]
    assert usn(world, user["id"]) == before
    assert len(world.changes(user["id"])) == changes
