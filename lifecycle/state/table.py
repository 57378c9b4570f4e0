"""The Azure Table storage adapter of the store port (and the parking place of dead-lettered work).

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
- ``deadletters``: dead-lettered work parked by the Service Bus adapter (RowKey = its sequence number).

Keys are percent-encoded (Table storage forbids ``/ \\ # ?`` and control characters in keys). Strings over
the 64 KiB property limit are split over numbered properties. Transient storage errors become ``Retryable``
(the worker backs off), authorisation errors ``ConfigurationError``.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar
from urllib.parse import quote, unquote

from lifecycle.errors import ConfigurationError, LifecycleError, Retryable
from lifecycle.queue import DeadLetteredMessage
from lifecycle.state import (
    AuditEntry,
    Change,
    Claim,
    GuardAdmission,
    HeldItem,
    HeldStatus,
    PendingAction,
    PersonRecord,
)

if TYPE_CHECKING:
    from lifecycle.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")

TABLES = ("journal", "people", "audit", "pending", "guard", "held", "deadletters")
_TEXT_CHUNK = 30_000  # characters; a string property holds 64 KiB of UTF-16
_BYTES_CHUNK = 60_000  # a binary property holds 64 KiB
_CAS_ATTEMPTS = 50
_KEY_SAFE = " -_.~:!$&'()*+,;=@"


def _key(value: str) -> str:
    return quote(value, safe=_KEY_SAFE)


def _unkey(value: str) -> str:
    return unquote(value)


def _int64(value: int) -> Any:
    from azure.data.tables import EdmType

    return (value, EdmType.INT64)


def _plain(value: Any) -> Any:
    """An entity value as a plain Python value (Int64 comes back wrapped, datetimes as a subclass)."""
    inner = getattr(value, "value", value)
    if isinstance(inner, datetime):
        return datetime.fromtimestamp(inner.timestamp(), UTC)
    return inner


def _put_text(entity: dict[str, Any], name: str, text: str) -> None:
    chunks = [text[i : i + _TEXT_CHUNK] for i in range(0, len(text), _TEXT_CHUNK)] or [""]
    entity[name] = chunks[0]
    for index, chunk in enumerate(chunks[1:], 1):
        entity[f"{name}__{index}"] = chunk


def _get_text(entity: dict[str, Any], name: str) -> str:
    parts = [str(entity.get(name) or "")]
    index = 1
    while f"{name}__{index}" in entity:
        parts.append(str(entity[f"{name}__{index}"]))
        index += 1
    return "".join(parts)


def _put_bytes(entity: dict[str, Any], name: str, data: bytes) -> None:
    chunks = [data[i : i + _BYTES_CHUNK] for i in range(0, len(data), _BYTES_CHUNK)] or [b""]
    entity[name] = chunks[0]
    entity[f"{name}__n"] = len(chunks)
    for index, chunk in enumerate(chunks[1:], 1):
        entity[f"{name}__{index}"] = chunk


def _get_bytes(entity: dict[str, Any], name: str) -> bytes:
    count = int(_plain(entity.get(f"{name}__n", 1)))
    return b"".join(bytes(entity.get(name if i == 0 else f"{name}__{i}") or b"") for i in range(count))


def _is_table_missing(exc: BaseException) -> bool:
    return "TableNotFound" in str(exc)


def _translated(method: Callable[P, T]) -> Callable[P, T]:
    """Storage errors as the port's errors: transient -> Retryable, refused -> ConfigurationError."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

        try:
            return method(*args, **kwargs)
        except LifecycleError:
            raise
        except ClientAuthenticationError as exc:
            raise ConfigurationError(
                f"Table storage refused the credentials: {exc.message} (the identity needs the Storage Table "
                "Data Contributor role; check LIFECYCLE_TABLE_ENDPOINT)"
            ) from exc
        except HttpResponseError as exc:
            if exc.status_code in (401, 403):
                raise ConfigurationError(
                    f"Table storage refused access ({exc.status_code}): the identity needs the Storage Table Data "
                    "Contributor role"
                ) from exc
            raise Retryable(f"Table storage failed ({exc.status_code}): {exc.reason}") from exc
        except AzureError as exc:
            raise Retryable(f"Table storage unreachable: {exc.message}") from exc

    return wrapper


def _service_from_settings(settings: Settings) -> Any:
    from azure.data.tables import TableServiceClient

    connection_string = settings.table_connection_string.get_secret_value()
    if connection_string:
        return TableServiceClient.from_connection_string(connection_string)
    if settings.table_endpoint:
        from azure.identity import DefaultAzureCredential

        return TableServiceClient(endpoint=settings.table_endpoint, credential=DefaultAzureCredential())
    raise ConfigurationError(
        "Table storage needs LIFECYCLE_TABLE_ENDPOINT (managed identity) or LIFECYCLE_TABLE_CONNECTION_STRING "
        "(development)"
    )


class _Tables:
    """Table clients by short name, creating a table the first time it turns out to be missing."""

    def __init__(self, service: Any, prefix: str) -> None:
        if prefix and not (prefix[0].isalpha() and prefix.isalnum()):
            raise ValueError(f"table prefix must be letters and digits, starting with a letter: {prefix!r}")
        self.service = service
        self.prefix = prefix
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def client(self, name: str) -> Any:
        with self._lock:
            if name not in self._clients:
                self._clients[name] = self.service.get_table_client(f"{self.prefix}{name}")
            return self._clients[name]

    def call(self, name: str, operation: Callable[[Any], T]) -> T:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        table = self.client(name)
        try:
            return operation(table)
        except ResourceNotFoundError as exc:
            if not _is_table_missing(exc):
                raise
        try:
            self.service.create_table(f"{self.prefix}{name}")
        except ResourceExistsError:
            pass  # another worker created it in the meantime
        return operation(table)

    def get(self, name: str, partition: str, row: str) -> Any | None:
        from azure.core.exceptions import ResourceNotFoundError

        def read(table: Any) -> Any | None:
            try:
                return table.get_entity(partition, row)
            except ResourceNotFoundError as exc:
                if _is_table_missing(exc):
                    raise
                return None

        return self.call(name, read)

    def query(self, name: str, query: str, parameters: dict[str, Any] | None = None) -> list[Any]:
        """Entities matching an OData filter (every entity when ``query`` is empty)."""
        if not query:
            return self.call(name, lambda t: list(t.list_entities()))
        return self.call(name, lambda t: list(t.query_entities(query, parameters=parameters or {})))

    def insert(self, name: str, entity: dict[str, Any]) -> bool:
        """Insert if absent; False when the entity exists."""
        from azure.core.exceptions import ResourceExistsError

        def insert(table: Any) -> bool:
            try:
                table.create_entity(entity)
                return True
            except ResourceExistsError:
                return False

        return self.call(name, insert)

    def replace_if(self, name: str, entity: dict[str, Any], etag: str) -> bool:
        """Replace only if unchanged since ``etag`` was read; False when someone else changed it."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        def replace(table: Any) -> bool:
            try:
                table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
                return True
            except ResourceModifiedError:
                return False
            except ResourceNotFoundError as exc:
                if _is_table_missing(exc):
                    raise
                return False

        return self.call(name, replace)

    def upsert(self, name: str, entity: dict[str, Any]) -> None:
        from azure.data.tables import UpdateMode

        self.call(name, lambda t: t.upsert_entity(entity, mode=UpdateMode.REPLACE))

    def delete_if(self, name: str, partition: str, row: str, etag: str) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        def delete(table: Any) -> bool:
            try:
                table.delete_entity(partition, row, etag=etag, match_condition=MatchConditions.IfNotModified)
                return True
            except ResourceModifiedError:
                return False
            except ResourceNotFoundError as exc:
                if _is_table_missing(exc):
                    raise
                return False

        return self.call(name, delete)

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
        self.service.close()


def _etag(entity: Any) -> str:
    return str(entity.metadata["etag"])


class TableStore:
    """A ``StateStore`` on Azure Table storage; safe to share between threads and between instances.

    Args:
        service: An ``azure.data.tables.TableServiceClient``.
        prefix: Prepended to every table name (letters and digits; tests use one per test).
        clock: UTC epoch seconds (leases, staged-work times).
    """

    def __init__(self, service: Any, *, prefix: str = "", clock: Callable[[], float] = time.time) -> None:
        self._tables = _Tables(service, prefix)
        self._clock = clock
        self._sequence_lock = threading.Lock()
        self._last_sequence = 0

    @classmethod
    def from_settings(cls, settings: Settings, *, prefix: str = "") -> TableStore:
        """The store of the settings: ``LIFECYCLE_TABLE_ENDPOINT`` with the managed identity, or
        ``LIFECYCLE_TABLE_CONNECTION_STRING`` (Azurite: ``UseDevelopmentStorage=true``)."""
        return cls(_service_from_settings(settings), prefix=prefix)

    # Journal -----------------------------------------------------------------------------------------------
    @_translated
    def claim_step(self, work_id: str, step: str, owner: str, lease_seconds: float) -> Claim:
        partition, row = _key(work_id), _key(step)
        for _ in range(_CAS_ATTEMPTS):
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
            result = _get_text(entity, "result")
            if entity.get("status") == "done":
                return Claim("done", json.loads(result) if result else {})
            holder = entity.get("owner")
            if holder != owner and float(_plain(entity.get("lease_until", 0.0))) > now:
                return Claim("busy")
            # What the interrupted holder noted before it began (note_step) stays for whoever takes over.
            _put_text(claimed, "result", result)
            if self._tables.replace_if("journal", claimed, _etag(entity)):
                return Claim("acquired", taken_over=holder != owner, note=json.loads(result) if result else None)
        return Claim("busy")

    def _rewrite_claim(self, work_id: str, step: str, owner: str, status: str, payload: dict[str, Any]) -> None:
        """Rewrite ``owner``'s in-progress claim with ``status`` and ``payload`` (ETag-conditional, retried).

        Nothing is written when the claim is gone or belongs to another worker: that worker finishes the step.
        """
        partition, row = _key(work_id), _key(step)
        for _ in range(_CAS_ATTEMPTS):
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
                "lease_until": float(_plain(entity.get("lease_until", 0.0))),
                "updated_at": float(self._clock()),
            }
            _put_text(rewritten, "result", json.dumps(payload, default=str))
            if self._tables.replace_if("journal", rewritten, _etag(entity)):
                return

    @_translated
    def finish_step(self, work_id: str, step: str, owner: str, result: dict[str, Any]) -> None:
        self._rewrite_claim(work_id, step, owner, "done", result)

    @_translated
    def note_step(self, work_id: str, step: str, owner: str, note: dict[str, Any]) -> None:
        self._rewrite_claim(work_id, step, owner, "in_progress", note)

    @_translated
    def resolve_step(self, work_id: str, step: str, *, done: bool) -> str | None:
        partition, row = _key(work_id), _key(step)
        for _ in range(_CAS_ATTEMPTS):
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
                    "lease_until": float(_plain(entity.get("lease_until", 0.0))),
                    "updated_at": float(self._clock()),
                }
                _put_text(resolved, "result", json.dumps({"outcome": "changed", "resolved_by": "operator"}))
                if self._tables.replace_if("journal", resolved, _etag(entity)):
                    return status
            elif self._tables.delete_if("journal", partition, row, _etag(entity)):
                return status
        raise Retryable(f"step {step} of {work_id} is too contended; try again")

    @_translated
    def release_step(self, work_id: str, step: str, owner: str) -> None:
        partition, row = _key(work_id), _key(step)
        for _ in range(_CAS_ATTEMPTS):
            entity = self._tables.get("journal", partition, row)
            if entity is None or entity.get("owner") != owner or entity.get("status") != "in_progress":
                return
            if self._tables.delete_if("journal", partition, row, _etag(entity)):
                return

    # People ------------------------------------------------------------------------------------------------
    @_translated
    def get_person(self, user_id: int) -> PersonRecord | None:
        entity = self._tables.get("people", str(user_id), "person")
        if entity is None:
            return None
        return PersonRecord(
            user_id=user_id,
            status=entity["status"],
            last_event_at=_plain(entity["last_event_at"]),
            last_work_id=entity["last_work_id"],
            dn=entity.get("dn") or None,
            updated_at=_plain(entity["updated_at"]) if entity.get("updated_at") is not None else None,
            fingerprint=entity.get("fingerprint") or "",
        )

    @_translated
    def put_person(self, record: PersonRecord) -> None:
        self._tables.upsert(
            "people",
            {
                "PartitionKey": str(record.user_id),
                "RowKey": "person",
                "user_id": _int64(record.user_id),
                "status": record.status,
                "last_event_at": record.last_event_at,
                "last_work_id": record.last_work_id,
                "dn": record.dn or "",
                "updated_at": datetime.fromtimestamp(self._clock(), UTC),
                "fingerprint": record.fingerprint,
            },
        )

    @_translated
    def count_people(self, status: Literal["active", "left"]) -> int:
        return len(self._tables.query("people", "status eq @status", {"status": status}))

    # Audit -------------------------------------------------------------------------------------------------
    def _next_sequence(self) -> int:
        # Nanoseconds of the write, kept strictly increasing within the process: insertion order among
        # entries that carry the same time.
        with self._sequence_lock:
            self._last_sequence = max(self._last_sequence + 1, time.time_ns())
            return self._last_sequence

    @_translated
    def append_audit(self, entry: AuditEntry) -> None:
        sequence = self._next_sequence()
        micros = round(entry.at.timestamp() * 1_000_000)
        entity: dict[str, Any] = {
            "PartitionKey": str(entry.user_id),
            "RowKey": f"{micros:019d}-{sequence:020d}",
            "at": entry.at,
            "sequence": _int64(sequence),
            "work_id": entry.work_id,
            "user_id": _int64(entry.user_id),
            "step": entry.step,
            "action": entry.action,
            "target": entry.target,
            "outcome": entry.outcome,
            "dn": entry.dn or "",
        }
        changes = [{"attribute": c.attribute, "before": c.before, "after": c.after} for c in entry.changes]
        _put_text(entity, "changes", json.dumps(changes, default=str))
        _put_text(entity, "requested_by", json.dumps(entry.requested_by, default=str))
        _put_text(entity, "message", entry.message)
        self._tables.insert("audit", entity)

    @_translated
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
            at=_plain(entity["at"]),
            work_id=entity["work_id"],
            user_id=int(_plain(entity["user_id"])),
            step=entity["step"],
            action=entity["action"],
            target=entity["target"],
            outcome=entity["outcome"],
            dn=entity.get("dn") or None,
            changes=tuple(
                Change(c["attribute"], c["before"], c["after"]) for c in json.loads(_get_text(entity, "changes"))
            ),
            requested_by=json.loads(_get_text(entity, "requested_by") or "{}"),
            message=_get_text(entity, "message"),
            sequence=int(_plain(entity["sequence"])),
        )

    # Staged work -------------------------------------------------------------------------------------------
    @_translated
    def add_pending(self, pending: PendingAction) -> None:
        entity: dict[str, Any] = {
            "PartitionKey": str(pending.user_id),
            "RowKey": _key(pending.key),
            "user_id": _int64(pending.user_id),
            "due_at": pending.due_at,
            "created_at": pending.created_at,
            "description": pending.description,
        }
        _put_text(entity, "work_item", pending.work_item)
        self._tables.upsert("pending", entity)

    @_translated
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
            user_id=int(_plain(entity["user_id"])),
            key=_unkey(entity["RowKey"]),
            due_at=_plain(entity["due_at"]),
            work_item=_get_text(entity, "work_item"),
            created_at=_plain(entity["created_at"]),
            description=entity.get("description") or "",
        )

    @_translated
    def remove_pending(self, user_id: int, key: str) -> bool:
        entity = self._tables.get("pending", str(user_id), _key(key))
        if entity is None:
            return False
        return self._tables.delete_if("pending", str(user_id), _key(key), _etag(entity))

    @_translated
    def cancel_pending(self, user_id: int) -> list[PendingAction]:
        entities = self._tables.query("pending", "PartitionKey eq @user", {"user": str(user_id)})
        cancelled = []
        for entity in entities:
            if self._tables.delete_if("pending", entity["PartitionKey"], entity["RowKey"], _etag(entity)):
                cancelled.append(self._pending(entity))
        cancelled.sort(key=lambda p: (p.due_at, p.key))
        return cancelled

    # Mass-change guard -------------------------------------------------------------------------------------
    def _window(self, window: str = "destructive") -> tuple[Any | None, dict[str, float]]:
        entity = self._tables.get("guard", "window", _key(window))
        entries: dict[str, float] = json.loads(_get_text(entity, "entries") or "{}") if entity is not None else {}
        return entity, entries

    @_translated
    def admit_destructive(
        self, work_id: str, *, now: datetime, window_seconds: float, limit: int, window: str = "destructive"
    ) -> GuardAdmission:
        at = now.timestamp()
        for _ in range(_CAS_ATTEMPTS):
            entity, entries = self._window(window)
            entries = {w: t for w, t in entries.items() if t > at - window_seconds}
            if work_id in entries:
                return GuardAdmission(True, len(entries))
            if len(entries) >= limit:
                return GuardAdmission(False, len(entries))
            entries[work_id] = at
            updated: dict[str, Any] = {"PartitionKey": "window", "RowKey": _key(window)}
            _put_text(updated, "entries", json.dumps(entries, separators=(",", ":")))
            # One entity under its ETag: of two workers racing for the last place, one write fails and re-reads.
            written = (
                self._tables.insert("guard", updated)
                if entity is None
                else self._tables.replace_if("guard", updated, _etag(entity))
            )
            if written:
                return GuardAdmission(True, len(entries))
        raise Retryable("the mass-change guard's window is too contended; try again")

    @_translated
    def destructive_count(self, *, now: datetime, window_seconds: float, window: str = "destructive") -> int:
        _, entries = self._window(window)
        cutoff = now.timestamp() - window_seconds
        return sum(1 for t in entries.values() if t > cutoff)

    @staticmethod
    def _held_entity(item: HeldItem) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": "held",
            "RowKey": _key(item.held_id),
            "work_id": item.work_id,
            "user_id": _int64(item.user_id),
            "lifecycle": item.lifecycle,
            "reason": item.reason,
            "held_at": item.held_at,
            "status": item.status,
            "decided_by": item.decided_by,
            "note": item.note,
        }
        if item.decided_at is not None:
            entity["decided_at"] = item.decided_at
        _put_text(entity, "work_item", item.work_item)
        return entity

    @staticmethod
    def _held_item(entity: Any) -> HeldItem:
        return HeldItem(
            held_id=_unkey(entity["RowKey"]),
            work_id=entity["work_id"],
            user_id=int(_plain(entity["user_id"])),
            lifecycle=entity["lifecycle"],
            work_item=_get_text(entity, "work_item"),
            reason=entity.get("reason") or "",
            held_at=_plain(entity["held_at"]),
            status=entity["status"],
            decided_at=_plain(entity["decided_at"]) if entity.get("decided_at") is not None else None,
            decided_by=entity.get("decided_by") or "",
            note=entity.get("note") or "",
        )

    @_translated
    def hold(self, item: HeldItem) -> bool:
        return self._tables.insert("held", self._held_entity(item))

    @_translated
    def held(self, *, status: HeldStatus | None = "held", limit: int = 1000) -> list[HeldItem]:
        if status is None:
            entities = self._tables.query("held", "PartitionKey eq 'held'")
        else:
            entities = self._tables.query("held", "PartitionKey eq 'held' and status eq @status", {"status": status})
        items = [self._held_item(e) for e in entities]
        items.sort(key=lambda i: (i.held_at, i.held_id))
        return items[:limit]

    @_translated
    def get_held(self, held_id: str) -> HeldItem | None:
        entity = self._tables.get("held", "held", _key(held_id))
        return None if entity is None else self._held_item(entity)

    @_translated
    def decide_held(
        self, held_id: str, status: Literal["approved", "rejected"], *, by: str, at: datetime, note: str = ""
    ) -> HeldItem | None:
        for _ in range(_CAS_ATTEMPTS):
            entity = self._tables.get("held", "held", _key(held_id))
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
            if self._tables.replace_if("held", self._held_entity(decided), _etag(entity)):
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


class TableParking:
    """Dead-lettered work parked with its reason in the ``deadletters`` table (see lifecycle.queue.servicebus)."""

    def __init__(self, service: Any, *, prefix: str = "") -> None:
        self._tables = _Tables(service, prefix)

    @classmethod
    def from_settings(cls, settings: Settings, *, prefix: str = "") -> TableParking:
        return cls(_service_from_settings(settings), prefix=prefix)

    @_translated
    def park(self, entry: DeadLetteredMessage) -> None:
        entity: dict[str, Any] = {
            "PartitionKey": "parked",
            "RowKey": f"{entry.sequence_number:020d}",
            "sequence_number": _int64(entry.sequence_number),
            "message_id": entry.message_id,
            "session_id": entry.session_id,
            "delivery_count": entry.delivery_count,
            "enqueued_at": entry.enqueued_at,
            "dead_lettered_at": entry.dead_lettered_at,
            "reason": entry.reason,
        }
        _put_text(entity, "description", entry.description)
        _put_text(entity, "properties", json.dumps(entry.properties, sort_keys=True))
        _put_bytes(entity, "body", entry.body)
        self._tables.upsert("deadletters", entity)

    @staticmethod
    def _entry(entity: Any) -> DeadLetteredMessage:
        return DeadLetteredMessage(
            message_id=entity["message_id"],
            session_id=entity["session_id"],
            body=_get_bytes(entity, "body"),
            properties=json.loads(_get_text(entity, "properties") or "{}"),
            delivery_count=int(_plain(entity["delivery_count"])),
            enqueued_at=_plain(entity["enqueued_at"]),
            dead_lettered_at=_plain(entity["dead_lettered_at"]),
            reason=entity["reason"],
            description=_get_text(entity, "description"),
            sequence_number=int(_plain(entity["sequence_number"])),
        )

    @_translated
    def parked(self, limit: int = 100) -> list[DeadLetteredMessage]:
        entries = [self._entry(e) for e in self._tables.query("deadletters", "PartitionKey eq 'parked'")]
        entries.sort(key=lambda m: (m.dead_lettered_at, m.sequence_number))
        return entries[:limit]

    @_translated
    def get(self, sequence_number: int) -> DeadLetteredMessage | None:
        entity = self._tables.get("deadletters", "parked", f"{sequence_number:020d}")
        return None if entity is None else self._entry(entity)

    @_translated
    def remove(self, sequence_number: int) -> bool:
        entity = self._tables.get("deadletters", "parked", f"{sequence_number:020d}")
        if entity is None:
            return False
        return self._tables.delete_if("deadletters", "parked", f"{sequence_number:020d}", _etag(entity))

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
