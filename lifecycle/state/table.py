"""The Azure Table storage adapter of the store port.

Tables (each name optionally prefixed, created on first use if the deployment did not create them):

- ``journal``: one entity per (work id, step): PartitionKey = work id, RowKey = step key. Claims are
  conditional writes: insert-if-absent for a new step, ETag-matched replace to take over an expired lease or
  to finish, so two workers never both hold the same step (the loser of a race re-reads and answers busy).
- ``people``: one entity per Halo user (PartitionKey = user id).
- ``audit``: append-only; PartitionKey = user id, RowKey = the entry's time in microseconds and a sequence,
  so one person's trail reads in order from one partition.
- ``pending``: staged work; PartitionKey = user id, RowKey = step key.
- ``guard``: the mass-change guard's sliding window, one entity replaced under its ETag (an atomic
  check-and-record across every worker).
- ``held``: items the mass-change guard held; decisions are ETag-matched updates.
- ``deadletters``: dead-lettered work parked by the Service Bus adapter (``lifecycle.state.table_parking``).
- ``gates``: one entity per person whose item backs off (PartitionKey = user id); see ``lifecycle.worker``.

Keys, chunked text, the size guard and the error classes: ``lifecycle.state.table_io``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from lifecycle.errors import Retryable
from lifecycle.state import (
    AuditEntry,
    Change,
    Claim,
    GuardAdmission,
    HeldItem,
    HeldStatus,
    PendingAction,
    PersonGate,
    PersonRecord,
)
from lifecycle.state.table_io import (
    CAS_ATTEMPTS,
    Tables,
    decode_key,
    encode_key,
    etag,
    get_text,
    int64,
    plain,
    put_text,
    service_from_settings,
    translated,
)

if TYPE_CHECKING:
    from lifecycle.settings import Settings

# "requests": ticket requests (lifecycle.requests.table), in the same account.
TABLES = ("journal", "people", "audit", "pending", "guard", "held", "deadletters", "gates", "requests")


class TableStore:
    """A ``StateStore`` on Azure Table storage; safe to share between threads and between instances.

    Args:
        service: An ``azure.data.tables.TableServiceClient``.
        prefix: Prepended to every table name (letters and digits; tests use one per test).
        clock: UTC epoch seconds (leases, staged-work times).
    """

    def __init__(self, service: Any, *, prefix: str = "", clock: Callable[[], float] = time.time) -> None:
        self._tables = Tables(service, prefix)
        self._clock = clock
        self._sequence_lock = threading.Lock()
        self._last_sequence = 0

    @classmethod
    def from_settings(cls, settings: Settings, *, prefix: str = "") -> TableStore:
        """The store of the settings: ``LIFECYCLE_TABLE_ENDPOINT`` with the managed identity, or
        ``LIFECYCLE_TABLE_CONNECTION_STRING`` (Azurite: ``UseDevelopmentStorage=true``)."""
        return cls(service_from_settings(settings), prefix=prefix)

    # Journal -----------------------------------------------------------------------------------------------
    @translated
    def claim_step(self, work_id: str, step: str, owner: str, lease_seconds: float) -> Claim:
        partition, row = encode_key(work_id), encode_key(step)
        for _ in range(CAS_ATTEMPTS):
            now = self._clock()
            entity = self._tables.get("journal", partition, row)
            claimed = {
                "PartitionKey": partition,
                "RowKey": row,
                "status": "in_progress",
                "owner": owner,
                "lease_until": float(now + lease_seconds),
                "updated_at": float(now),
            }
            if entity is None:
                if self._tables.insert("journal", claimed):
                    return Claim("acquired")
                continue  # another worker inserted it first: read what it wrote
            result = get_text(entity, "result")
            if entity.get("status") == "done":
                return Claim("done", json.loads(result) if result else {})
            holder = entity.get("owner")
            if holder != owner and float(plain(entity.get("lease_until", 0.0))) > now:
                return Claim("busy")
            # What the interrupted holder noted before it began (note_step) stays for whoever takes over.
            put_text(claimed, "result", result)
            if self._tables.replace_if("journal", claimed, etag(entity)):
                return Claim("acquired", taken_over=holder != owner, note=json.loads(result) if result else None)
        return Claim("busy")

    def _rewrite_claim(self, work_id: str, step: str, owner: str, status: str, payload: dict[str, Any]) -> None:
        """Rewrite ``owner``'s in-progress claim with ``status`` and ``payload`` (ETag-conditional, retried).

        Nothing is written when the claim is gone or belongs to another worker: that worker finishes the step.
        """
        partition, row = encode_key(work_id), encode_key(step)
        for _ in range(CAS_ATTEMPTS):
            entity = self._tables.get("journal", partition, row)
            if entity is None or entity.get("owner") != owner:
                return
            if status == "in_progress" and entity.get("status") != "in_progress":
                return  # a note never reopens a finished step
            rewritten: dict[str, Any] = {
                "PartitionKey": partition,
                "RowKey": row,
                "status": status,
                "owner": owner,
                "lease_until": float(plain(entity.get("lease_until", 0.0))),
                "updated_at": float(self._clock()),
            }
            put_text(rewritten, "result", json.dumps(payload, default=str))
            if self._tables.replace_if("journal", rewritten, etag(entity)):
                return

    @translated
    def finish_step(self, work_id: str, step: str, owner: str, result: dict[str, Any]) -> None:
        self._rewrite_claim(work_id, step, owner, "done", result)

    @translated
    def note_step(self, work_id: str, step: str, owner: str, note: dict[str, Any]) -> None:
        self._rewrite_claim(work_id, step, owner, "in_progress", note)

    @translated
    def resolve_step(self, work_id: str, step: str, *, done: bool) -> str | None:
        partition, row = encode_key(work_id), encode_key(step)
        for _ in range(CAS_ATTEMPTS):
            entity = self._tables.get("journal", partition, row)
            if entity is None:
                return None
            status = str(entity.get("status"))
            if status == "done":
                return status
            if done:
                resolved: dict[str, Any] = {
                    "PartitionKey": partition,
                    "RowKey": row,
                    "status": "done",
                    "owner": entity.get("owner", ""),
                    "lease_until": float(plain(entity.get("lease_until", 0.0))),
                    "updated_at": float(self._clock()),
                }
                put_text(resolved, "result", json.dumps({"outcome": "changed", "resolved_by": "operator"}))
                if self._tables.replace_if("journal", resolved, etag(entity)):
                    return status
            elif self._tables.delete_if("journal", partition, row, etag(entity)):
                return status
        raise Retryable(f"step {step} of {work_id} is too contended; try again")

    @translated
    def release_step(self, work_id: str, step: str, owner: str) -> None:
        partition, row = encode_key(work_id), encode_key(step)
        for _ in range(CAS_ATTEMPTS):
            entity = self._tables.get("journal", partition, row)
            if entity is None or entity.get("owner") != owner or entity.get("status") != "in_progress":
                return
            if self._tables.delete_if("journal", partition, row, etag(entity)):
                return

    # People ------------------------------------------------------------------------------------------------
    @translated
    def get_person(self, user_id: int) -> PersonRecord | None:
        entity = self._tables.get("people", str(user_id), "person")
        if entity is None:
            return None
        return PersonRecord(
            user_id=user_id,
            status=entity["status"],
            last_event_at=plain(entity["last_event_at"]),
            last_work_id=entity["last_work_id"],
            dn=entity.get("dn") or None,
            updated_at=plain(entity["updated_at"]) if entity.get("updated_at") is not None else None,
            fingerprint=entity.get("fingerprint") or "",
        )

    @translated
    def put_person(self, record: PersonRecord) -> None:
        self._tables.upsert(
            "people",
            {
                "PartitionKey": str(record.user_id),
                "RowKey": "person",
                "user_id": int64(record.user_id),
                "status": record.status,
                "last_event_at": record.last_event_at,
                "last_work_id": record.last_work_id,
                "dn": record.dn or "",
                "updated_at": datetime.fromtimestamp(self._clock(), UTC),
                "fingerprint": record.fingerprint,
            },
        )

    @translated
    def count_people(self, status: Literal["active", "left"]) -> int:
        return len(self._tables.query("people", "status eq @status", {"status": status}))

    # Audit -------------------------------------------------------------------------------------------------
    def _next_sequence(self) -> int:
        # Nanoseconds of the write, kept strictly increasing within the process: insertion order among
        # entries that carry the same time.
        with self._sequence_lock:
            self._last_sequence = max(self._last_sequence + 1, time.time_ns())
            return self._last_sequence

    @translated
    def append_audit(self, entry: AuditEntry) -> None:
        sequence = self._next_sequence()
        micros = round(entry.at.timestamp() * 1_000_000)
        entity: dict[str, Any] = {
            "PartitionKey": str(entry.user_id),
            "RowKey": f"{micros:019d}-{sequence:020d}",
            "at": entry.at,
            "sequence": int64(sequence),
            "work_id": entry.work_id,
            "user_id": int64(entry.user_id),
            "step": entry.step,
            "action": entry.action,
            "target": entry.target,
            "outcome": entry.outcome,
            "dn": entry.dn or "",
        }
        changes = [{"attribute": c.attribute, "before": c.before, "after": c.after} for c in entry.changes]
        put_text(entity, "changes", json.dumps(changes, default=str))
        put_text(entity, "requested_by", json.dumps(entry.requested_by, default=str))
        put_text(entity, "message", entry.message)
        self._tables.insert("audit", entity)

    @translated
    def audit(
        self,
        *,
        user_id: int | None = None,
        work_id: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[AuditEntry]:
        clauses: list[str] = []
        parameters: dict[str, Any] = {}
        if user_id is not None:
            clauses.append("PartitionKey eq @user")
            parameters["user"] = str(user_id)
        if work_id is not None:
            clauses.append("work_id eq @work")
            parameters["work"] = work_id
        if since is not None:
            clauses.append("at ge @since")
            parameters["since"] = since
        entities = self._tables.query("audit", " and ".join(clauses), parameters)
        entries = [self._audit_entry(e) for e in entities]
        # One partition comes back in RowKey (time) order already; several come partition by partition.
        entries.sort(key=lambda e: (e.at, e.sequence))
        return entries[:limit]

    @staticmethod
    def _audit_entry(entity: Any) -> AuditEntry:
        return AuditEntry(
            at=plain(entity["at"]),
            work_id=entity["work_id"],
            user_id=int(plain(entity["user_id"])),
            step=entity["step"],
            action=entity["action"],
            target=entity["target"],
            outcome=entity["outcome"],
            dn=entity.get("dn") or None,
            changes=tuple(
                Change(c["attribute"], c["before"], c["after"]) for c in json.loads(get_text(entity, "changes"))
            ),
            requested_by=json.loads(get_text(entity, "requested_by") or "{}"),
            message=get_text(entity, "message"),
            sequence=int(plain(entity["sequence"])),
        )

    # Staged work -------------------------------------------------------------------------------------------
    @translated
    def add_pending(self, pending: PendingAction) -> None:
        entity: dict[str, Any] = {
            "PartitionKey": str(pending.user_id),
            "RowKey": encode_key(pending.key),
            "user_id": int64(pending.user_id),
            "due_at": pending.due_at,
            "created_at": pending.created_at,
            "description": pending.description,
        }
        put_text(entity, "work_item", pending.work_item)
        self._tables.upsert("pending", entity)

    @translated
    def pending(self, *, user_id: int | None = None, due_before: datetime | None = None) -> list[PendingAction]:
        clauses: list[str] = []
        parameters: dict[str, Any] = {}
        if user_id is not None:
            clauses.append("PartitionKey eq @user")
            parameters["user"] = str(user_id)
        if due_before is not None:
            clauses.append("due_at le @due")
            parameters["due"] = due_before
        entities = self._tables.query("pending", " and ".join(clauses), parameters)
        found = [self._pending(e) for e in entities]
        found.sort(key=lambda p: (p.due_at, p.user_id, p.key))
        return found

    @staticmethod
    def _pending(entity: Any) -> PendingAction:
        return PendingAction(
            user_id=int(plain(entity["user_id"])),
            key=decode_key(entity["RowKey"]),
            due_at=plain(entity["due_at"]),
            work_item=get_text(entity, "work_item"),
            created_at=plain(entity["created_at"]),
            description=entity.get("description") or "",
        )

    @translated
    def remove_pending(self, user_id: int, key: str) -> bool:
        entity = self._tables.get("pending", str(user_id), encode_key(key))
        if entity is None:
            return False
        return self._tables.delete_if("pending", str(user_id), encode_key(key), etag(entity))

    @translated
    def cancel_pending(self, user_id: int) -> list[PendingAction]:
        entities = self._tables.query("pending", "PartitionKey eq @user", {"user": str(user_id)})
        cancelled = []
        for entity in entities:
            if self._tables.delete_if("pending", entity["PartitionKey"], entity["RowKey"], etag(entity)):
                cancelled.append(self._pending(entity))
        cancelled.sort(key=lambda p: (p.due_at, p.key))
        return cancelled

    # Markers (in the guard table: small shared state) -------------------------------------------------------
    @translated
    def get_marker(self, name: str) -> str | None:
        entity = self._tables.get("guard", "marker", encode_key(name))
        return None if entity is None else get_text(entity, "value")

    @translated
    def put_marker(self, name: str, value: str) -> None:
        entity: dict[str, Any] = {"PartitionKey": "marker", "RowKey": encode_key(name)}
        put_text(entity, "value", value)
        self._tables.upsert("guard", entity)

    # Person gates ------------------------------------------------------------------------------------------
    @translated
    def get_gate(self, user_id: int) -> PersonGate | None:
        entity = self._tables.get("gates", str(user_id), "gate")
        if entity is None:
            return None
        waiting = json.loads(get_text(entity, "waiting") or "[]")
        return PersonGate(user_id, entity["holder"], plain(entity["until"]), tuple(waiting))

    @translated
    def put_gate(self, gate: PersonGate) -> None:
        entity: dict[str, Any] = {
            "PartitionKey": str(gate.user_id),
            "RowKey": "gate",
            "holder": gate.holder,
            "until": gate.until,
        }
        put_text(entity, "waiting", json.dumps(list(gate.waiting)))
        self._tables.upsert("gates", entity)

    @translated
    def drop_gate(self, user_id: int) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        def delete(table: Any) -> None:
            try:
                table.delete_entity(str(user_id), "gate")
            except ResourceNotFoundError as exc:
                if "TableNotFound" in str(exc):
                    raise

        self._tables.call("gates", delete)

    # Mass-change guard -------------------------------------------------------------------------------------
    def _window(self, window: str = "destructive") -> tuple[Any | None, dict[str, float]]:
        entity = self._tables.get("guard", "window", encode_key(window))
        entries: dict[str, float] = json.loads(get_text(entity, "entries") or "{}") if entity is not None else {}
        return entity, entries

    @translated
    def admit_destructive(
        self, work_id: str, *, now: datetime, window_seconds: float, limit: int, window: str = "destructive"
    ) -> GuardAdmission:
        at = now.timestamp()
        for _ in range(CAS_ATTEMPTS):
            entity, entries = self._window(window)
            entries = {w: t for w, t in entries.items() if t > at - window_seconds}
            if work_id in entries:
                return GuardAdmission(True, len(entries))
            if len(entries) >= limit:
                return GuardAdmission(False, len(entries))
            entries[work_id] = at
            updated: dict[str, Any] = {"PartitionKey": "window", "RowKey": encode_key(window)}
            put_text(updated, "entries", json.dumps(entries, separators=(",", ":")))
            # One entity under its ETag: of two workers racing for the last place, one write fails and re-reads.
            written = (
                self._tables.insert("guard", updated)
                if entity is None
                else self._tables.replace_if("guard", updated, etag(entity))
            )
            if written:
                return GuardAdmission(True, len(entries))
        raise Retryable("the mass-change guard's window is too contended; try again")

    @translated
    def touch_window(self, work_id: str, *, now: datetime, window: str) -> None:
        for _ in range(CAS_ATTEMPTS):
            entity, entries = self._window(window)
            if entity is None or work_id not in entries:
                return
            entries[work_id] = max(entries[work_id], now.timestamp())
            updated: dict[str, Any] = {"PartitionKey": "window", "RowKey": encode_key(window)}
            put_text(updated, "entries", json.dumps(entries, separators=(",", ":")))
            if self._tables.replace_if("guard", updated, etag(entity)):
                return
        raise Retryable("the shared window is too contended; try again")

    @translated
    def destructive_count(self, *, now: datetime, window_seconds: float, window: str = "destructive") -> int:
        _, entries = self._window(window)
        cutoff = now.timestamp() - window_seconds
        return sum(1 for t in entries.values() if t > cutoff)

    @staticmethod
    def _held_entity(item: HeldItem) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": "held",
            "RowKey": encode_key(item.held_id),
            "work_id": item.work_id,
            "user_id": int64(item.user_id),
            "lifecycle": item.lifecycle,
            "reason": item.reason,
            "held_at": item.held_at,
            "status": item.status,
            "decided_by": item.decided_by,
            "note": item.note,
        }
        if item.decided_at is not None:
            entity["decided_at"] = item.decided_at
        put_text(entity, "work_item", item.work_item)
        return entity

    @staticmethod
    def _held_item(entity: Any) -> HeldItem:
        return HeldItem(
            held_id=decode_key(entity["RowKey"]),
            work_id=entity["work_id"],
            user_id=int(plain(entity["user_id"])),
            lifecycle=entity["lifecycle"],
            work_item=get_text(entity, "work_item"),
            reason=entity.get("reason") or "",
            held_at=plain(entity["held_at"]),
            status=entity["status"],
            decided_at=plain(entity["decided_at"]) if entity.get("decided_at") is not None else None,
            decided_by=entity.get("decided_by") or "",
            note=entity.get("note") or "",
        )

    @translated
    def hold(self, item: HeldItem) -> bool:
        return self._tables.insert("held", self._held_entity(item))

    @translated
    def held(self, *, status: HeldStatus | None = "held", limit: int = 1000) -> list[HeldItem]:
        if status is None:
            entities = self._tables.query("held", "PartitionKey eq 'held'")
        else:
            entities = self._tables.query("held", "PartitionKey eq 'held' and status eq @status", {"status": status})
        items = [self._held_item(e) for e in entities]
        items.sort(key=lambda i: (i.held_at, i.held_id))
        return items[:limit]

    @translated
    def get_held(self, held_id: str) -> HeldItem | None:
        entity = self._tables.get("held", "held", encode_key(held_id))
        return None if entity is None else self._held_item(entity)

    @translated
    def decide_held(
        self, held_id: str, status: Literal["approved", "rejected"], *, by: str, at: datetime, note: str = ""
    ) -> HeldItem | None:
        for _ in range(CAS_ATTEMPTS):
            entity = self._tables.get("held", "held", encode_key(held_id))
            if entity is None:
                return None
            item = self._held_item(entity)
            if item.status != "held":
                return item
            decided = HeldItem(
                held_id=item.held_id,
                work_id=item.work_id,
                user_id=item.user_id,
                lifecycle=item.lifecycle,
                work_item=item.work_item,
                reason=item.reason,
                held_at=item.held_at,
                status=status,
                decided_at=at,
                decided_by=by,
                note=note,
            )
            if self._tables.replace_if("held", self._held_entity(decided), etag(entity)):
                return decided
        raise Retryable(f"held item {held_id} is too contended; try again")

    # Operations --------------------------------------------------------------------------------------------
    def health(self) -> bool:
        """True when the journal table answers a read (a missing table counts: it is created on first write)."""
        try:
            self._tables.client("journal").get_entity("health", "probe")
        except Exception as exc:
            from azure.core.exceptions import ResourceNotFoundError

            return isinstance(exc, ResourceNotFoundError)
        return True

    def close(self) -> None:
        self._tables.close()


def ensure_tables(service: Any, prefix: str = "", names: Iterable[str] = TABLES) -> None:
    """Create the tables up front (deployment scripts; the adapters also create a missing table on first use)."""
    from azure.core.exceptions import ResourceExistsError

    for name in names:
        try:
            service.create_table(f"{prefix}{name}")
        except ResourceExistsError:
            pass
