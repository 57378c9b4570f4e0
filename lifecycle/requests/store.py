"""Where ticket requests are kept: one record per ticket, written with compare-and-set.

Two adapters keep one contract: SQLite beside the embedded queue (local mode) and the ``requests`` table in
Azure Table storage. A record is small (the plan's work items are the largest part) and is written as JSON
under a version number: ``put(record, expected_version)`` succeeds only when the stored version is still the
one read, so a ticket webhook and a worker reporting a result never overwrite each other's change.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from lifecycle.errors import Retryable
from lifecycle.private_files import private_file

RequestStatus = Literal[
    "received",  # the trigger is queued; the ticket has not been read yet
    "ignored",  # the ticket matches no [[requests.types]]
    "awaiting_approval",  # the plan is posted; Halo's approval decides
    "scheduled",  # approved; some phases wait for their date (lifecycle pending)
    "running",  # approved; phases are queued or running
    "completed",
    "failed",
    "held",  # the mass-change guard holds a phase for an operator
    "rejected",
    "cancelled",
]
OPEN_STATUSES: frozenset[str] = frozenset({"received", "awaiting_approval"})
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "rejected", "cancelled"})


@dataclass(frozen=True)
class RequestRecord:
    """A ticket's request and where it stands."""

    request_id: str
    ticket_id: int
    status: RequestStatus
    message: str = ""
    type_name: str = ""
    kind: str = ""
    halo_user_id: int | None = None
    # Whether the Halo user was created for this request (a joiner not in Halo before).
    halo_user_created: bool = False
    # The posted plan: its digest, the digest of the ticket's inputs it came from, and its phases
    # ({"name", "due_at" (ISO or None), "label", "item" (work item JSON)}).
    plan_digest: str = ""
    inputs_digest: str = ""
    plan: tuple[dict[str, Any], ...] = ()
    posted_at: str | None = None
    # The ticket was read without an approval after the current plan was posted (a status that means
    # "approved" counts only after that, so an approval of an older plan never runs a newer one).
    seen_unapproved: bool = False
    # phase name -> {"outcome": scheduled|queued|completed|failed|held|skipped, "reason", "work_id", "due_at"}
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Notes whose posting failed (Halo unreachable) and the timer posts later.
    notes_owed: bool = False
    created_at: str = ""
    updated_at: str = ""
    version: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RequestRecord:
        data = json.loads(text)
        data["plan"] = tuple(data.get("plan") or ())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def answer(self) -> dict[str, Any]:
        """The flat JSON a runbook's output variables map (and ``GET /api/halo/requests/{id}``)."""
        return {
            "request_id": self.request_id,
            "status": self.status,
            "message": self.message,
            "ticket_id": self.ticket_id,
            "type": self.type_name,
            "kind": self.kind,
            "halo_user_id": self.halo_user_id,
            "plan_digest": self.plan_digest,
            "phases": {name: p.get("outcome") for name, p in self.phases.items()},
        }


def request_id_for(ticket_id: int) -> str:
    """One request per ticket: its id is the ticket's (readable in Halo's runbook variables)."""
    return f"ticket-{int(ticket_id)}"


class VersionConflict(Retryable):
    """Someone else wrote the record since it was read; read it again and redo the change."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request {request_id} changed while it was being updated", retry_after=0.5)


class RequestStore(Protocol):
    """The port."""

    def get(self, request_id: str) -> RequestRecord | None: ...

    def put(self, record: RequestRecord, *, expected_version: int) -> RequestRecord:
        """Write ``record`` if the stored version is ``expected_version`` (0: none stored); returns it as stored
        (version + 1). Raises ``VersionConflict`` otherwise."""
        ...

    def list(self, *, statuses: frozenset[str] | None = None, notes_owed: bool = False) -> list[RequestRecord]:
        """Records with one of ``statuses`` (all when None), or (``notes_owed``) those owing a note."""
        ...

    def close(self) -> None: ...


def update(
    store: RequestStore, request_id: str, change: Callable[[RequestRecord | None], RequestRecord | None]
) -> RequestRecord | None:
    """Read, change, write under the version read; on a conflict read again and redo (a few times)."""
    for _ in range(8):
        current = store.get(request_id)
        wanted = change(current)
        if wanted is None or wanted == current:
            return current
        now = datetime.now(UTC).isoformat()
        wanted = replace(wanted, updated_at=now, created_at=wanted.created_at or now)
        try:
            return store.put(wanted, expected_version=current.version if current is not None else 0)
        except VersionConflict:
            continue
    raise VersionConflict(request_id)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, ticket_id INTEGER NOT NULL, status TEXT NOT NULL, notes_owed INTEGER NOT NULL,
    version INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status);
"""


class EmbeddedRequestStore:
    """SQLite, beside the embedded queue and store (local mode)."""

    def __init__(self, path: Path) -> None:
        private_file(path)  # ticket requests carry personal data: owner-only
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def get(self, request_id: str) -> RequestRecord | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM requests WHERE request_id=?", (request_id,)).fetchone()
        return RequestRecord.from_json(row[0]) if row is not None else None

    def put(self, record: RequestRecord, *, expected_version: int) -> RequestRecord:
        stored = replace(record, version=expected_version + 1)
        values = (stored.ticket_id, stored.status, int(stored.notes_owed), stored.version, stored.to_json())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if expected_version == 0:
                    done = self._db.execute(
                        "INSERT OR IGNORE INTO requests (ticket_id, status, notes_owed, version, body, request_id)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (*values, stored.request_id),
                    ).rowcount
                else:
                    done = self._db.execute(
                        "UPDATE requests SET ticket_id=?, status=?, notes_owed=?, version=?, body=?"
                        " WHERE request_id=? AND version=?",
                        (*values, stored.request_id, expected_version),
                    ).rowcount
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        if not done:
            raise VersionConflict(record.request_id)
        return stored

    def list(self, *, statuses: frozenset[str] | None = None, notes_owed: bool = False) -> list[RequestRecord]:
        clauses: list[str] = []
        args: list[Any] = []
        if statuses is not None:
            clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
            args += sorted(statuses)
        if notes_owed:
            clauses.append("notes_owed=1")
        where = f" WHERE {' OR '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(f"SELECT body FROM requests{where} ORDER BY ticket_id", args).fetchall()
        return [RequestRecord.from_json(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
