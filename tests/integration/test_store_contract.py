"""The store port's contract, kept by both stores: the embedded one (SQLite) and Table storage (on Azurite).

Every test runs once per store. "Two workers" are two store instances on the same backing (one SQLite file,
or the same tables through two clients), as two processes or two Function instances would be.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lifecycle.state import AuditEntry, Change, HeldItem, PendingAction, PersonRecord, StateStore
from lifecycle.state.embedded import EmbeddedStore
from lifecycle.state.table import TableStore
from tests.integration.azurite import Azurite, table_prefix

pytestmark = pytest.mark.integration
StoreFactory = Callable[[], Any]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["embedded", "table"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[StoreFactory]:
    """Opens another store instance on the same backing each time it is called."""
    opened: list[Any] = []
    if request.param == "embedded":

        def factory() -> Any:
            store = EmbeddedStore(tmp_path / "store.sqlite3", clock=clock)
            opened.append(store)
            return store
    else:
        from azure.data.tables import TableServiceClient

        server: Azurite = request.getfixturevalue("azurite")
        prefix = table_prefix()

        def factory() -> Any:
            store = TableStore(
                TableServiceClient.from_connection_string(server.connection_string), prefix=prefix, clock=clock
            )
            opened.append(store)
            return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(new_store: StoreFactory) -> StateStore:
    created: StateStore = new_store()
    return created


# Journal ---------------------------------------------------------------------------------------------------
def test_a_step_is_claimed_by_one_worker_and_done_forever_after(store: StateStore) -> None:
    assert store.claim_step("w1", "01-reset_password", "a", 60).status == "acquired"
    assert store.claim_step("w1", "01-reset_password", "b", 60).status == "busy"
    store.finish_step("w1", "01-reset_password", "a", {"outcome": "changed"})
    claim = store.claim_step("w1", "01-reset_password", "b", 60)
    assert claim.status == "done" and claim.result == {"outcome": "changed"}


def test_a_claim_whose_worker_died_is_taken_over_after_its_lease(store: StateStore, clock: Clock) -> None:
    store.claim_step("w1", "s", "dead-worker", 60)
    clock.now += 61
    claim = store.claim_step("w1", "s", "b", 60)
    assert claim.status == "acquired" and claim.taken_over
    # The dead worker cannot finish, nor release, what it no longer owns.
    store.finish_step("w1", "s", "dead-worker", {})
    store.release_step("w1", "s", "dead-worker")
    assert store.claim_step("w1", "s", "c", 60).status == "busy"


def test_the_same_owner_claims_its_own_step_again_without_taking_it_over(store: StateStore) -> None:
    store.claim_step("w1", "s", "a", 60)
    claim = store.claim_step("w1", "s", "a", 60)
    assert claim.status == "acquired" and not claim.taken_over


def test_a_note_on_a_step_in_progress_reaches_whoever_takes_it_over(store: StateStore, clock: Clock) -> None:
    store.claim_step("w1", "s", "a", 60)
    store.note_step("w1", "s", "a", {"pwdLastSet": "133"})
    store.note_step("w1", "s", "intruder", {"pwdLastSet": "0"})  # not its claim: ignored
    clock.now += 61
    claim = store.claim_step("w1", "s", "b", 60)
    assert claim.status == "acquired" and claim.taken_over and claim.note == {"pwdLastSet": "133"}
    store.finish_step("w1", "s", "b", {"outcome": "changed"})
    assert store.claim_step("w1", "s", "c", 60).result == {"outcome": "changed"}


def test_an_operator_resolves_a_step_left_in_progress(store: StateStore) -> None:
    assert store.resolve_step("w1", "s", done=True) is None
    store.claim_step("w1", "s", "dead", 60)
    assert store.resolve_step("w1", "s", done=True) == "in_progress"
    assert store.claim_step("w1", "s", "b", 60).status == "done"
    assert store.resolve_step("w1", "s", done=False) == "done"  # a step done stays done
    store.claim_step("w2", "s", "dead", 60)
    assert store.resolve_step("w2", "s", done=False) == "in_progress"
    assert store.claim_step("w2", "s", "b", 60).status == "acquired"


def test_a_released_claim_can_be_claimed_again(store: StateStore) -> None:
    store.claim_step("w1", "s", "a", 60)
    store.release_step("w1", "s", "a")
    assert store.claim_step("w1", "s", "b", 60).status == "acquired"


def test_a_finished_step_cannot_be_released(store: StateStore) -> None:
    store.claim_step("w1", "s", "a", 60)
    store.finish_step("w1", "s", "a", {"outcome": "changed", "dn": "CN=x"})
    store.release_step("w1", "s", "a")
    assert store.claim_step("w1", "s", "b", 60).result == {"outcome": "changed", "dn": "CN=x"}


def test_two_workers_racing_for_the_same_step_never_both_acquire_it(new_store: StoreFactory) -> None:
    workers = [new_store(), new_store()]
    for round_number in range(12):
        step = f"{round_number:02d}-reset_password"
        barrier = threading.Barrier(len(workers))

        def claim(index: int, step: str = step, barrier: threading.Barrier = barrier) -> str:
            barrier.wait(timeout=30)
            return str(workers[index].claim_step("race", step, f"worker-{index}", 60).status)

        with ThreadPoolExecutor(len(workers)) as pool:
            statuses = sorted(pool.map(claim, range(len(workers))))
        assert statuses == ["acquired", "busy"], f"round {round_number}: {statuses}"


def test_work_ids_and_step_keys_with_characters_tables_forbid_are_kept_apart(store: StateStore) -> None:
    odd = ["halo-a/b", "halo-a#b", "halo-a?b", "halo-a\\b", "halo-a%2Fb"]
    for work_id in odd:
        assert store.claim_step(work_id, "01/x", "a", 60).status == "acquired"
        store.finish_step(work_id, "01/x", "a", {"work_id": work_id})
    for work_id in odd:
        assert store.claim_step(work_id, "01/x", "b", 60).result == {"work_id": work_id}


def test_a_step_result_larger_than_one_table_property_round_trips(store: StateStore) -> None:
    result = {
        "outcome": "changed",
        "groups": [f"CN=Group {i:05d},OU=Groups,DC=corp,DC=example,DC=test" for i in range(3000)],
    }
    store.claim_step("w1", "s", "a", 60)
    store.finish_step("w1", "s", "a", result)
    assert store.claim_step("w1", "s", "b", 60).result == result


# People and audit ------------------------------------------------------------------------------------------
def test_person_records_and_audit_entries_round_trip(store: StateStore) -> None:
    at = datetime(2026, 11, 30, 9, 0, 0, 123456, tzinfo=UTC)
    store.put_person(PersonRecord(26, "left", at, "w1", "CN=x,DC=t", fingerprint="f1"))
    person = store.get_person(26)
    assert person is not None
    assert (person.status, person.last_event_at, person.dn, person.fingerprint) == ("left", at, "CN=x,DC=t", "f1")
    assert store.get_person(27) is None
    store.append_audit(
        AuditEntry(
            at,
            "w1",
            26,
            "01",
            "disable_user",
            "default",
            "changed",
            "CN=x,DC=t",
            (Change("userAccountControl", 512, 514),),
            {"source": "webhook"},
        )
    )
    store.append_audit(AuditEntry(at + timedelta(hours=1), "w2", 27, "01", "x", "default", "unchanged"))
    entries = store.audit(user_id=26)
    assert len(entries) == 1 and entries[0].changes[0].after == 514
    assert entries[0].requested_by == {"source": "webhook"} and entries[0].at == at
    assert [e.user_id for e in store.audit(since=at + timedelta(minutes=30))] == [27]


def test_a_person_record_is_replaced_not_merged(store: StateStore) -> None:
    at = datetime(2026, 11, 30, 9, tzinfo=UTC)
    store.put_person(PersonRecord(26, "active", at, "w1", "CN=x,DC=t"))
    store.put_person(PersonRecord(26, "left", at + timedelta(hours=1), "w2", None))
    person = store.get_person(26)
    assert person is not None and (person.status, person.last_work_id, person.dn) == ("left", "w2", None)


def test_people_are_counted_by_status(store: StateStore) -> None:
    at = datetime(2026, 11, 30, 9, tzinfo=UTC)
    for user_id, status in [(1, "active"), (2, "active"), (3, "left")]:
        store.put_person(PersonRecord(user_id, status, at, f"w{user_id}"))  # type: ignore[arg-type]
    assert (store.count_people("active"), store.count_people("left")) == (2, 1)


def test_the_audit_trail_reads_oldest_first_and_filters_by_work_id_and_time(store: StateStore) -> None:
    start = datetime(2026, 11, 30, 9, tzinfo=UTC)
    for minute, (work_id, user_id) in enumerate([("w1", 26), ("w2", 27), ("w1", 26), ("w3", 28), ("w1", 26)]):
        store.append_audit(
            AuditEntry(start + timedelta(minutes=minute), work_id, user_id, f"{minute:02d}", "a", "t", "changed")
        )
    assert [e.step for e in store.audit()] == ["00", "01", "02", "03", "04"]
    assert [e.step for e in store.audit(work_id="w1")] == ["00", "02", "04"]
    assert [e.step for e in store.audit(user_id=26, since=start + timedelta(minutes=1))] == ["02", "04"]
    assert [e.step for e in store.audit(limit=2)] == ["00", "01"]


def test_audit_entries_of_the_same_moment_keep_their_order(store: StateStore) -> None:
    at = datetime(2026, 11, 30, 9, tzinfo=UTC)
    for step in ["01", "02", "03"]:
        store.append_audit(AuditEntry(at, "w1", 26, step, "a", "t", "changed"))
    assert [e.step for e in store.audit(user_id=26)] == ["01", "02", "03"]


# Staged work -----------------------------------------------------------------------------------------------
def test_staged_work_is_listed_due_and_cancelled(store: StateStore) -> None:
    now = datetime(2026, 11, 30, tzinfo=UTC)
    big_item = '{"work_id": "w", "pad": "' + "x" * 100_000 + '"}'
    store.add_pending(PendingAction(26, "05-delete_user", now + timedelta(days=30), big_item, now, "delete"))
    store.add_pending(PendingAction(27, "05-delete_user", now + timedelta(days=10), "{}", now, "delete"))
    assert store.pending(due_before=now) == []
    assert [p.user_id for p in store.pending(due_before=now + timedelta(days=31))] == [27, 26]
    assert store.pending(user_id=26)[0].work_item == big_item
    assert [p.key for p in store.cancel_pending(26)] == ["05-delete_user"]
    assert [p.user_id for p in store.pending()] == [27]


def test_removing_staged_work_says_whether_it_existed(store: StateStore) -> None:
    now = datetime(2026, 11, 30, tzinfo=UTC)
    store.add_pending(PendingAction(26, "05-delete_user", now, "{}", now, "delete"))
    assert store.remove_pending(26, "05-delete_user") is True
    assert store.remove_pending(26, "05-delete_user") is False


# Mass-change guard -----------------------------------------------------------------------------------------
def test_the_guard_window_admits_up_to_its_limit_and_slides(store: StateStore) -> None:
    now = datetime(2026, 11, 30, 9, tzinfo=UTC)
    assert store.admit_destructive("w1", now=now, window_seconds=3600, limit=2).admitted
    assert store.admit_destructive("w2", now=now, window_seconds=3600, limit=2).count == 2
    refused = store.admit_destructive("w3", now=now, window_seconds=3600, limit=2)
    assert (refused.admitted, refused.count) == (False, 2)
    # A redelivery of an admitted item is admitted again without taking another place.
    assert store.admit_destructive("w1", now=now, window_seconds=3600, limit=2).admitted
    assert store.destructive_count(now=now, window_seconds=3600) == 2
    later = now + timedelta(seconds=3601)
    assert store.admit_destructive("w3", now=later, window_seconds=3600, limit=2).count == 1


def test_a_marker_is_read_back_and_replaced(store: StateStore) -> None:
    assert store.get_marker("halo-poll") is None
    store.put_marker("halo-poll", '{"at": "2026-01-05T08:00:01"}')
    store.put_marker("halo-poll", '{"at": "2026-01-05T08:00:02"}')
    assert store.get_marker("halo-poll") == '{"at": "2026-01-05T08:00:02"}'


def test_a_touched_window_entry_keeps_its_place_until_a_window_after_the_touch(store: StateStore) -> None:
    now = datetime(2026, 11, 30, 9, tzinfo=UTC)
    assert store.admit_destructive("r1", now=now, window_seconds=10, limit=1, window="halo-rate").admitted
    store.touch_window("r1", now=now + timedelta(seconds=8), window="halo-rate")  # the answer came late
    later = now + timedelta(seconds=12)
    assert not store.admit_destructive("r2", now=later, window_seconds=10, limit=1, window="halo-rate").admitted
    assert store.admit_destructive(
        "r2", now=now + timedelta(seconds=19), window_seconds=10, limit=1, window="halo-rate"
    ).admitted


def test_named_windows_are_independent_of_each_other(store: StateStore) -> None:
    now = datetime(2026, 11, 30, 9, tzinfo=UTC)
    assert store.admit_destructive("w1", now=now, window_seconds=3600, limit=1).admitted
    assert store.admit_destructive("j1", now=now, window_seconds=3600, limit=1, window="joiner").admitted
    assert not store.admit_destructive("j2", now=now, window_seconds=3600, limit=1, window="joiner").admitted
    assert store.destructive_count(now=now, window_seconds=3600, window="joiner") == 1
    assert store.destructive_count(now=now, window_seconds=3600) == 1


def test_two_workers_racing_for_the_last_place_in_the_guard_window_never_both_get_it(new_store: StoreFactory) -> None:
    workers = [new_store(), new_store()]
    now = datetime(2026, 11, 30, 9, tzinfo=UTC)
    for round_number in range(6):
        barrier = threading.Barrier(2)
        moment = now + timedelta(hours=2 * round_number)

        def admit(index: int, barrier: threading.Barrier = barrier, moment: datetime = moment) -> bool:
            barrier.wait(timeout=30)
            work_id = f"r{moment.timestamp()}-{index}"
            return bool(workers[index].admit_destructive(work_id, now=moment, window_seconds=3600, limit=1).admitted)

        with ThreadPoolExecutor(2) as pool:
            assert sorted(pool.map(admit, range(2))) == [False, True]


def test_a_held_item_is_recorded_once_and_decided_once(store: StateStore) -> None:
    at = datetime(2026, 11, 30, 9, tzinfo=UTC)
    item = HeldItem("h1", "w1", 26, "leaver", '{"work_id": "w1"}', "over the limit", at)
    assert store.hold(item) is True
    assert store.hold(item) is False
    assert [h.held_id for h in store.held()] == ["h1"]
    approved = store.decide_held("h1", "approved", by="ops", at=at + timedelta(minutes=5), note="ok")
    assert approved is not None and (approved.status, approved.decided_by) == ("approved", "ops")
    # The other decision comes too late: the first one stands.
    again = store.decide_held("h1", "rejected", by="someone", at=at + timedelta(minutes=6))
    assert again is not None and again.status == "approved" and again.decided_by == "ops"
    assert store.held() == [] and [h.status for h in store.held(status=None)] == ["approved"]
    stored = store.get_held("h1")
    assert stored is not None and stored.work_item == '{"work_id": "w1"}'
    assert store.decide_held("missing", "rejected", by="x", at=at) is None


def test_a_store_reports_itself_healthy(store: StateStore) -> None:
    assert store.health() is True
