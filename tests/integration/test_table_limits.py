"""Table storage's limits, kept by the store before the service refuses (against Azurite where it runs).

Keys without ``%`` (decoded twice in point operations), text chunks counted in UTF-16 code units, an entity
size guard (1 MiB, 64 KiB per property) that refuses permanently instead of retrying for a day, 400 and 413
permanent, and 403 a set-up problem that makes the message wait (Microsoft Learn: "Understanding the Table
service data model", "Table service error codes").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableServiceClient

import function_app
from lifecycle import azure_host, readiness
from lifecycle.errors import ConfigurationError, Permanent, Retryable
from lifecycle.queue import message_for
from lifecycle.queue.servicebus import ServiceBusQueue
from lifecycle.runtime import Runtime
from lifecycle.state import AuditEntry, HeldItem, PendingAction
from lifecycle.state.table import TableStore
from lifecycle.state.table_io import MAX_PROPERTY_BYTES, decode_key, encode_key, translated
from lifecycle.work import LifecycleEvent, WorkItem
from tests.conftest import make_settings
from tests.integration.azurite import ACCOUNT, Azurite, table_prefix
from tests.standins.amqp_broker.process import BrokerProcess
from tests.standins.functions_host import FunctionsHost
from tests.unit.conftest import Bus, Clock

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
AWKWARD = "05-delete/home#folder?100% é\u00e9\U0001f600'"


@pytest.fixture
def service(azurite: Azurite) -> Iterator[TableServiceClient]:
    client = TableServiceClient.from_connection_string(azurite.connection_string)
    yield client
    client.close()


@pytest.fixture
def store(service: TableServiceClient, azurite: Azurite) -> Iterator[tuple[TableStore, str]]:
    prefix = table_prefix()
    opened = TableStore(TableServiceClient.from_connection_string(azurite.connection_string), prefix=prefix)
    yield opened, prefix
    opened.close()


def raw(service: TableServiceClient, table: str) -> list[dict[str, Any]]:
    return [
        dict(e) | {"PartitionKey": e["PartitionKey"], "RowKey": e["RowKey"]}
        for e in service.get_table_client(table).list_entities()
    ]


def test_keys_never_hold_a_percent_and_round_trip(store: tuple[TableStore, str], service: TableServiceClient) -> None:
    tables, prefix = store
    assert decode_key(encode_key(AWKWARD)) == AWKWARD
    tables.add_pending(PendingAction(42, AWKWARD, NOW, "{}", NOW, "awkward key"))
    tables.hold(HeldItem(f"h-{AWKWARD}", "w-1", 42, "leaver", "{}", "burst", NOW))
    [pending] = raw(service, f"{prefix}pending")
    [held] = raw(service, f"{prefix}held")
    for key in (pending["RowKey"], held["RowKey"]):
        assert "%" not in key and not set(key) & set("/\\#?")
    assert [p.key for p in tables.pending(user_id=42)] == [AWKWARD]
    assert tables.get_held(f"h-{AWKWARD}") is not None
    assert tables.remove_pending(42, AWKWARD) is True

    # A journal step under a work id with the same characters: claimed, finished, and found done again.
    assert tables.claim_step(AWKWARD, AWKWARD, "me", 60).status == "acquired"
    tables.finish_step(AWKWARD, AWKWARD, "me", {"outcome": "changed"})
    assert tables.claim_step(AWKWARD, AWKWARD, "other", 60).status == "done"


def audit_entry(message: str) -> AuditEntry:
    return AuditEntry(
        at=NOW,
        work_id="w-1",
        user_id=42,
        step="01",
        action="modify_properties",
        target="ad",
        outcome="changed",
        message=message,
    )


def test_text_is_chunked_in_utf16_units_so_no_property_passes_64_kib(
    store: tuple[TableStore, str], service: TableServiceClient
) -> None:
    tables, prefix = store
    text = "\U0001f600" * 40_000  # 80,000 UTF-16 units: 160,000 bytes of property data
    tables.append_audit(audit_entry(text))
    [entry] = tables.audit(user_id=42)
    assert entry.message == text
    [stored] = raw(service, f"{prefix}audit")
    for name, value in stored.items():
        if isinstance(value, str):
            assert len(value.encode("utf-16-le")) <= MAX_PROPERTY_BYTES, name


def test_an_entity_over_one_mib_is_refused_permanently_before_anything_is_written(
    store: tuple[TableStore, str],
) -> None:
    tables, _ = store
    with pytest.raises(Permanent, match="1048576 per entity"):
        tables.append_audit(audit_entry("x" * 600_000))  # 1.2 MB of UTF-16
    assert tables.audit(user_id=42) == []


class _Response:
    def __init__(self, status: int) -> None:
        self.status_code = status
        self.reason = {400: "Bad Request", 413: "Request Entity Too Large", 503: "Server Busy", 403: "Forbidden"}[
            status
        ]
        self.headers: dict[str, str] = {}
        self.request = None

    def text(self) -> str:
        return ""


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, Permanent), (413, Permanent), (403, ConfigurationError), (503, Retryable)],
)
def test_storage_errors_are_classed_by_whether_trying_again_can_help(status: int, error: type[Exception]) -> None:
    @translated
    def write() -> None:
        raise HttpResponseError(response=_Response(status))  # type: ignore[arg-type]

    with pytest.raises(error):
        write()


def test_table_storage_refusing_the_identity_makes_the_message_wait(
    azurite: Azurite, amqp_broker: BrokerProcess, tmp_path: Any
) -> None:
    readiness.clear()
    bus = Bus(amqp_broker)  # a fresh queue on the AMQP broker, reached by the real SDK
    wrong_key = azurite.connection_string.replace("AccountKey=", "AccountKey=AAAA")
    runtime = Runtime(make_settings(tmp_path, queue_backend="servicebus", store_backend="table"))
    runtime.__dict__["store"] = TableStore(TableServiceClient.from_connection_string(wrong_key), prefix=table_prefix())
    # The broker's clock (another test may have moved it forward): the copy is scheduled in its time.
    runtime.__dict__["queue"] = ServiceBusQueue(bus.queue, client_factory=bus.client, clock=Clock(amqp_broker))
    azure_host.use_runtime(runtime)
    try:
        event = LifecycleEvent(kind="created", user_id=7, occurred_at=NOW, source="webhook", user={"id": 7})
        runtime.queue.send([message_for(WorkItem(work_id="w-7", lifecycle="joiner", event=event, steps=[]))])
        outcomes = [d.settled for d in FunctionsHost(bus.client(), bus.queue).drain(function_app.work)]
        assert outcomes == ["completed"]
        assert bus.dead_lettered() == []
        [copy] = bus.scheduled()
        assert "Storage Table Data Contributor" in str(copy["properties"]["last_retry_reason"])
        request = func.HttpRequest(method="GET", url=f"https://x/{ACCOUNT}/api/health", body=b"")
        response = function_app.health(request)
        assert response.status_code == 503 and "Table" in json.dumps(json.loads(response.get_body()))
    finally:
        azure_host.use_runtime(None)
        readiness.clear()
        runtime.close()
        bus.close()
