"""The embedded queue keeps the semantics of the queue port: sessions, peek-lock, dead letters, duplicates."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lifecycle.queue import (
    ORIGINAL_MESSAGE_ID,
    REPLAY_COUNT,
    OutgoingMessage,
    ReceivedMessage,
    WorkQueue,
)
from lifecycle.queue.embedded import (
    LAST_RETRY_REASON,
    MAX_DELIVERY_COUNT_EXCEEDED,
    RETRY_ATTEMPT,
    DeadLetterNotFoundError,
    EmbeddedQueue,
    LockLostError,
)

LOCK_SECONDS = 30.0
MAX_DELIVERIES = 3
WINDOW_SECONDS = 600.0


class FakeClock:
    """A clock the test moves by hand, so that no test sleeps."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_queue(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[[], EmbeddedQueue]]:
    """Opens queues on one file (as several receivers or processes would); closes them afterwards."""
    opened: list[EmbeddedQueue] = []

    def _open() -> EmbeddedQueue:
        queue = EmbeddedQueue(
            tmp_path / "queue.db",
            lock_seconds=LOCK_SECONDS,
            max_deliveries=MAX_DELIVERIES,
            duplicate_window_seconds=WINDOW_SECONDS,
            clock=clock,
        )
        opened.append(queue)
        return queue

    yield _open
    for queue in opened:
        queue.close()


@pytest.fixture
def queue(open_queue: Callable[[], EmbeddedQueue]) -> EmbeddedQueue:
    return open_queue()


def message(
    message_id: str, session_id: str = "user-1", scheduled_at: datetime | None = None
) -> OutgoingMessage:
    return OutgoingMessage(message_id, session_id, message_id.encode(), scheduled_at=scheduled_at)


def receive(queue: EmbeddedQueue) -> ReceivedMessage:
    received = queue.receive(0)
    assert received is not None, "expected a deliverable message"
    return received


def test_the_embedded_queue_implements_the_queue_port(queue: EmbeddedQueue) -> None:
    port: WorkQueue = queue
    assert port.health()


def test_messages_of_one_session_are_delivered_one_at_a_time_in_send_order(queue: EmbeddedQueue) -> None:
    queue.send([message("a1"), message("a2")])
    queue.send([message("a3")])

    delivered = []
    for _ in range(3):
        current = receive(queue)
        # The session is locked while its message is held, so the next one must wait.
        assert queue.receive(0) is None
        delivered.append(current.message_id)
        queue.complete(current)

    assert delivered == ["a1", "a2", "a3"]
    assert queue.receive(0) is None


def test_other_sessions_go_to_a_second_receiver_while_one_session_is_locked(
    open_queue: Callable[[], EmbeddedQueue],
) -> None:
    first, second = open_queue(), open_queue()
    first.send([message("a1", "user-a"), message("a2", "user-a"), message("b1", "user-b")])

    a1 = receive(first)
    b1 = receive(second)
    assert (a1.message_id, b1.message_id) == ("a1", "b1")
    assert second.receive(0) is None  # a2 waits for user-a's lock, not for anything else

    second.complete(b1)
    first.complete(a1)
    assert receive(second).message_id == "a2"


def test_receive_takes_the_session_whose_head_has_waited_longest(
    queue: EmbeddedQueue, clock: FakeClock
) -> None:
    queue.send([message("a1", "user-a"), message("a2", "user-a")])
    clock.advance(1)
    queue.send([message("b1", "user-b")])
    clock.advance(1)

    queue.complete(receive(queue))  # a1; a2 has waited since before b1 was sent

    assert receive(queue).message_id == "a2"
    assert receive(queue).message_id == "b1"


def test_a_message_whose_lock_expires_is_delivered_again_with_delivery_count_plus_one(
    queue: EmbeddedQueue, clock: FakeClock
) -> None:
    queue.send([message("m1"), message("m2")])
    first = receive(queue)
    assert first.delivery_count == 1

    clock.advance(LOCK_SECONDS - 1)
    assert queue.receive(0) is None
    clock.advance(2)
    again = receive(queue)

    assert again.message_id == "m1"  # the session's order survives the lost lock
    assert again.delivery_count == 2
    assert again.lock_token != first.lock_token


def test_a_message_delivered_max_deliveries_times_is_dead_lettered_as_max_delivery_count_exceeded(
    queue: EmbeddedQueue, clock: FakeClock
) -> None:
    queue.send([message("poison"), message("next")])
    for attempt in range(1, MAX_DELIVERIES + 1):
        received = receive(queue)
        assert (received.message_id, received.delivery_count) == ("poison", attempt)
        if attempt % 2:
            queue.abandon(received)
        else:
            clock.advance(LOCK_SECONDS + 1)  # lock expiry counts the same as abandon

    # The next receive dead-letters the poison message instead of delivering it, and moves the session on.
    assert receive(queue).message_id == "next"
    [dead] = queue.dead_letters()
    assert dead.message_id == "poison"
    assert dead.reason == MAX_DELIVERY_COUNT_EXCEEDED
    assert dead.delivery_count == MAX_DELIVERIES
    assert dead.body == b"poison"


def test_retry_later_keeps_the_message_first_in_its_session_and_does_not_count_a_delivery(
    queue: EmbeddedQueue, clock: FakeClock
) -> None:
    queue.send([message("a1", "user-a"), message("a2", "user-a"), message("b1", "user-b")])
    a1 = receive(queue)
    queue.retry_later(a1, 60, "domain controller busy")

    # Another session is not held up by user-a's back-off ...
    b1 = receive(queue)
    assert b1.message_id == "b1"
    queue.complete(b1)
    # ... but a2 waits behind a1.
    assert queue.receive(0) is None
    assert queue.counts()["scheduled"] == 1

    for attempt in (1, 2):
        clock.advance(59)
        assert queue.receive(0) is None
        clock.advance(1)
        again = receive(queue)
        assert again.message_id == "a1"
        assert again.delivery_count == 1
        assert again.properties[RETRY_ATTEMPT] == str(attempt)
        assert again.properties[LAST_RETRY_REASON] == "domain controller busy"
        if attempt == 1:
            queue.retry_later(again, 60, "domain controller busy")

    queue.complete(again)
    assert receive(queue).message_id == "a2"


def test_retry_later_of_many_messages_never_dead_letters_them(queue: EmbeddedQueue, clock: FakeClock) -> None:
    queue.send([message("m1")])
    for _ in range(MAX_DELIVERIES * 3):
        queue.retry_later(receive(queue), 1, "throttled")
        clock.advance(1)

    assert receive(queue).delivery_count == 1
    assert queue.dead_letters() == []


def test_a_scheduled_message_waits_and_holds_back_its_session_only(
    queue: EmbeddedQueue, clock: FakeClock
) -> None:
    later = datetime.fromtimestamp(clock.now, tz=UTC) + timedelta(seconds=30)
    queue.send(
        [message("a1", "user-a", scheduled_at=later), message("a2", "user-a"), message("b1", "user-b")]
    )

    queue.complete(receive(queue))  # b1
    assert queue.receive(0) is None
    clock.advance(30)

    received = receive(queue)
    assert received.message_id == "a1"
    assert received.enqueued_at == datetime.fromtimestamp(clock.now - 30, tz=UTC)


def test_a_naive_scheduled_time_is_refused(queue: EmbeddedQueue) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        queue.send([message("m1", scheduled_at=datetime(2030, 1, 1))])


def test_a_message_id_sent_again_within_the_window_is_dropped_and_accepted_after_it(
    queue: EmbeddedQueue, clock: FakeClock
) -> None:
    assert queue.send([message("m1"), message("m1")]) == [True, False]
    queue.complete(receive(queue))

    # Completion does not forget the id: a late webhook retry is still a duplicate.
    clock.advance(WINDOW_SECONDS - 1)
    assert queue.send([message("m1")]) == [False]
    assert queue.receive(0) is None

    clock.advance(2)
    assert queue.send([message("m1")]) == [True]
    assert receive(queue).message_id == "m1"


def test_the_duplicate_window_runs_from_the_first_send_not_from_dropped_duplicates(
    queue: EmbeddedQueue, clock: FakeClock
) -> None:
    queue.send([message("m1")])
    clock.advance(WINDOW_SECONDS / 2)
    assert queue.send([message("m1")]) == [False]
    clock.advance(WINDOW_SECONDS / 2 + 1)

    assert queue.send([message("m1")]) == [True]


def test_a_batch_with_an_invalid_message_stores_none_of_it(queue: EmbeddedQueue) -> None:
    bad = OutgoingMessage("bad", "user-2", b"", properties={"attempt": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="properties must be str"):
        queue.send([message("good"), bad])

    assert queue.receive(0) is None
    assert queue.counts()["active"] == 0
    # The good message's id was not remembered either, so sending it again is not a duplicate.
    assert queue.send([message("good")]) == [True]


def test_properties_and_body_come_back_as_sent(queue: EmbeddedQueue) -> None:
    queue.send([OutgoingMessage("m1", "user-1", b"\x00\xffbinary", properties={"kind": "created", "é": "ü"})])

    received = receive(queue)

    assert received.body == b"\x00\xffbinary"
    assert received.properties == {"kind": "created", "é": "ü"}
    assert received.enqueued_at.tzinfo is UTC


def test_replay_sends_a_copy_under_a_new_id_that_keeps_the_original_id_and_removes_the_entry(
    queue: EmbeddedQueue, clock: FakeClock
) -> None:
    queue.send([OutgoingMessage("m1", "user-7", b"payload", properties={"kind": "created"})])
    queue.dead_letter(receive(queue), "PolicyRefused", "protected account")
    [dead] = queue.dead_letters()
    assert (dead.reason, dead.description) == ("PolicyRefused", "protected account")
    assert queue.dead_letter_by_sequence(dead.sequence_number) == dead

    clock.advance(5)
    assert queue.replay(dead.sequence_number) == "m1:r1"

    assert queue.dead_letters() == []
    assert queue.dead_letter_by_sequence(dead.sequence_number) is None
    copy = receive(queue)
    assert (copy.message_id, copy.session_id, copy.body) == ("m1:r1", "user-7", b"payload")
    assert copy.delivery_count == 1
    assert copy.properties == {"kind": "created", ORIGINAL_MESSAGE_ID: "m1", REPLAY_COUNT: "1"}

    # A replay that fails again replays as the second replay of the original, not as "m1:r1:r1".
    queue.dead_letter(copy, "Permanent", "still refused")
    [dead_again] = queue.dead_letters()
    assert queue.replay(dead_again.sequence_number) == "m1:r2"
    assert receive(queue).properties[ORIGINAL_MESSAGE_ID] == "m1"


def test_a_replay_starts_afresh_without_the_back_off_of_its_previous_life(
    queue: EmbeddedQueue, clock: FakeClock
) -> None:
    queue.send([message("m1")])
    queue.retry_later(receive(queue), 0, "busy")
    queue.dead_letter(receive(queue), "Permanent", "gave up")

    queue.replay(queue.dead_letters()[0].sequence_number)

    properties = receive(queue).properties
    assert RETRY_ATTEMPT not in properties
    assert LAST_RETRY_REASON not in properties


def test_replaying_a_sequence_number_that_was_already_replayed_raises_a_clear_error(
    queue: EmbeddedQueue,
) -> None:
    queue.send([message("m1")])
    queue.dead_letter(receive(queue), "Permanent", "bad data")
    sequence_number = queue.dead_letters()[0].sequence_number
    queue.replay(sequence_number)

    with pytest.raises(DeadLetterNotFoundError, match=f"sequence number {sequence_number}"):
        queue.replay(sequence_number)
    assert queue.counts()["active"] == 1  # the failed second replay sent nothing


def test_purging_a_dead_letter_removes_it_for_good(queue: EmbeddedQueue) -> None:
    queue.send([message("m1"), message("m2", "user-2")])
    queue.dead_letter(receive(queue), "Permanent", "one")
    queue.dead_letter(receive(queue), "Permanent", "two")
    first, second = queue.dead_letters()
    assert (first.message_id, second.message_id) == ("m1", "m2")  # oldest first

    assert queue.purge_dead_letter(first.sequence_number) is True
    assert queue.purge_dead_letter(first.sequence_number) is False
    assert queue.dead_letters() == [second]


@pytest.mark.parametrize(
    "settle",
    [
        pytest.param(lambda q, m: q.complete(m), id="complete"),
        pytest.param(lambda q, m: q.abandon(m), id="abandon"),
        pytest.param(lambda q, m: q.retry_later(m, 5, "busy"), id="retry_later"),
        pytest.param(lambda q, m: q.dead_letter(m, "Permanent", "x"), id="dead_letter"),
    ],
)
def test_settling_with_a_stale_lock_token_raises_lock_lost_error_and_leaves_the_new_holder_alone(
    queue: EmbeddedQueue, clock: FakeClock, settle: Callable[[EmbeddedQueue, ReceivedMessage], None]
) -> None:
    queue.send([message("m1")])
    stale = receive(queue)
    clock.advance(LOCK_SECONDS + 1)
    current = receive(queue)

    with pytest.raises(LockLostError, match="received again"):
        settle(queue, stale)

    queue.complete(current)
    assert queue.counts() == {"active": 0, "scheduled": 0, "locked": 0, "dead_lettered": 0}


def test_settling_a_message_twice_raises_lock_lost_error(queue: EmbeddedQueue) -> None:
    queue.send([message("m1")])
    received = receive(queue)
    queue.complete(received)

    with pytest.raises(LockLostError, match="already completed"):
        queue.complete(received)


def test_an_expired_lock_can_still_be_settled_while_nobody_received_the_message_again(
    queue: EmbeddedQueue, clock: FakeClock
) -> None:
    queue.send([message("m1")])
    received = receive(queue)
    clock.advance(LOCK_SECONDS + 1)

    queue.complete(received)

    assert queue.receive(0) is None


def test_counts_report_active_scheduled_locked_and_dead_lettered_messages(
    queue: EmbeddedQueue, clock: FakeClock
) -> None:
    later = datetime.fromtimestamp(clock.now + 60, tz=UTC)
    queue.send(
        [message(f"m{i}", f"user-{i}") for i in range(5)] + [message("s", "user-s", scheduled_at=later)]
    )
    receive(queue)
    queue.dead_letter(receive(queue), "Permanent", "x")

    assert queue.counts() == {"active": 3, "scheduled": 1, "locked": 1, "dead_lettered": 1}
    clock.advance(LOCK_SECONDS + 1)
    assert queue.counts() == {"active": 4, "scheduled": 1, "locked": 0, "dead_lettered": 1}
    clock.advance(60)
    assert queue.counts() == {"active": 5, "scheduled": 0, "locked": 0, "dead_lettered": 1}


def test_health_is_false_once_the_queue_is_closed(queue: EmbeddedQueue) -> None:
    assert queue.health() is True
    queue.close()
    assert queue.health() is False
    queue.close()  # closing twice is harmless


def test_the_file_survives_reopening(open_queue: Callable[[], EmbeddedQueue]) -> None:
    first = open_queue()
    first.send([message("m1")])
    first.close()

    assert receive(open_queue()).message_id == "m1"


RECEIVE_TIMEOUT = 30.0


class _WatchedSignal:
    """The queue's wake-up signal, watched: says when the receiver is blocked in its wait, and that a wake-up
    ended it.

    ``blocked`` is set only once ``receive`` has looked at the file, found nothing deliverable and gone to wait,
    so whatever the test does next happens while the receiver is blocked. The wait is given no timeout: only a
    notification (the wake-up under test) can end it, never a timeout or a polling tick.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.blocked = threading.Event()
        self.woken = 0

    @property
    def generation(self) -> int:
        return int(self.inner.generation)

    def notify(self) -> None:
        self.inner.notify()

    def wait(self, generation: int, timeout: float) -> None:
        self.blocked.set()
        self.inner.wait(generation, None)  # no timeout: returns only when notified
        self.woken += 1


def _receive_in_thread(
    queue: EmbeddedQueue, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Thread, _WatchedSignal, list[object]]:
    """A receive in another thread, returned once it is blocked waiting (an event, never a sleep)."""
    watched = _WatchedSignal(queue._signal)
    monkeypatch.setattr(queue, "_signal", watched)
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(queue.receive(RECEIVE_TIMEOUT)), daemon=True)
    thread.start()
    assert watched.blocked.wait(RECEIVE_TIMEOUT), "the receiver never went to wait"
    return thread, watched, result


def _returned(thread: threading.Thread, watched: _WatchedSignal) -> None:
    thread.join(RECEIVE_TIMEOUT)  # bounds a hang only: without the wake-up the receiver waits forever
    if thread.is_alive():
        watched.inner.notify()  # let it go before failing
        pytest.fail("the receiver was never woken")
    assert watched.woken == 1  # one wait, ended by the wake-up


def test_a_receive_blocked_in_another_thread_wakes_when_a_message_is_sent(
    queue: EmbeddedQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread, watched, result = _receive_in_thread(queue, monkeypatch)

    queue.send([message("m1")])

    _returned(thread, watched)
    [received] = result
    assert isinstance(received, ReceivedMessage)
    assert received.message_id == "m1"


def test_a_receive_wakes_when_another_queue_object_of_the_process_sends_to_the_same_file(
    open_queue: Callable[[], EmbeddedQueue], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, ingress = open_queue(), open_queue()
    thread, watched, result = _receive_in_thread(worker, monkeypatch)

    ingress.send([message("m1")])

    _returned(thread, watched)
    assert isinstance(result[0], ReceivedMessage)


def test_a_receive_blocked_behind_a_locked_session_wakes_when_the_session_is_completed(
    queue: EmbeddedQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue.send([message("a1"), message("a2")])
    a1 = receive(queue)
    thread, watched, result = _receive_in_thread(queue, monkeypatch)

    queue.complete(a1)

    _returned(thread, watched)
    assert isinstance(result[0], ReceivedMessage)
    assert result[0].message_id == "a2"


def test_closing_the_queue_releases_a_receiver_waiting_in_another_thread(
    queue: EmbeddedQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread, watched, result = _receive_in_thread(queue, monkeypatch)

    queue.close()

    _returned(thread, watched)
    assert result == [None]


SESSIONS = 20
PER_SESSION = 10


def _consume(
    path: str, ledger_path: str, consumer: int, barrier: multiprocessing.synchronize.Barrier
) -> None:
    """A consumer process: records each message in a shared ledger before completing it."""
    queue = EmbeddedQueue(Path(path))
    ledger = sqlite3.connect(ledger_path, timeout=30, isolation_level=None)
    barrier.wait(60)  # both consumers start competing at the same time
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        received = queue.receive(0.2)
        if received is None:
            counts = queue.counts()
            if counts["active"] + counts["scheduled"] + counts["locked"] == 0:
                break
            continue
        # Written before complete: the next message of the session cannot be delivered until then, so the
        # ledger's order within a session is the delivery order.
        ledger.execute(
            "INSERT INTO ledger (consumer, message_id, session_id, position) VALUES (?, ?, ?, ?)",
            (consumer, received.message_id, received.session_id, int(received.body)),
        )
        queue.complete(received)
    ledger.close()
    queue.close()


def test_two_processes_receiving_from_one_file_process_each_message_once_in_session_order(
    tmp_path: Path,
) -> None:
    path, ledger_path = tmp_path / "queue.db", tmp_path / "ledger.db"
    with EmbeddedQueue(path) as queue:
        for position in range(PER_SESSION):
            queue.send(
                [
                    OutgoingMessage(f"s{session}-m{position}", f"s{session}", str(position).encode())
                    for session in range(SESSIONS)
                ]
            )
    ledger = sqlite3.connect(ledger_path, isolation_level=None)
    ledger.execute(
        "CREATE TABLE ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, consumer INTEGER, message_id TEXT, "
        "session_id TEXT, position INTEGER)"
    )

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    consumers = [
        context.Process(target=_consume, args=(str(path), str(ledger_path), consumer, barrier))
        for consumer in (0, 1)
    ]
    for process in consumers:
        process.start()
    for process in consumers:
        process.join(180)
        assert process.exitcode == 0

    rows = ledger.execute(
        "SELECT consumer, message_id, session_id, position FROM ledger ORDER BY id"
    ).fetchall()
    ledger.close()
    assert Counter(message_id for _, message_id, _, _ in rows) == Counter(
        f"s{session}-m{position}" for session in range(SESSIONS) for position in range(PER_SESSION)
    )  # every message exactly once
    positions: dict[str, list[int]] = defaultdict(list)
    for _, _, session_id, position in rows:
        positions[session_id].append(position)
    assert all(seen == list(range(PER_SESSION)) for seen in positions.values())
    assert {consumer for consumer, _, _, _ in rows} == {0, 1}
    with EmbeddedQueue(path) as queue:
        assert queue.counts() == {"active": 0, "scheduled": 0, "locked": 0, "dead_lettered": 0}


def test_dead_letters_are_paged_and_counted_by_reason_for_the_console(queue: EmbeddedQueue) -> None:
    queue.send([message(f"m{n}", f"user-{n}") for n in range(5)])
    for n in range(5):
        queue.dead_letter(receive(queue), "OuMissing" if n % 2 == 0 else "NamesExhausted", f"item {n}")
    assert queue.dead_letter_reasons() == {"OuMissing": 3, "NamesExhausted": 2}
    every = queue.dead_letters()
    assert queue.dead_letter_page(offset=1, limit=2) == every[1:3]
    assert [m.description for m in queue.dead_letter_page(reason="OuMissing", offset=1, limit=5)] == [
        "item 2",
        "item 4",
    ]


def test_a_renewed_lock_keeps_the_message_and_its_session_from_a_second_receiver(
    open_queue: Callable[[], EmbeddedQueue], clock: FakeClock
) -> None:
    holder, other = open_queue(), open_queue()
    holder.send([message("m1"), message("m2")])
    first = receive(holder)
    assert first.locked_until == datetime.fromtimestamp(clock.now + LOCK_SECONDS, UTC)

    clock.advance(LOCK_SECONDS - 1)
    assert holder.renew_lock(first) is True
    clock.advance(2)  # past the first lock: without the renewal, ``other`` would receive m1 again here
    assert other.receive(0) is None
    holder.complete(first)
    assert receive(other).message_id == "m2"


def test_renewing_a_lock_another_receiver_took_over_or_that_was_settled_reports_it_lost(
    open_queue: Callable[[], EmbeddedQueue], clock: FakeClock
) -> None:
    holder, other = open_queue(), open_queue()
    holder.send([message("m1")])
    first = receive(holder)
    clock.advance(LOCK_SECONDS + 1)
    again = receive(other)
    assert holder.renew_lock(first) is False
    assert other.renew_lock(again) is True
    other.complete(again)
    assert other.renew_lock(again) is False
