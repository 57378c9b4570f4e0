"""The embedded queue's file: sends filed from the inbox as if the send had filed them, sequence numbers never
reused, the duplicate window's purge, and files of older schema versions opened and migrated with nothing lost."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lifecycle.errors import ConfigurationError
from lifecycle.queue import OutgoingMessage, ReceivedMessage, embedded_file
from lifecycle.queue.embedded import EmbeddedQueue

WINDOW_SECONDS = 600.0
START = 1_750_000_000.0

# The schema of version 1 as it was released (lifecycle/queue/embedded_file.py before version 2).
V1_SCHEMA = """
CREATE TABLE messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id     TEXT    NOT NULL,
    session_id     TEXT    NOT NULL,
    body           BLOB    NOT NULL,
    properties     TEXT    NOT NULL,
    enqueued_at    REAL    NOT NULL,
    visible_at     REAL    NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    lock_token     TEXT,
    locked_until   REAL
);
CREATE INDEX messages_by_session ON messages (session_id, seq);
CREATE UNIQUE INDEX messages_by_lock ON messages (lock_token) WHERE lock_token IS NOT NULL;
CREATE TABLE sessions (
    session_id   TEXT    PRIMARY KEY,
    head_seq     INTEGER NOT NULL,
    available_at REAL    NOT NULL,
    lock_token   TEXT
) WITHOUT ROWID;
CREATE INDEX sessions_by_readiness ON sessions (available_at, head_seq);
CREATE TABLE dead_letters (
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
CREATE INDEX dead_letters_by_age ON dead_letters (dead_lettered_at, seq);
CREATE TABLE sent_ids (
    message_id TEXT PRIMARY KEY,
    sent_at    REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX sent_ids_by_age ON sent_ids (sent_at);
PRAGMA user_version=1;
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_queue(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[[str], EmbeddedQueue]]:
    opened: list[EmbeddedQueue] = []

    def _open(name: str = "queue.db") -> EmbeddedQueue:
        queue = EmbeddedQueue(tmp_path / name, duplicate_window_seconds=WINDOW_SECONDS, clock=clock)
        opened.append(queue)
        return queue

    yield _open
    for queue in opened:
        queue.close()


def message(message_id: str, session_id: str = "user-1") -> OutgoingMessage:
    return OutgoingMessage(message_id, session_id, message_id.encode(), {"kind": "created"})


def receive(queue: EmbeddedQueue) -> ReceivedMessage:
    received = queue.receive(0)
    assert received is not None, "expected a deliverable message"
    return received


def dead_lettered_seq(queue: EmbeddedQueue, message_id: str) -> int:
    queue.send([message(message_id, session_id=f"alone-{message_id}")])
    queue.dead_letter(receive(queue), "Permanent", "for its number")
    return next(d.sequence_number for d in queue.dead_letters() if d.message_id == message_id)


def test_sequence_numbers_are_never_reused_after_the_highest_is_completed_or_purged(
    open_queue: Callable[[str], EmbeddedQueue],
) -> None:
    queue = open_queue("queue.db")
    first = dead_lettered_seq(queue, "a")
    assert queue.purge_dead_letter(first)  # nothing alive holds a number now
    second = dead_lettered_seq(queue, "b")
    assert second == first + 1

    assert queue.purge_dead_letter(second)
    queue.send([message("c")])
    queue.complete(receive(queue))  # c took second + 1 and is gone too
    assert dead_lettered_seq(queue, "d") == second + 2
    # Reopening (another process) hands out numbers above them as well.
    assert dead_lettered_seq(open_queue("queue.db"), "e") == second + 3


def test_the_purge_forgets_expired_ids_and_keeps_those_inside_the_window(
    open_queue: Callable[[str], EmbeddedQueue], clock: FakeClock, tmp_path: Path
) -> None:
    queue = open_queue("queue.db")
    queue.send([message("old")])
    clock.now += WINDOW_SECONDS - 100
    queue.send([message("recent")])
    clock.now += 101  # "old" expired; the purge (at most once a minute) runs with the next send

    assert queue.send([message("next"), message("recent")]) == [True, False]
    with sqlite3.connect(tmp_path / "queue.db") as reader:
        remembered = {row[0] for row in reader.execute("SELECT message_id FROM sent_ids")}
    assert remembered == {"recent", "next"}
    assert queue.send([message("old")]) == [True]


def _v1_file(path: Path) -> None:
    """A version 1 queue as version 1's code leaves it: m1, m2 queued for user-1 (m1 locked by a receiver
    whose lock expired), m3 dead-lettered, m4 completed; sqlite_sequence at 4, above every row left."""
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
        for message_id, session_id in (("m1", "user-1"), ("m2", "user-1"), ("m3", "user-2"), ("m4", "user-3")):
            db.execute(
                "INSERT INTO messages (message_id, session_id, body, properties, enqueued_at, visible_at) "
                "VALUES (?, ?, ?, '{}', ?, ?)",
                (message_id, session_id, message_id.encode(), START - 60, START - 60),
            )
            db.execute("INSERT INTO sent_ids VALUES (?, ?)", (message_id, START - 60))
        db.execute(
            "UPDATE messages SET delivery_count = 1, lock_token = 'tok', locked_until = ? WHERE seq = 1",
            (START - 1,),
        )
        db.execute("INSERT INTO sessions VALUES ('user-1', 1, ?, 'tok')", (START - 1,))
        db.execute(
            "INSERT INTO dead_letters SELECT seq, message_id, session_id, body, properties, delivery_count, "
            "enqueued_at, ?, 'Permanent', 'refused' FROM messages WHERE seq = 3",
            (START - 30,),
        )
        db.execute("DELETE FROM messages WHERE seq IN (3, 4)")


def _schema(path: Path) -> set[tuple[str, str, str]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master WHERE name != 'sqlite_sequence'").fetchall()
    # SQLite quotes a table's name in its CREATE text when the table is renamed; the columns are what counts.
    return {(kind, name, " ".join(str(sql).replace('"', "").split())) for kind, name, sql in rows}


def test_a_version_1_file_is_migrated_with_its_messages_locks_duplicates_dead_letters_and_numbers(
    open_queue: Callable[[str], EmbeddedQueue], tmp_path: Path
) -> None:
    _v1_file(tmp_path / "v1.db")

    queue = open_queue("v1.db")

    with sqlite3.connect(tmp_path / "v1.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    open_queue("fresh.db").close()
    assert _schema(tmp_path / "v1.db") == _schema(tmp_path / "fresh.db")  # indexes and tables as a new file's
    assert queue.send([message("m4", "user-3")]) == [False]  # still inside the duplicate window
    first = receive(queue)  # the expired lock: m1 again, its delivery counted
    assert (first.message_id, first.delivery_count) == ("m1", 2)
    assert queue.receive(0) is None  # m2 waits behind m1 in its session
    queue.complete(first)
    assert receive(queue).message_id == "m2"
    [dead] = queue.dead_letters()
    assert (dead.message_id, dead.sequence_number) == ("m3", 3)
    # Version 1 had handed out 4 (m4, completed): the next number is 5, not 4 again.
    assert dead_lettered_seq(queue, "m5") == 5


def test_a_version_2_file_gets_its_inbox_and_keeps_its_messages(
    open_queue: Callable[[str], EmbeddedQueue], tmp_path: Path
) -> None:
    _v1_file(tmp_path / "v2.db")
    open_queue("v2.db").close()  # now version 3: make it what version 2 left, a file without the inbox
    with sqlite3.connect(tmp_path / "v2.db") as db:
        db.execute("DROP TABLE inbox")
        db.execute("PRAGMA user_version=2")

    queue = open_queue("v2.db")

    open_queue("fresh.db").close()
    assert _schema(tmp_path / "v2.db") == _schema(tmp_path / "fresh.db")
    assert receive(queue).message_id == "m1"


def test_messages_not_filed_yet_are_counted(open_queue: Callable[[str], EmbeddedQueue], clock: FakeClock) -> None:
    queue = open_queue("queue.db")
    later = datetime.fromtimestamp(clock.now + 60, UTC)
    queue.send([message("now"), OutgoingMessage("later", "user-2", b"x", scheduled_at=later)])

    assert queue.counts() == {"active": 1, "scheduled": 1, "locked": 0, "dead_lettered": 0}


def test_a_session_filed_from_one_batch_starts_at_its_first_message_even_when_that_one_waits(
    open_queue: Callable[[str], EmbeddedQueue], clock: FakeClock
) -> None:
    # The inbox files sessions with one statement: the head must be the lowest number and its visible time,
    # not the time of another message of the same session.
    queue = open_queue("queue.db")
    later = datetime.fromtimestamp(clock.now + 60, UTC)
    queue.send([OutgoingMessage("first", "user-1", b"1", scheduled_at=later), message("second")])

    assert queue.receive(0) is None
    clock.now += 61
    assert receive(queue).message_id == "first"


def test_a_backlog_is_filed_a_part_at_a_time_and_delivered_in_send_order(
    open_queue: Callable[[str], EmbeddedQueue], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(embedded_file, "FILE_AT_ONCE", 2)
    queue = open_queue("queue.db")
    sent = [("a1", "user-a"), ("a2", "user-a"), ("b1", "user-b"), ("a3", "user-a"), ("c1", "user-c")]
    queue.send([message(message_id, session) for message_id, session in sent])

    delivered = []
    while (received := queue.receive(0)) is not None:
        delivered.append(received.message_id)
        if received.message_id == "a1":  # two filed, three still in the inbox, all counted
            with sqlite3.connect(tmp_path / "queue.db") as reader:
                assert reader.execute("SELECT COUNT(*) FROM inbox").fetchone()[0] == 3
            assert queue.counts() == {"active": 4, "scheduled": 0, "locked": 1, "dead_lettered": 0}
        queue.complete(received)

    assert delivered == [message_id for message_id, _ in sent]


def test_a_file_of_a_newer_schema_version_is_refused(
    open_queue: Callable[[str], EmbeddedQueue], tmp_path: Path
) -> None:
    with sqlite3.connect(tmp_path / "future.db") as db:
        db.execute("PRAGMA user_version=4")

    with pytest.raises(ConfigurationError, match="queue schema version 4 is not supported"):
        open_queue("future.db")
