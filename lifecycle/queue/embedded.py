"""The embedded queue: a SQLite file with the semantics of a session-enabled Service Bus queue.

Local mode runs the ingress, the worker and the CLI against one file. Several threads of one process share
one connection behind a lock; several processes (``serve`` and a CLI doing ``dlq replay``) share the file
through SQLite's own locking. Every state change is one transaction, and every read-modify-write starts with
``BEGIN IMMEDIATE`` so two processes can never both lock the same message.

The file's tables and their encoding are in ``embedded_file``.

Delivery order: ``receive`` takes the session whose head became deliverable earliest. A head becomes
deliverable at its visible time (its enqueue time, its ``scheduled_at``, or the end of a ``retry_later``
back-off), when it is abandoned, or when its lock expires. Ties go to the lowest sequence number. Within a
session delivery is strictly in send order: a head that waits (locked or backing off) holds back the rest
of its session but never another session.

Timestamps are UTC epoch seconds from the injectable ``clock``; waiting for messages uses the monotonic clock
so that a test clock that stands still cannot make ``receive`` wait forever.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from lifecycle.private_files import private_file
from lifecycle.queue import (
    LAST_RETRY_REASON,
    ORIGINAL_MESSAGE_ID,
    REPLAY_COUNT,
    RETRY_ATTEMPT,
    DeadLetteredMessage,
    DeadLetterNotFoundError,
    LockLostError,
    OutgoingMessage,
    ReceivedMessage,
)
from lifecycle.queue.embedded_file import (
    DEAD_LETTER_COLUMNS,
    MESSAGE_COLUMNS,
    NEXT_SEQ,
    advance_session,
    count_messages,
    create_tables,
    dead_lettered,
    decode_properties,
    earliest_ready,
    encode_properties,
    file_inbox,
    inbox_pending,
    retire,
    signal_for,
    to_datetime,
    to_epoch,
)

__all__ = [
    "LAST_RETRY_REASON",
    "MAX_DELIVERY_COUNT_EXCEEDED",
    "POLL_INTERVAL_SECONDS",
    "RETRY_ATTEMPT",
    "DeadLetterNotFoundError",
    "EmbeddedQueue",
    "LockLostError",
]

MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
"""Dead-letter reason when a message was delivered ``max_deliveries`` times without being settled."""

POLL_INTERVAL_SECONDS = 0.5
"""Longest wait between checks of the file: other processes' sends cannot notify this process."""


class EmbeddedQueue:
    """A ``WorkQueue`` in a SQLite file, safe to share between threads and between processes.

    Create one instance per process (a connection must not cross a ``fork``); threads share it.

    Args:
        path: The SQLite file; created with its parent directories if missing.
        lock_seconds: How long a received message (and its session) stays locked before it comes back.
        max_deliveries: Deliveries allowed before a message that keeps coming back is dead-lettered with
            reason ``MaxDeliveryCountExceeded``.
        duplicate_window_seconds: How long a sent message id is remembered; a send of the same id within
            this window is dropped.
        clock: Current time in UTC epoch seconds; tests inject one to move time without sleeping.

    Raises:
        ValueError: A limit is out of range.
        ConfigurationError: The file holds a queue of an unknown schema version.
    """

    def __init__(
        self,
        path: Path,
        *,
        lock_seconds: float = 60.0,
        max_deliveries: int = 10,
        duplicate_window_seconds: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lock_seconds <= 0:
            raise ValueError(f"lock_seconds must be positive, got {lock_seconds}")
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries must be at least 1, got {max_deliveries}")
        if duplicate_window_seconds < 0:
            raise ValueError(f"duplicate_window_seconds must not be negative, got {duplicate_window_seconds}")
        self._path = Path(path)
        self._lock_seconds = lock_seconds
        self._max_deliveries = max_deliveries
        self._window = duplicate_window_seconds
        self._clock = clock
        self._db_lock = threading.RLock()
        self._last_purge = float("-inf")
        self._closed = False
        private_file(self._path)  # queued work carries Halo users' personal data: owner-only
        # isolation_level=None: transactions are begun explicitly, so each one is exactly what the code says.
        # timeout: how long to wait for another process's write transaction before giving up.
        self._conn = sqlite3.connect(self._path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        try:
            self._initialise()
        except BaseException:
            self._conn.close()
            raise
        self._signal = signal_for(self._path)

    def _initialise(self) -> None:
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a message acknowledged to Halo must survive a power cut, not only a crash of this process.
        self._conn.execute("PRAGMA synchronous=FULL")
        with self._write() as conn:
            create_tables(conn, self._path)

    @property
    def path(self) -> Path:
        """The SQLite file of this queue."""
        return self._path

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One read-modify-write transaction; holds the write lock of the file from its first statement."""
        with self._db_lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full): never leave the write lock held.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    # ----------------------------------------------------------------------------------------------- send

    def send(self, messages: Sequence[OutgoingMessage]) -> list[bool]:
        """Send all messages in one transaction: all are stored, or none if any is invalid.

        Args:
            messages: The messages, in send order (which is delivery order within a session).

        Returns:
            For each message, True if it was stored, False if it was dropped as a duplicate (its id was sent
            within the duplicate window, earlier or earlier in this batch).

        Raises:
            ValueError: A ``scheduled_at`` is naive.
            TypeError: A property key or value is not a string.
        """
        if not messages:
            return []
        with self._write() as conn:
            now = self._clock()
            self._purge_sent_ids(conn, now)
            results = [self._store(conn, message, now) for message in messages]
        if any(results):
            self._signal.notify()
        return results

    def _purge_sent_ids(self, conn: sqlite3.Connection, now: float) -> None:
        # Expired ids are harmless (the window check ignores them), so purging now and then is enough. A scan:
        # the table holds one window of ids, and an index by age would cost every send one more page written.
        if now - self._last_purge < min(self._window, 60.0):
            return
        conn.execute("DELETE FROM sent_ids WHERE sent_at < ?", (now - self._window,))
        self._last_purge = now

    def _recently_sent(self, conn: sqlite3.Connection, message_id: str, now: float) -> bool:
        row = conn.execute("SELECT sent_at FROM sent_ids WHERE message_id = ?", (message_id,)).fetchone()
        return row is not None and float(row["sent_at"]) >= now - self._window

    def _store(self, conn: sqlite3.Connection, message: OutgoingMessage, now: float) -> bool:
        # The duplicate check and the id's record in one statement: a new id is inserted, an expired one takes
        # the new time, and one sent within the window changes nothing (no row changed: a duplicate). A dropped
        # duplicate does not restart the window: it runs from the first send, as in Service Bus. Should
        # anything below raise, the transaction's rollback forgets the id again.
        remembered = conn.execute(
            "INSERT INTO sent_ids (message_id, sent_at) VALUES (?, ?) "
            "ON CONFLICT (message_id) DO UPDATE SET sent_at = excluded.sent_at WHERE sent_at < ?",
            (message.message_id, now, now - self._window),
        )
        if remembered.rowcount == 0:
            return False
        visible_at = now if message.scheduled_at is None else to_epoch(message.scheduled_at)
        # Into the inbox only: the next receive files it into messages and its session (see embedded_file).
        conn.execute(
            "INSERT INTO inbox (seq, message_id, session_id, body, properties, enqueued_at, visible_at) "
            f"VALUES ({NEXT_SEQ}, ?, ?, ?, ?, ?, ?)",
            (
                message.message_id,
                message.session_id,
                bytes(message.body),
                encode_properties(message.properties),
                now,
                visible_at,
            ),
        )
        return True

    # -------------------------------------------------------------------------------------------- receive

    def receive(self, timeout: float) -> ReceivedMessage | None:
        """Lock and return the next deliverable message, waiting up to ``timeout`` seconds for one.

        A send from this process wakes the wait at once; sends from other processes, scheduled messages and
        expiring locks are noticed within ``POLL_INTERVAL_SECONDS`` (sooner when the next one is due sooner).
        A head that was already delivered ``max_deliveries`` times is dead-lettered on the way.

        Args:
            timeout: Seconds to wait; 0 checks once.

        Returns:
            The message, locked for ``lock_seconds`` with ``delivery_count`` incremented; None on timeout or
            once the queue is closed (``close`` wakes waiting receivers so a shutdown does not wait them out).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            generation = self._signal.generation
            message, next_ready = self._receive_once()
            if message is not None or self._closed:
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = min(remaining, POLL_INTERVAL_SECONDS)
            if next_ready is not None:
                wait = min(wait, max(0.0, next_ready - self._clock()))
            self._signal.wait(generation, wait)

    def _receive_once(self) -> tuple[ReceivedMessage | None, float | None]:
        """Try to lock one message; otherwise return when the next session becomes deliverable."""
        with self._db_lock:
            if self._closed:
                return None, None
            # A plain read first: an idle receiver must not take the file's write lock on every check.
            next_ready = earliest_ready(self._conn)
            pending = inbox_pending(self._conn)
            if not pending and (next_ready is None or next_ready > self._clock()):
                return None, next_ready
            with self._write() as conn:
                if inbox_pending(conn):  # checked again: another process may have filed them, or sent more
                    file_inbox(conn)
                now = self._clock()
                while True:
                    head = conn.execute(
                        "SELECT session_id, head_seq FROM sessions WHERE available_at <= ? "
                        "ORDER BY available_at, head_seq LIMIT 1",
                        (now,),
                    ).fetchone()
                    if head is None:
                        # Another process took it between the read and the write lock.
                        return None, earliest_ready(conn)
                    row = conn.execute(
                        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE seq = ?", (head["head_seq"],)
                    ).fetchone()
                    if row is None:  # cannot happen while every change goes through this class; self-heal
                        advance_session(conn, str(head["session_id"]))
                        continue
                    if int(row["delivery_count"]) >= self._max_deliveries:
                        self._move_to_dead_letters(
                            conn,
                            row,
                            now,
                            MAX_DELIVERY_COUNT_EXCEEDED,
                            f"delivered {row['delivery_count']} times without being settled "
                            f"(max_deliveries={self._max_deliveries})",
                        )
                        continue
                    return self._lock(conn, row, now), None

    def _lock(self, conn: sqlite3.Connection, row: sqlite3.Row, now: float) -> ReceivedMessage:
        token = uuid.uuid4().hex
        locked_until = now + self._lock_seconds
        delivery_count = int(row["delivery_count"]) + 1
        conn.execute(
            "UPDATE messages SET delivery_count = ?, lock_token = ?, locked_until = ? WHERE seq = ?",
            (delivery_count, token, locked_until, row["seq"]),
        )
        conn.execute(
            "UPDATE sessions SET available_at = ?, lock_token = ? WHERE session_id = ?",
            (locked_until, token, row["session_id"]),
        )
        return ReceivedMessage(
            message_id=str(row["message_id"]),
            session_id=str(row["session_id"]),
            body=bytes(row["body"]),
            properties=decode_properties(str(row["properties"])),
            delivery_count=delivery_count,
            enqueued_at=to_datetime(float(row["enqueued_at"])),
            lock_token=token,
            locked_until=to_datetime(locked_until),
        )

    # --------------------------------------------------------------------------------------------- settle

    def _locked_row(self, conn: sqlite3.Connection, message: ReceivedMessage) -> sqlite3.Row:
        """The row still locked by ``message``'s token.

        A token stays valid after its lock expired until another receive replaces it: until then nobody
        else holds the message, so settling it is still exactly what its holder meant.
        """
        row: sqlite3.Row | None = conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE lock_token = ?", (message.lock_token,)
        ).fetchone()
        if row is not None:
            return row
        redelivered = conn.execute(
            "SELECT 1 FROM messages WHERE message_id = ? AND session_id = ? AND lock_token IS NOT NULL",
            (message.message_id, message.session_id),
        ).fetchone()
        if redelivered is not None:
            raise LockLostError(
                f"lock lost on message {message.message_id!r} (session {message.session_id!r}): "
                "its lock expired and it was received again; the current holder settles it"
            )
        raise LockLostError(
            f"lock lost on message {message.message_id!r} (session {message.session_id!r}): "
            "it was already completed, dead-lettered, abandoned or put back for a retry with this lock token"
        )

    def renew_lock(self, message: ReceivedMessage) -> bool:
        """Extend the lock of a message its holder still works on, and its session's, by ``lock_seconds``.

        Returns:
            False when the token is stale (received again by someone else, or settled); True otherwise.
        """
        with self._write() as conn:
            row = conn.execute("SELECT seq, session_id FROM messages WHERE lock_token = ?", (message.lock_token,))
            found = row.fetchone()
            if found is None:
                return False
            locked_until = self._clock() + self._lock_seconds
            conn.execute("UPDATE messages SET locked_until = ? WHERE seq = ?", (locked_until, found["seq"]))
            conn.execute(
                "UPDATE sessions SET available_at = ? WHERE session_id = ? AND lock_token = ?",
                (locked_until, found["session_id"], message.lock_token),
            )
        return True

    def complete(self, message: ReceivedMessage) -> None:
        """Remove a processed message and let the next message of its session be delivered.

        Raises:
            LockLostError: The lock token is stale.
        """
        with self._write() as conn:
            row = self._locked_row(conn, message)
            conn.execute("DELETE FROM messages WHERE seq = ?", (row["seq"],))
            retire(conn, int(row["seq"]))
            advance_session(conn, str(row["session_id"]))
        self._signal.notify()

    def abandon(self, message: ReceivedMessage) -> None:
        """Give the message back at once; its delivery count stays incremented.

        Raises:
            LockLostError: The lock token is stale.
        """
        with self._write() as conn:
            row = self._locked_row(conn, message)
            now = self._clock()
            conn.execute("UPDATE messages SET lock_token = NULL, locked_until = NULL WHERE seq = ?", (row["seq"],))
            conn.execute(
                "UPDATE sessions SET available_at = ?, lock_token = NULL WHERE session_id = ?",
                (now, row["session_id"]),
            )
        self._signal.notify()

    def retry_later(self, message: ReceivedMessage, delay_seconds: float, reason: str) -> None:
        """Deliver the same message again after ``delay_seconds``, without using up a delivery.

        The message stays the head of its session, so later messages of the session wait behind it. Its
        ``retry_attempt`` property counts the back-offs and ``last_retry_reason`` keeps ``reason``.

        Raises:
            LockLostError: The lock token is stale.
        """
        with self._write() as conn:
            row = self._locked_row(conn, message)
            now = self._clock()
            visible_at = now + max(0.0, delay_seconds)
            properties = decode_properties(str(row["properties"]))
            properties[RETRY_ATTEMPT] = str(int(properties.get(RETRY_ATTEMPT, "0")) + 1)
            properties[LAST_RETRY_REASON] = reason
            conn.execute(
                "UPDATE messages SET visible_at = ?, delivery_count = MAX(delivery_count - 1, 0), "
                "properties = ?, lock_token = NULL, locked_until = NULL WHERE seq = ?",
                (visible_at, encode_properties(properties), row["seq"]),
            )
            conn.execute(
                "UPDATE sessions SET available_at = ?, lock_token = NULL WHERE session_id = ?",
                (visible_at, row["session_id"]),
            )
        # Waiting receivers recompute how long to sleep (a zero delay is deliverable now).
        self._signal.notify()

    def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None:
        """Move the message to the dead-letter sub-queue and release its session.

        Raises:
            LockLostError: The lock token is stale.
        """
        with self._write() as conn:
            row = self._locked_row(conn, message)
            self._move_to_dead_letters(conn, row, self._clock(), reason, description)
        self._signal.notify()

    def _move_to_dead_letters(
        self, conn: sqlite3.Connection, row: sqlite3.Row, now: float, reason: str, description: str
    ) -> None:
        conn.execute(
            f"INSERT INTO dead_letters ({DEAD_LETTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row["seq"],
                row["message_id"],
                row["session_id"],
                row["body"],
                row["properties"],
                row["delivery_count"],
                row["enqueued_at"],
                now,
                reason,
                description,
            ),
        )
        conn.execute("DELETE FROM messages WHERE seq = ?", (row["seq"],))
        advance_session(conn, str(row["session_id"]))

    # ------------------------------------------------------------------------------------- dead letters

    def dead_letters(self, limit: int = 100) -> list[DeadLetteredMessage]:
        """Dead-lettered messages, oldest first (by dead-letter time, then sequence number)."""
        with self._db_lock:
            rows = self._conn.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters ORDER BY dead_lettered_at, seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [dead_lettered(row) for row in rows]

    def dead_letter_by_sequence(self, sequence_number: int) -> DeadLetteredMessage | None:
        """The dead-lettered message with this sequence number, or None if there is none."""
        with self._db_lock:
            row = self._conn.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE seq = ?", (sequence_number,)
            ).fetchone()
        return None if row is None else dead_lettered(row)

    def dead_letter_page(
        self, *, reason: str | None = None, offset: int = 0, limit: int = 50
    ) -> list[DeadLetteredMessage]:
        """One page of dead letters (of one reason, or all), oldest first: what the console lists."""
        where, args = ("WHERE reason = ?", [reason]) if reason is not None else ("", [])
        with self._db_lock:
            rows = self._conn.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters {where} ORDER BY dead_lettered_at, seq"
                " LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [dead_lettered(row) for row in rows]

    def dead_letter_reasons(self) -> dict[str, int]:
        """How many dead letters there are of each reason."""
        with self._db_lock:
            rows = self._conn.execute("SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def purge_dead_letter(self, sequence_number: int) -> bool:
        """Delete a dead-lettered message for good.

        Returns:
            True if it existed.
        """
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM dead_letters WHERE seq = ?", (sequence_number,))
            retire(conn, sequence_number)
        return cursor.rowcount > 0

    def replay(self, sequence_number: int) -> str:
        """Send a dead-lettered message again and remove its dead-letter entry, in one transaction.

        The copy has the same session and body, starts at delivery count 0 and without the back-off
        properties of its previous life. Its id is ``<original id>:r<n>``, where ``n`` is its new
        ``replay_count`` property, and ``original_message_id`` keeps the id of the very first message, so
        replaying a replay gives ``<original id>:r2``. Should that id still be in the duplicate window (the
        same original id was dead-lettered twice), ``n`` is raised until it is not, so a replay is never
        silently dropped as a duplicate.

        Returns:
            The new message id.

        Raises:
            DeadLetterNotFoundError: No dead-lettered message has this sequence number.
        """
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE seq = ?", (sequence_number,)
            ).fetchone()
            if row is None:
                raise DeadLetterNotFoundError(
                    f"no dead-lettered message with sequence number {sequence_number} (already replayed or purged?)"
                )
            now = self._clock()
            properties = decode_properties(str(row["properties"]))
            original_id = properties.get(ORIGINAL_MESSAGE_ID, str(row["message_id"]))
            properties.pop(RETRY_ATTEMPT, None)
            properties.pop(LAST_RETRY_REASON, None)
            replay_count = int(properties.get(REPLAY_COUNT, "0")) + 1
            while self._recently_sent(conn, f"{original_id}:r{replay_count}", now):
                replay_count += 1
            properties[ORIGINAL_MESSAGE_ID] = original_id
            properties[REPLAY_COUNT] = str(replay_count)
            new_id = f"{original_id}:r{replay_count}"
            copy = OutgoingMessage(
                message_id=new_id,
                session_id=str(row["session_id"]),
                body=bytes(row["body"]),
                properties=properties,
            )
            # Send before delete, as the port promises (the transaction makes the pair atomic anyway).
            self._store(conn, copy, now)
            conn.execute("DELETE FROM dead_letters WHERE seq = ?", (sequence_number,))
        self._signal.notify()
        return new_id

    # --------------------------------------------------------------------------------------- operations

    def counts(self) -> dict[str, int]:
        """Message counts for health and metrics.

        Returns:
            ``active``: visible and not locked (deliverable, or waiting behind its session's head);
            ``scheduled``: not visible yet (scheduled or backing off); ``locked``: under an unexpired lock;
            ``dead_lettered``: in the dead-letter sub-queue.
        """
        with self._db_lock:
            return count_messages(self._conn, self._clock())

    def health(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            with self._db_lock:
                return bool(self._conn.execute("SELECT 1").fetchone()[0] == 1)
        except sqlite3.Error:  # ProgrammingError (closed) is a subclass
            return False

    def close(self) -> None:
        """Close the connection and wake receivers waiting on it; settling afterwards fails."""
        with self._db_lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
        self._signal.notify()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
