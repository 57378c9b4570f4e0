"""The embedded store's journal, person records, audit trail and staged work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from lifecycle.state import AuditEntry, Change, PendingAction, PersonRecord
from lifecycle.state.embedded import EmbeddedStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_step_is_claimed_by_one_worker_and_done_forever_after(tmp_path: Path) -> None:
    clock = Clock()
    store = EmbeddedStore(tmp_path / "s.db", clock=clock)
    assert store.claim_step("w1", "01-reset_password", "a", 60).status == "acquired"
    assert store.claim_step("w1", "01-reset_password", "b", 60).status == "busy"
    store.finish_step("w1", "01-reset_password", "a", {"outcome": "changed"})
    claim = store.claim_step("w1", "01-reset_password", "b", 60)
    assert claim.status == "done" and claim.result == {"outcome": "changed"}


def test_a_claim_whose_worker_died_is_taken_over_after_its_lease(tmp_path: Path) -> None:
    clock = Clock()
    store = EmbeddedStore(tmp_path / "s.db", clock=clock)
    store.claim_step("w1", "s", "dead-worker", 60)
    clock.now += 61
    assert store.claim_step("w1", "s", "b", 60).status == "acquired"
    # The dead worker cannot finish what it no longer owns.
    store.finish_step("w1", "s", "dead-worker", {})
    assert store.claim_step("w1", "s", "c", 60).status == "busy"


def test_a_released_claim_can_be_claimed_again(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s.db")
    store.claim_step("w1", "s", "a", 60)
    store.release_step("w1", "s", "a")
    assert store.claim_step("w1", "s", "b", 60).status == "acquired"


def test_person_records_and_audit_entries_round_trip(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s.db")
    at = datetime(2026, 11, 30, 9, tzinfo=UTC)
    store.put_person(PersonRecord(26, "left", at, "w1", "CN=x,DC=t"))
    person = store.get_person(26)
    assert person is not None and person.status == "left" and person.last_event_at == at
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
    assert [e.user_id for e in store.audit(since=at + timedelta(minutes=30))] == [27]


def test_staged_work_is_listed_due_and_cancelled(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s.db")
    now = datetime(2026, 11, 30, tzinfo=UTC)
    store.add_pending(PendingAction(26, "05-delete_user", now + timedelta(days=30), "{}", now, "delete"))
    assert store.pending(due_before=now) == []
    assert len(store.pending(due_before=now + timedelta(days=31))) == 1
    assert [p.key for p in store.cancel_pending(26)] == ["05-delete_user"]
    assert store.pending() == []
