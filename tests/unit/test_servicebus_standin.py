"""The Service Bus stand-in keeps the documented contract, so tests against it mean something."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    OperationTimeoutError,
    ServiceBusError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

from tests.standins.servicebus import StandInNamespace

QUEUE = "q"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def bus(clock: Clock) -> StandInNamespace:
    namespace = StandInNamespace(clock=clock, lock_seconds=60, max_delivery_count=2)
    namespace.create_queue(QUEUE, duplicate_window_seconds=600)
    return namespace


def send(bus: StandInNamespace, message_id: str, session_id: str | None = "s1") -> None:
    with bus.client().get_queue_sender(QUEUE) as sender:
        sender.send_messages(
            ServiceBusMessage(b"body-" + message_id.encode(), message_id=message_id, session_id=session_id)
        )


def test_a_session_queue_rejects_a_message_without_session_id(bus: StandInNamespace) -> None:
    with pytest.raises(ServiceBusError, match="SessionId was not set"):
        send(bus, "m1", None)


def test_duplicates_are_dropped_within_the_window_and_accepted_after_it(bus: StandInNamespace, clock: Clock) -> None:
    send(bus, "m1")
    send(bus, "m1")
    assert len(bus.active(QUEUE)) == 1
    clock.now += 601
    send(bus, "m1")
    assert len(bus.active(QUEUE)) == 2


def test_a_scheduled_message_is_invisible_until_its_time(bus: StandInNamespace, clock: Clock) -> None:
    at = datetime.fromtimestamp(clock.now, UTC) + timedelta(seconds=30)
    with bus.client().get_queue_sender(QUEUE) as sender:
        [number] = sender.schedule_messages(ServiceBusMessage(b"later", message_id="m1", session_id="s1"), at)
    assert number > 0
    with pytest.raises(OperationTimeoutError):
        bus.client().get_queue_receiver(QUEUE, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=0.01).__enter__()
    clock.now += 30
    with bus.client().get_queue_receiver(QUEUE, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=0.01) as receiver:
        [received] = receiver.receive_messages(max_wait_time=0.01)
    assert received.message_id == "m1" and received.scheduled_enqueue_time_utc == at


def test_a_session_is_locked_to_one_receiver_and_delivered_in_order(bus: StandInNamespace) -> None:
    send(bus, "m1")
    send(bus, "m2")
    first = bus.client().get_queue_receiver(QUEUE, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=0.01)
    with first:
        assert first.session.session_id == "s1"
        with pytest.raises(SessionCannotBeLockedError):
            bus.client().get_queue_receiver(QUEUE, session_id="s1", max_wait_time=0.01).__enter__()
        [m1] = first.receive_messages(max_wait_time=0.01)
        assert first.receive_messages(max_wait_time=0.01) == []  # m2 waits behind the unsettled m1
        first.complete_message(m1)
        with pytest.raises(MessageAlreadySettled):
            first.complete_message(m1)
        [m2] = first.receive_messages(max_wait_time=0.01)
        assert m2.message_id == "m2" and b"".join(m2.body) == b"body-m2"


def test_settling_after_the_session_lock_expired_fails_and_the_message_comes_back(
    bus: StandInNamespace, clock: Clock
) -> None:
    send(bus, "m1")
    with bus.client().get_queue_receiver(QUEUE, session_id="s1", max_wait_time=0.01) as receiver:
        [m1] = receiver.receive_messages(max_wait_time=0.01)
        clock.now += 61
        with pytest.raises(SessionLockLostError):
            receiver.complete_message(m1)
    with bus.client().get_queue_receiver(QUEUE, session_id="s1", max_wait_time=0.01) as receiver:
        [again] = receiver.receive_messages(max_wait_time=0.01)
    assert again.delivery_count == 2


def test_past_max_deliveries_a_message_is_dead_lettered_and_read_without_a_session(bus: StandInNamespace) -> None:
    send(bus, "m1")
    for _ in range(2):
        with bus.client().get_queue_receiver(QUEUE, session_id="s1", max_wait_time=0.01) as receiver:
            [m1] = receiver.receive_messages(max_wait_time=0.01)
            receiver.abandon_message(m1)
    with bus.client().get_queue_receiver(QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=0.01) as dlq:
        [dead] = dlq.peek_messages(10)
        assert dead.lock_token is None
        assert dead.application_properties[b"DeadLetterReason"] == b"MaxDeliveryCountExceeded"
        assert dead.dead_letter_reason == "MaxDeliveryCountExceeded" and dead.delivery_count == 2
        [locked] = dlq.receive_messages(max_wait_time=0.01)
        dlq.complete_message(locked)
        assert dlq.peek_messages(10) == []
