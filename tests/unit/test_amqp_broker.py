"""The AMQP broker speaks the Service Bus subset the SDK uses, checked with the unmodified SDK: what the adapter's
contract tests do not reach (lock and session-lock renewal, scheduling and cancelling, peeking, deferral,
session state, one receiver per session)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import MessageLockLostError, SessionCannotBeLockedError

from tests.standins.amqp_broker.process import BrokerProcess
from tests.unit.conftest import Bus


def send(bus: Bus, *messages: ServiceBusMessage) -> None:
    with bus.client().get_queue_sender(bus.queue) as sender:
        sender.send_messages(list(messages))


def test_a_session_is_locked_to_one_receiver_and_its_lock_can_be_renewed(bus: Bus) -> None:
    send(bus, ServiceBusMessage(b"1", message_id="a", session_id="26"))
    client = bus.client()
    with client.get_queue_receiver(bus.queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1) as first:
        assert first.session.session_id == "26"
        until = first.session.locked_until_utc
        assert until is not None
        with (
            pytest.raises(SessionCannotBeLockedError),
            client.get_queue_receiver(bus.queue, session_id="26", max_wait_time=1) as second,
        ):
            second.receive_messages(max_wait_time=1)
        assert first.session.renew_lock() >= until
        first.session.set_state(b"step 3")
        assert first.session.get_state() == b"step 3"
        [message] = first.receive_messages(max_wait_time=1)
        assert (message.message_id, message.sequence_number, message.delivery_count) == ("a", 1, None)
        first.complete_message(message)


def test_scheduled_messages_wait_can_be_cancelled_and_are_peeked_with_their_time(bus: Bus) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    with bus.client().get_queue_sender(bus.queue) as sender:
        [kept] = sender.schedule_messages(ServiceBusMessage(b"k", message_id="kept", session_id="1"), later)
        [dropped] = sender.schedule_messages(ServiceBusMessage(b"d", message_id="dropped", session_id="1"), later)
        sender.cancel_scheduled_messages(dropped)
    assert [m["message_id"] for m in bus.scheduled()] == ["kept"]
    with bus.client().get_queue_receiver(bus.queue, session_id="1", max_wait_time=1) as receiver:
        assert receiver.receive_messages(max_wait_time=1) == []  # not due yet
        [peeked] = receiver.peek_messages(10)
        assert (peeked.sequence_number, peeked.message_id) == (kept, "kept")
        assert peeked.scheduled_enqueue_time_utc is not None
        assert abs((peeked.scheduled_enqueue_time_utc - later).total_seconds()) < 0.001


def test_a_deferred_message_is_reached_by_its_sequence_number(bus: Bus) -> None:
    send(bus, ServiceBusMessage(b"x", message_id="later", session_id="5"))
    with bus.client().get_queue_receiver(bus.queue, session_id="5", max_wait_time=1) as receiver:
        [message] = receiver.receive_messages(max_wait_time=1)
        receiver.defer_message(message)
        assert receiver.receive_messages(max_wait_time=1) == []
        [again] = receiver.receive_deferred_messages([message.sequence_number])
        assert again.message_id == "later"
        receiver.complete_message(again)
    assert bus.state()["messages"] == []


def test_a_dead_letter_lock_expires_and_can_be_renewed_before(bus: Bus, amqp_broker: BrokerProcess) -> None:
    send(bus, ServiceBusMessage(b"x", message_id="d", session_id="9"))
    with bus.client().get_queue_receiver(bus.queue, session_id="9", max_wait_time=1) as receiver:
        [message] = receiver.receive_messages(max_wait_time=1)
        receiver.dead_letter_message(message, reason="Permanent", error_description="the OU does not exist")
    client = bus.client()
    with client.get_queue_receiver(bus.queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=1) as dlq:
        [dead] = dlq.receive_messages(max_wait_time=1)
        assert (dead.dead_letter_reason, dead.dead_letter_error_description) == ("Permanent", "the OU does not exist")
        assert dead.dead_letter_source == bus.queue
        assert dlq.renew_message_lock(dead) is not None
        amqp_broker.advance(61)  # past the lock duration: the broker gives the message back
        with pytest.raises(MessageLockLostError):
            dlq.complete_message(dead)
    assert [m["message_id"] for m in bus.dead_lettered()] == ["d"]
