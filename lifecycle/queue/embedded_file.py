"""The embedded queue's SQLite file: its schema, how rows hold times and properties, and the wake-up of
receivers in this process.

Tables:

- ``inbox``: messages as sent, not yet filed: a send writes its message here and nowhere else but
  ``sent_ids``. The next receive (of any process) files them, in sequence order, into ``messages`` and
  ``sessions`` in its own transaction, exactly as if the send had done it.
- ``messages``: one row per message filed and not yet settled, keyed by a sequence number that is never reused.
  A received message carries a lock token and a lock expiry on its row.
- ``sessions``: one row per session that has messages, naming its head (lowest sequence number) and
  ``available_at``, the time from which that head can be delivered: its visible time, or its lock expiry
  while it is locked. Only the head of a session is ever locked, so this row is also the session lock, and
  finding the next message is one indexed look-up instead of a scan of every session.
- ``dead_letters``: dead-lettered messages under their original sequence number; they never expire.
- ``sent_ids``: message ids sent recently, for duplicate detection; purged now and then by a scan.
- ``retired_seq``: one row, the highest sequence number that left both ``messages`` and ``dead_letters``
  while it was the highest there; a new message's number is one above everything alive and this.

Every page a send's transaction dirties is one more WAL frame written before the fsync that acknowledges it to
Halo, so the schema keeps what a send touches small: the ``inbox`` has no index (filing a message dirties
``messages``, its two indexes, ``sessions`` and its index: the receiver does that, off the ingress's path; schema
version 3), no ``AUTOINCREMENT`` (its ``sqlite_sequence`` row was a page per send; ``retired_seq`` keeps
numbers unique and is written only when the highest one is settled, which a send never does) and no index of
``sent_ids`` by age (a page per send; the table holds one duplicate window of ids, so the purge once a minute
scans it instead; version 2). Files of versions 1 and 2 are migrated when opened.

Kept apart from ``embedded`` (the queue's semantics): these change with the file's format, that with what a
queue promises.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import weakref
from datetime import UTC, datetime
from pathlib import Path

from lifecycle.errors import ConfigurationError
from lifecycle.queue import DeadLetteredMessage

SCHEMA_VERSION = 3

MESSAGES_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    seq            INTEGER PRIMARY KEY,
    message_id     TEXT    NOT NULL,
    session_id     TEXT    NOT NULL,
    body           BLOB    NOT NULL,
    properties     TEXT    NOT NULL,
    enqueued_at    REAL    NOT NULL,
    visible_at     REAL    NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    lock_token     TEXT,
    locked_until   REAL
)"""

SCHEMA = (
    MESSAGES_TABLE.format(name="messages")
    + """;
CREATE INDEX IF NOT EXISTS messages_by_session ON messages (session_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_lock ON messages (lock_token) WHERE lock_token IS NOT NULL;

CREATE TABLE IF NOT EXISTS sessions (
    session_id   TEXT    PRIMARY KEY,
    head_seq     INTEGER NOT NULL,
    available_at REAL    NOT NULL,
    lock_token   TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_readiness ON sessions (available_at, head_seq);

CREATE TABLE IF NOT EXISTS dead_letters (
    seq              INTEGER PRIMARY KEY,
    message_id       TEXT    NOT NULL,
    session_id       TEXT    NOT NULL,
    body             BLOB    NOT NULL,
    properties       TEXT    NOT NULL,
    delivery_count   INTEGER NOT NULL,
    enqueued_at      REAL    NOT NULL,
    dead_lettered_at REAL    NOT NULL,
    reason           TEXT    NOT NULL,
    description      TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_age ON dead_letters (dead_lettered_at, seq);

CREATE TABLE IF NOT EXISTS sent_ids (
    message_id TEXT PRIMARY KEY,
    sent_at    REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS inbox (
    seq         INTEGER PRIMARY KEY,
    message_id  TEXT    NOT NULL,
    session_id  TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    properties  TEXT    NOT NULL,
    enqueued_at REAL    NOT NULL,
    visible_at  REAL    NOT NULL
);

CREATE TABLE IF NOT EXISTS retired_seq (
    id  INTEGER PRIMARY KEY CHECK (id = 0),
    seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO retired_seq (id, seq) VALUES (0, 0);
"""
)

# One above every sequence number alive (inbox, messages, dead letters) and every one retired: never reused.
NEXT_SEQ = (
    "(SELECT MAX(seq) + 1 FROM (SELECT MAX(seq) AS seq FROM inbox UNION ALL SELECT MAX(seq) FROM messages "
    "UNION ALL SELECT MAX(seq) FROM dead_letters UNION ALL SELECT seq FROM retired_seq))"
)

INBOX_COLUMNS = "seq, message_id, session_id, body, properties, enqueued_at, visible_at"

MESSAGE_COLUMNS = "seq, message_id, session_id, body, properties, enqueued_at, visible_at, delivery_count, lock_token"
DEAD_LETTER_COLUMNS = (
    "seq, message_id, session_id, body, properties, delivery_count, enqueued_at, dead_lettered_at, reason, description"
)


def create_tables(conn: sqlite3.Connection, path: Path) -> None:
    """Create the tables, or migrate a file of version 1 or 2 (version 2 lacks only the inbox), in the caller's
    write transaction, so another process opening the file at the same time waits and then finds it done;
    refuse a file of another version.

    Raises:
        ConfigurationError: The file holds a queue of an unknown schema version.
    """
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version not in (0, 1, 2, SCHEMA_VERSION):
        raise ConfigurationError(
            f"{path}: queue schema version {version} is not supported (this version reads {SCHEMA_VERSION})"
        )
    highest_v1 = _migrate_from_v1(conn) if version == 1 else 0
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("UPDATE retired_seq SET seq = ? WHERE seq < ?", (highest_v1, highest_v1))
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _migrate_from_v1(conn: sqlite3.Connection) -> int:
    """Version 1 to 2: ``messages`` without ``AUTOINCREMENT`` (rebuilt: SQLite cannot alter that) and
    ``sent_ids`` without its index by age. Rows, order and locks are kept as they are.

    Returns:
        The highest sequence number version 1 ever handed out (its ``sqlite_sequence``), for ``retired_seq``,
        so that no number is handed out twice.
    """
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
    highest = int(row[0]) if row is not None else 0
    columns = MESSAGE_COLUMNS + ", locked_until"
    conn.execute(MESSAGES_TABLE.format(name="messages_v2"))
    conn.execute(f"INSERT INTO messages_v2 ({columns}) SELECT {columns} FROM messages")
    conn.execute("DROP TABLE messages")  # and its indexes: the schema creates them again on the new table
    conn.execute("ALTER TABLE messages_v2 RENAME TO messages")
    conn.execute("DROP INDEX IF EXISTS sent_ids_by_age")
    return highest


def retire(conn: sqlite3.Connection, seq: int) -> None:
    """Remember ``seq`` after its row left ``messages`` or ``dead_letters``, when it was the highest alive.

    Only then could ``NEXT_SEQ`` hand it out again; in a backlog the settled message is the oldest, so this
    writes nothing.
    """
    conn.execute(
        "UPDATE retired_seq SET seq = :seq WHERE seq < :seq "
        "AND :seq > COALESCE((SELECT MAX(seq) FROM messages), 0) "
        "AND :seq > COALESCE((SELECT MAX(seq) FROM inbox), 0) "
        "AND :seq > COALESCE((SELECT MAX(seq) FROM dead_letters), 0)",
        {"seq": seq},
    )


class Signal:
    """Wakes receivers of one queue file in this process when something may have become deliverable.

    The generation counter closes the gap between a receiver's check of the database and its wait: a
    notification in that gap changes the generation, and the receiver does not wait at all.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0

    @property
    def generation(self) -> int:
        with self._condition:
            return self._generation

    def notify(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def wait(self, generation: int, timeout: float) -> None:
        with self._condition:
            if self._generation == generation:
                self._condition.wait(timeout)


# Shared per file so that two EmbeddedQueue objects of one process (the ingress and the worker may each
# open their own) still wake each other at once instead of on the polling tick.
_signals: weakref.WeakValueDictionary[str, Signal] = weakref.WeakValueDictionary()
_signals_lock = threading.Lock()


def signal_for(path: Path) -> Signal:
    key = str(path.resolve())
    with _signals_lock:
        signal = _signals.get(key)
        if signal is None:
            signal = Signal()
            _signals[key] = signal
        return signal


def to_datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def to_epoch(moment: datetime) -> float:
    # A naive datetime would silently be read as local time; refuse it rather than schedule at the wrong hour.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"scheduled_at must be timezone-aware (UTC), got naive {moment.isoformat()}")
    return moment.timestamp()


# What json.dumps(sort_keys=True, separators=(",", ":")) uses, built once instead of on every call.
_PROPERTIES_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def encode_properties(properties: dict[str, str]) -> str:
    # Checked here because JSON would happily store numbers that then come back as the wrong type.
    for key, value in properties.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"message properties must be str to str, got {key!r}: {value!r}")
    return _PROPERTIES_ENCODER.encode(properties)


def decode_properties(text: str) -> dict[str, str]:
    decoded = json.loads(text)
    return {str(key): str(value) for key, value in decoded.items()}


def dead_lettered(row: sqlite3.Row) -> DeadLetteredMessage:
    """A row of ``dead_letters`` as the port's message."""
    return DeadLetteredMessage(
        message_id=str(row["message_id"]),
        session_id=str(row["session_id"]),
        body=bytes(row["body"]),
        properties=decode_properties(str(row["properties"])),
        delivery_count=int(row["delivery_count"]),
        enqueued_at=to_datetime(float(row["enqueued_at"])),
        dead_lettered_at=to_datetime(float(row["dead_lettered_at"])),
        reason=str(row["reason"]),
        description=str(row["description"]),
        sequence_number=int(row["seq"]),
    )


def inbox_pending(conn: sqlite3.Connection) -> bool:
    """Whether sent messages wait in the inbox to be filed."""
    return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM inbox)").fetchone()[0])


FILE_AT_ONCE = 500
"""Most messages one receive files. After a backlog (sends while no receiver ran) the filing transaction holds
the file's write lock, which the ingress waits for; the oldest are filed first and the next receives file the rest."""


def file_inbox(conn: sqlite3.Connection) -> None:
    """File the oldest ``FILE_AT_ONCE`` messages of the inbox into ``messages`` and ``sessions`` (in the
    caller's write transaction).

    In sequence order, as the sends did before version 3: a session that already has messages keeps its head;
    a new one starts with its lowest-numbered message as head, deliverable from that message's visible time.
    Whatever stays in the inbox is newer than everything filed, so no session's order can change.
    """
    last = conn.execute(
        "SELECT COALESCE((SELECT seq FROM inbox ORDER BY seq LIMIT 1 OFFSET ?), (SELECT MAX(seq) FROM inbox))",
        (FILE_AT_ONCE - 1,),
    ).fetchone()[0]
    conn.execute(
        f"INSERT INTO messages ({INBOX_COLUMNS}) SELECT {INBOX_COLUMNS} FROM inbox WHERE seq <= ? ORDER BY seq",
        (last,),
    )
    # With one MIN() in the query, SQLite takes the bare visible_at from the row holding the minimum.
    conn.execute(
        "INSERT INTO sessions (session_id, head_seq, available_at) "
        "SELECT session_id, MIN(seq), visible_at FROM inbox WHERE seq <= ? GROUP BY session_id "
        "ON CONFLICT (session_id) DO NOTHING",
        (last,),
    )
    conn.execute("DELETE FROM inbox WHERE seq <= ?", (last,))


def earliest_ready(conn: sqlite3.Connection) -> float | None:
    """When the earliest session head becomes deliverable; None when no session has messages."""
    value = conn.execute("SELECT MIN(available_at) FROM sessions").fetchone()[0]
    return None if value is None else float(value)


def advance_session(conn: sqlite3.Connection, session_id: str) -> None:
    """Make the next message of the session its head after the head was removed."""
    nxt = conn.execute(
        "SELECT seq, visible_at FROM messages WHERE session_id = ? ORDER BY seq LIMIT 1", (session_id,)
    ).fetchone()
    if nxt is None:
        conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
        return
    # Its visible time, usually in the past: it has waited behind the old head, so it goes first.
    conn.execute(
        "UPDATE sessions SET head_seq = ?, available_at = ?, lock_token = NULL WHERE session_id = ?",
        (nxt["seq"], nxt["visible_at"], session_id),
    )


def count_messages(conn: sqlite3.Connection, now: float) -> dict[str, int]:
    """Message counts by state at ``now`` (``EmbeddedQueue.counts`` says what each means)."""
    row = conn.execute(
        "SELECT COUNT(*) AS total, "
        "COALESCE(SUM(lock_token IS NOT NULL AND locked_until > :now), 0) AS locked, "
        "COALESCE(SUM((lock_token IS NULL OR locked_until <= :now) AND visible_at > :now), 0) "
        "AS scheduled FROM messages",
        {"now": now},
    ).fetchone()
    dead = int(conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])
    # Messages not filed yet are neither locked nor delivered: active, or scheduled until their visible time.
    unfiled = conn.execute(
        "SELECT COUNT(*) AS total, COALESCE(SUM(visible_at > :now), 0) AS scheduled FROM inbox", {"now": now}
    ).fetchone()
    total, locked = int(row["total"]) + int(unfiled["total"]), int(row["locked"])
    scheduled = int(row["scheduled"]) + int(unfiled["scheduled"])
    return {
        "active": total - locked - scheduled,
        "scheduled": scheduled,
        "locked": locked,
        "dead_lettered": dead,
    }
