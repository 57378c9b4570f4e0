"""The ticket request store's contract, kept by SQLite (local mode) and Table storage (on Azurite)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lifecycle.requests.store import EmbeddedRequestStore, RequestRecord, VersionConflict, update
from lifecycle.requests.table import TableRequestStore
from tests.integration.azurite import Azurite, table_prefix

pytestmark = pytest.mark.integration


@pytest.fixture(params=["embedded", "table"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Opens another store instance on the same backing each time it is called."""
    opened: list[Any] = []
    if request.param == "embedded":

        def factory() -> Any:
            opened.append(EmbeddedRequestStore(tmp_path / "requests.sqlite3"))
            return opened[-1]
    else:
        from azure.data.tables import TableServiceClient

        server: Azurite = request.getfixturevalue("azurite")
        prefix = table_prefix()

        def factory() -> Any:
            client = TableServiceClient.from_connection_string(server.connection_string)
            opened.append(TableRequestStore(client, prefix=prefix))
            return opened[-1]

    yield factory
    for store in opened:
        store.close()


def test_a_record_is_written_only_over_the_version_that_was_read(new_store: Callable[[], Any]) -> None:
    store = new_store()
    assert store.get("ticket-1") is None
    first = store.put(RequestRecord("ticket-1", 1, "received"), expected_version=0)
    with pytest.raises(VersionConflict):
        store.put(RequestRecord("ticket-1", 1, "received"), expected_version=0)
    plan = ({"name": "run", "label": "on approval", "due_at": None, "item": {"x": "é" * 40_000}},)
    second = store.put(replace(first, status="awaiting_approval", plan=plan), expected_version=1)
    with pytest.raises(VersionConflict):
        store.put(replace(first, status="completed"), expected_version=1)
    read = new_store().get("ticket-1")
    assert read == second and read.plan[0]["item"]["x"] == "é" * 40_000


def test_lists_select_by_status_and_by_owed_notes(new_store: Callable[[], Any]) -> None:
    store = new_store()
    store.put(RequestRecord("ticket-2", 2, "awaiting_approval"), expected_version=0)
    store.put(RequestRecord("ticket-3", 3, "completed", notes_owed=True), expected_version=0)
    store.put(RequestRecord("ticket-4", 4, "scheduled"), expected_version=0)
    statuses = frozenset({"awaiting_approval", "scheduled"})
    assert [r.request_id for r in store.list(statuses=statuses)] == ["ticket-2", "ticket-4"]
    assert [r.request_id for r in store.list(notes_owed=True)] == ["ticket-3"]
    assert [r.request_id for r in store.list()] == ["ticket-2", "ticket-3", "ticket-4"]


def test_concurrent_updates_through_two_instances_lose_nothing(new_store: Callable[[], Any]) -> None:
    stores = [new_store(), new_store()]
    stores[0].put(RequestRecord("ticket-5", 5, "running"), expected_version=0)

    def add_phase(index: int) -> None:
        def change(current: RequestRecord | None) -> RequestRecord | None:
            assert current is not None
            return replace(current, phases={**current.phases, f"p{index}": {"outcome": "completed"}})

        update(stores[index % 2], "ticket-5", change)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(add_phase, range(6)))
    record = stores[0].get("ticket-5")
    assert record is not None and sorted(record.phases) == [f"p{i}" for i in range(6)]
