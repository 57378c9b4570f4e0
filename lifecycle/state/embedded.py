"""The embedded store: SQLite, for local mode, with the same contract as the Table storage adapter."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from lifecycle.private_files import private_file
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    work_id TEXT NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL, owner TEXT NOT NULL,
    lease_until REAL NOT NULL, result TEXT, updated_at REAL NOT NULL, PRIMARY KEY (work_id, step)
);
CREATE TABLE IF NOT EXISTS person (
    user_id INTEGER PRIMARY KEY, status TEXT NOT NULL, last_event_at REAL NOT NULL, last_work_id TEXT NOT NULL,
    dn TEXT, updated_at REAL NOT NULL, fingerprint TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS audit (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, work_id TEXT NOT NULL, user_id INTEGER NOT NULL,
    step TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL, dn TEXT,
    changes TEXT NOT NULL, requested_by TEXT NOT NULL, message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (
    user_id INTEGER NOT NULL, key TEXT NOT NULL, due_at REAL NOT NULL, work_item TEXT NOT NULL,
    created_at REAL NOT NULL, description TEXT NOT NULL, PRIMARY KEY (user_id, key)
);
CREATE TABLE IF NOT EXISTS guard_window (work_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS gate (
    user_id INTEGER PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL, waiting TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS guard_window_at ON guard_window (at);
CREATE TABLE IF NOT EXISTS marker (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sliding_window (
    name TEXT NOT NULL, work_id TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (name, work_id)
);
CREATE INDEX IF NOT EXISTS sliding_window_at ON sliding_window (name, at);
CREATE TABLE IF NOT EXISTS held (
    held_id TEXT PRIMARY KEY, work_id TEXT NOT NULL, user_id INTEGER NOT NULL, lifecycle TEXT NOT NULL,
    work_item TEXT NOT NULL, reason TEXT NOT NULL, held_at REAL NOT NULL, status TEXT NOT NULL,
    decided_at REAL, decided_by TEXT NOT NULL DEFAULT '', note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS held_status ON held (status, held_at);
CREATE INDEX IF NOT EXISTS audit_user ON audit (user_id, at);
CREATE INDEX IF NOT EXISTS audit_work ON audit (work_id);
-- The console: items by outcome over the last day, and people found by a name, account name or UPN.
-- One row per work item, kept with the audit: its latest entry's time and outcome, and whether a step changed.
CREATE TABLE IF NOT EXISTS work_outcome (
    work_id TEXT PRIMARY KEY, at REAL NOT NULL, last TEXT NOT NULL, changed INTEGER NOT NULL
);
-- Work items per hour of their latest entry and outcome, kept with work_outcome: the console's day in a
-- few rows, however many items the audit holds.
CREATE TABLE IF NOT EXISTS outcome_hourly (
    hour INTEGER NOT NULL, outcome TEXT NOT NULL, items INTEGER NOT NULL, PRIMARY KEY (hour, outcome)
);
CREATE TABLE IF NOT EXISTS person_key (key TEXT NOT NULL, user_id INTEGER NOT NULL, PRIMARY KEY (key, user_id));
"""

# Attributes whose values find a person in the console's search (lower-cased, whole value and each word).
_SEARCH_ATTRIBUTES = frozenset(
    {"samaccountname", "userprincipalname", "displayname", "cn", "name", "givenname", "sn", "mail"}
)


def _final(last: str, changed: bool) -> str:
    """A work item's outcome as the console counts it (see ``EmbeddedStore.outcome_counts``)."""
    return "changed" if last == "unchanged" and changed else last


def _search_keys(entry: AuditEntry) -> set[str]:
    keys: set[str] = set()
    for change in entry.changes:
        if change.attribute.lower() in _SEARCH_ATTRIBUTES and isinstance(change.after, str) and change.after:
            value = change.after.strip().lower()
            keys.add(value)
            keys.update(word for word in value.split() if len(word) > 1)
    return keys


def _ts(value: datetime) -> float:
    return value.timestamp()


def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


class EmbeddedStore:
    """SQLite-backed store, safe across threads of one process and across processes."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        private_file(path)  # the audit trail and journal hold personal data: owner-only
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # Journal -----------------------------------------------------------------------------------------------
    def claim_step(self, work_id: str, step: str, owner: str, lease_seconds: float) -> Claim:
        now = self._clock()
        with self._transaction() as db:
            row = db.execute(
                "SELECT status, owner, lease_until, result FROM journal WHERE work_id=? AND step=?", (work_id, step)
            ).fetchone()
            taken_over = False
            note: dict[str, Any] | None = None
            if row is not None:
                status, holder, lease_until, result = row
                if status == "done":
                    return Claim("done", json.loads(result) if result else {})
                if holder != owner and lease_until > now:
                    return Claim("busy")
                taken_over = holder != owner
                note = json.loads(result) if result else None
            db.execute(
                "INSERT INTO journal (work_id, step, status, owner, lease_until, updated_at)"
                " VALUES (?, ?, 'in_progress', ?, ?, ?)"
                " ON CONFLICT (work_id, step) DO UPDATE SET owner=excluded.owner,"
                " lease_until=excluded.lease_until, updated_at=excluded.updated_at",
                (work_id, step, owner, now + lease_seconds, now),
            )
            return Claim("acquired", taken_over=taken_over, note=note)

    def finish_step(self, work_id: str, step: str, owner: str, result: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE journal SET status='done', result=?, updated_at=? WHERE work_id=? AND step=? AND owner=?",
                (json.dumps(result, default=str), self._clock(), work_id, step, owner),
            )

    def release_step(self, work_id: str, step: str, owner: str) -> None:
        with self._transaction() as db:
            db.execute(
                "DELETE FROM journal WHERE work_id=? AND step=? AND owner=? AND status='in_progress'",
                (work_id, step, owner),
            )

    def note_step(self, work_id: str, step: str, owner: str, note: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE journal SET result=?, updated_at=? WHERE work_id=? AND step=? AND owner=?"
                " AND status='in_progress'",
                (json.dumps(note, default=str), self._clock(), work_id, step, owner),
            )

    def resolve_step(self, work_id: str, step: str, *, done: bool) -> str | None:
        with self._transaction() as db:
            row = db.execute("SELECT status FROM journal WHERE work_id=? AND step=?", (work_id, step)).fetchone()
            if row is None or row[0] == "done":
                return None if row is None else str(row[0])
            if done:
                db.execute(
                    "UPDATE journal SET status='done', result=?, updated_at=? WHERE work_id=? AND step=?",
                    (json.dumps({"outcome": "changed", "resolved_by": "operator"}), self._clock(), work_id, step),
                )
            else:
                db.execute("DELETE FROM journal WHERE work_id=? AND step=?", (work_id, step))
            return str(row[0])

    # People ------------------------------------------------------------------------------------------------
    def get_person(self, user_id: int) -> PersonRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT status, last_event_at, last_work_id, dn, updated_at, fingerprint FROM person WHERE user_id=?",
                (user_id,),
            ).fetchone()
        if row is None:
            return None
        return PersonRecord(user_id, row[0], _dt(row[1]), row[2], row[3], _dt(row[4]), row[5])

    def put_person(self, record: PersonRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO person (user_id, status, last_event_at, last_work_id, dn, updated_at,"
                " fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.user_id,
                    record.status,
                    _ts(record.last_event_at),
                    record.last_work_id,
                    record.dn,
                    self._clock(),
                    record.fingerprint,
                ),
            )

    # Audit -------------------------------------------------------------------------------------------------
    def append_audit(self, entry: AuditEntry) -> None:
        changes = [{"attribute": c.attribute, "before": c.before, "after": c.after} for c in entry.changes]
        with self._transaction() as db:
            db.execute(
                "INSERT INTO audit (at, work_id, user_id, step, action, target, outcome, dn, changes, requested_by,"
                " message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    _ts(entry.at),
                    entry.work_id,
                    entry.user_id,
                    entry.step,
                    entry.action,
                    entry.target,
                    entry.outcome,
                    entry.dn,
                    json.dumps(changes, default=str),
                    json.dumps(entry.requested_by, default=str),
                    entry.message,
                ),
            )
            self._count_outcome(db, entry)
            keys = _search_keys(entry)
            if keys:
                db.executemany(
                    "INSERT OR IGNORE INTO person_key (key, user_id) VALUES (?, ?)",
                    [(key, entry.user_id) for key in keys],
                )

    @staticmethod
    def _count_outcome(db: sqlite3.Connection, entry: AuditEntry) -> None:
        """Move the entry's work item to its new (hour, outcome) in the console's counts."""
        at, changed = _ts(entry.at), entry.outcome == "changed"
        row = db.execute("SELECT at, last, changed FROM work_outcome WHERE work_id=?", (entry.work_id,)).fetchone()
        if row is not None:
            db.execute(
                "UPDATE outcome_hourly SET items=items-1 WHERE hour=? AND outcome=?",
                (int(row[0] // 3600), _final(row[1], bool(row[2]))),
            )
            at, changed = max(at, row[0]), changed or bool(row[2])
        db.execute(
            "INSERT INTO work_outcome (work_id, at, last, changed) VALUES (?, ?, ?, ?) ON CONFLICT (work_id)"
            " DO UPDATE SET at=excluded.at, last=excluded.last, changed=excluded.changed",
            (entry.work_id, at, entry.outcome, int(changed)),
        )
        db.execute(
            "INSERT INTO outcome_hourly (hour, outcome, items) VALUES (?, ?, 1) ON CONFLICT (hour, outcome)"
            " DO UPDATE SET items=items+1",
            (int(at // 3600), _final(entry.outcome, changed)),
        )

    def audit(
        self,
        *,
        user_id: int | None = None,
        work_id: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[AuditEntry]:
        clauses: list[str] = []
        args: list[Any] = []
        if user_id is not None:
            clauses.append("user_id=?")
            args.append(user_id)
        if work_id is not None:
            clauses.append("work_id=?")
            args.append(work_id)
        if since is not None:
            clauses.append("at>=?")
            args.append(_ts(since))
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        with self._lock:
            rows = self._db.execute(
                "SELECT sequence, at, work_id, user_id, step, action, target, outcome, dn, changes, requested_by,"
                f" message FROM audit{where} ORDER BY sequence LIMIT ?",
                (*args, limit),
            ).fetchall()
        return self._audit_rows(rows)

    @staticmethod
    def _audit_rows(rows: list[Any]) -> list[AuditEntry]:
        return [
            AuditEntry(
                at=_dt(r[1]),
                work_id=r[2],
                user_id=r[3],
                step=r[4],
                action=r[5],
                target=r[6],
                outcome=r[7],
                dn=r[8],
                changes=tuple(Change(c["attribute"], c["before"], c["after"]) for c in json.loads(r[9])),
                requested_by=json.loads(r[10]),
                message=r[11],
                sequence=r[0],
            )
            for r in rows
        ]

    # The console's queries (indexed; optional methods of the port, see lifecycle/console/queries.py) ------
    def audit_page(self, user_id: int, *, before: int | None = None, limit: int = 50) -> list[AuditEntry]:
        """One person's audit entries, newest first, older than sequence ``before`` (paging)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sequence, at, work_id, user_id, step, action, target, outcome, dn, changes, requested_by,"
                " message FROM audit WHERE user_id=? AND sequence<? ORDER BY sequence DESC LIMIT ?",
                (user_id, before if before is not None else 2**62, limit),
            ).fetchall()
        return self._audit_rows(rows)

    def outcome_counts(self, since: datetime) -> dict[str, int]:
        """Work items whose latest audit entry falls in the hours from ``since`` on, by outcome: the latest
        entry's outcome, except that an item whose last step changed nothing but an earlier one did counts as
        changed. Hour by hour: the first hour counts whole."""
        with self._lock:
            rows = self._db.execute(
                "SELECT outcome, SUM(items) FROM outcome_hourly WHERE hour>=? GROUP BY outcome HAVING SUM(items)>0",
                (int(_ts(since) // 3600),),
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def search_people(self, text: str, *, limit: int = 50) -> list[int]:
        """Halo ids of people whose name, account name, UPN or mail starts with ``text`` (case-insensitive)."""
        key = text.strip().lower()
        if not key:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT user_id FROM person_key WHERE key>=? AND key<? ORDER BY user_id LIMIT ?",
                (key, key + "\uffff", limit),
            ).fetchall()
        return [int(r[0]) for r in rows]

    # Staged work -------------------------------------------------------------------------------------------
    def add_pending(self, pending: PendingAction) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO pending (user_id, key, due_at, work_item, created_at, description)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    pending.user_id,
                    pending.key,
                    _ts(pending.due_at),
                    pending.work_item,
                    _ts(pending.created_at),
                    pending.description,
                ),
            )

    def pending(self, *, user_id: int | None = None, due_before: datetime | None = None) -> list[PendingAction]:
        clauses: list[str] = []
        args: list[Any] = []
        if user_id is not None:
            clauses.append("user_id=?")
            args.append(user_id)
        if due_before is not None:
            clauses.append("due_at<=?")
            args.append(_ts(due_before))
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT user_id, key, due_at, work_item, created_at, description FROM pending{where} ORDER BY due_at",
                args,
            ).fetchall()
        return [PendingAction(r[0], r[1], _dt(r[2]), r[3], _dt(r[4]), r[5]) for r in rows]

    def remove_pending(self, user_id: int, key: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM pending WHERE user_id=? AND key=?", (user_id, key)).rowcount > 0

    def cancel_pending(self, user_id: int) -> list[PendingAction]:
        cancelled = self.pending(user_id=user_id)
        with self._transaction() as db:
            db.execute("DELETE FROM pending WHERE user_id=?", (user_id,))
        return cancelled

    def count_people(self, status: Literal["active", "left"]) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM person WHERE status=?", (status,)).fetchone()
        return int(row[0])

    # Markers -----------------------------------------------------------------------------------------------
    def get_marker(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM marker WHERE name=?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def put_marker(self, name: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO marker (name, value) VALUES (?, ?)", (name, value))

    # Person gates ------------------------------------------------------------------------------------------
    def get_gate(self, user_id: int) -> PersonGate | None:
        with self._lock:
            row = self._db.execute("SELECT holder, until, waiting FROM gate WHERE user_id=?", (user_id,)).fetchone()
        return None if row is None else PersonGate(user_id, row[0], _dt(row[1]), tuple(json.loads(row[2])))

    def put_gate(self, gate: PersonGate) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO gate (user_id, holder, until, waiting) VALUES (?, ?, ?, ?)",
                (gate.user_id, gate.holder, _ts(gate.until), json.dumps(list(gate.waiting))),
            )

    def drop_gate(self, user_id: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM gate WHERE user_id=?", (user_id,))

    # Mass-change guard -------------------------------------------------------------------------------------
    @staticmethod
    def _window(window: str) -> tuple[str, str, tuple[str, ...]]:
        """The table and the condition holding one named window (the destructive one keeps its own table)."""
        if window == "destructive":
            return "guard_window", "1=1", ()
        return "sliding_window", "name=?", (window,)

    def admit_destructive(
        self, work_id: str, *, now: datetime, window_seconds: float, limit: int, window: str = "destructive"
    ) -> GuardAdmission:
        at = _ts(now)
        table, where, name = self._window(window)
        # BEGIN IMMEDIATE takes the write lock first, so the count and the insert are one decision across
        # processes: two workers cannot both take the last place in the window.
        with self._transaction() as db:
            db.execute(f"DELETE FROM {table} WHERE {where} AND at <= ?", (*name, at - window_seconds))
            count = int(db.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", name).fetchone()[0])
            found = db.execute(f"SELECT 1 FROM {table} WHERE {where} AND work_id=?", (*name, work_id))
            if found.fetchone() is not None:
                return GuardAdmission(True, count)
            if count >= limit:
                return GuardAdmission(False, count)
            if name:
                db.execute("INSERT INTO sliding_window (name, work_id, at) VALUES (?, ?, ?)", (*name, work_id, at))
            else:
                db.execute("INSERT INTO guard_window (work_id, at) VALUES (?, ?)", (work_id, at))
            return GuardAdmission(True, count + 1)

    def touch_window(self, work_id: str, *, now: datetime, window: str) -> None:
        table, where, name = self._window(window)
        with self._transaction() as db:
            db.execute(f"UPDATE {table} SET at=? WHERE {where} AND work_id=?", (_ts(now), *name, work_id))

    def destructive_count(self, *, now: datetime, window_seconds: float, window: str = "destructive") -> int:
        table, where, name = self._window(window)
        with self._lock:
            row = self._db.execute(
                f"SELECT COUNT(*) FROM {table} WHERE {where} AND at > ?",
                (*name, _ts(now) - window_seconds),
            ).fetchone()
        return int(row[0])

    _HELD_COLUMNS = (
        "held_id, work_id, user_id, lifecycle, work_item, reason, held_at, status, decided_at, decided_by, note"
    )

    @staticmethod
    def _held_row(row: Any) -> HeldItem:
        return HeldItem(
            held_id=row[0],
            work_id=row[1],
            user_id=row[2],
            lifecycle=row[3],
            work_item=row[4],
            reason=row[5],
            held_at=_dt(row[6]),
            status=row[7],
            decided_at=_dt(row[8]) if row[8] is not None else None,
            decided_by=row[9],
            note=row[10],
        )

    def hold(self, item: HeldItem) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                f"INSERT OR IGNORE INTO held ({self._HELD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item.held_id,
                    item.work_id,
                    item.user_id,
                    item.lifecycle,
                    item.work_item,
                    item.reason,
                    _ts(item.held_at),
                    item.status,
                    _ts(item.decided_at) if item.decided_at else None,
                    item.decided_by,
                    item.note,
                ),
            )
            return cursor.rowcount > 0

    def held(self, *, status: HeldStatus | None = "held", limit: int = 1000) -> list[HeldItem]:
        where, args = ("WHERE status=?", [status]) if status is not None else ("", [])
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._HELD_COLUMNS} FROM held {where} ORDER BY held_at, held_id LIMIT ?", (*args, limit)
            ).fetchall()
        return [self._held_row(r) for r in rows]

    def get_held(self, held_id: str) -> HeldItem | None:
        with self._lock:
            row = self._db.execute(f"SELECT {self._HELD_COLUMNS} FROM held WHERE held_id=?", (held_id,)).fetchone()
        return self._held_row(row) if row is not None else None

    def decide_held(
        self, held_id: str, status: Literal["approved", "rejected"], *, by: str, at: datetime, note: str = ""
    ) -> HeldItem | None:
        with self._transaction() as db:
            db.execute(
                "UPDATE held SET status=?, decided_at=?, decided_by=?, note=? WHERE held_id=? AND status='held'",
                (status, _ts(at), by, note, held_id),
            )
            row = db.execute(f"SELECT {self._HELD_COLUMNS} FROM held WHERE held_id=?", (held_id,)).fetchone()
        return self._held_row(row) if row is not None else None

    def health(self) -> bool:
        try:
            with self._lock:
                self._db.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        with self._lock:
            self._db.close()
