"""The Service Bus adapter's contract, over the wire: the real azure-servicebus SDK against the AMQP broker
(tests/standins/amqp_broker), a separate process speaking AMQP 1.0 as Service Bus does."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from lifecycle.errors import ConfigurationError, InvalidEvent, Retryable
from lifecycle.queue import (
    FIRST_ENQUEUED_AT,
    LAST_RETRY_REASON,
    ORIGINAL_MESSAGE_ID,
    REPLAY_COUNT,
    RETRY_ATTEMPT,
    RETRY_OF,
    DeadLetterNotFoundError,
    LockLostError,
    OutgoingMessage,
    ReceivedMessage,
)
from lifecycle.queue.servicebus import ServiceBusQueue
from lifecycle.queue.servicebus_messages import derived_id
from lifecycle.settings import Settings
from tests.standins.amqp_broker.process import BrokerProcess
from tests.unit.conftest import Bus, Clock, message


def from_host(queue: ServiceBusQueue, bus: Bus, *, delivery_count: int = 1) -> ReceivedMessage:
    """What azure_host does with the message the trigger delivered (the oldest active one)."""
    stored = bus.active()[0]
    return queue.from_host(
        message_id=str(stored["message_id"]),
        session_id=str(stored["session_id"]),
        body=stored["body"].encode(),
        application_properties=dict(stored["properties"]),
        delivery_count=delivery_count,
        enqueued_at=datetime.fromtimestamp(stored["enqueued_at"], UTC),
        lock_token="5f2c0b7e-0000-0000-0000-000000000001",
        sequence_number=stored["sequence_number"],
    )


def with_receiver(bus: Bus, session_id: str, act: Callable[[Any, Any], None]) -> None:
    """Receive the head of a session with the SDK and hand receiver and message to ``act``."""
    client = bus.client()
    with client.get_queue_receiver(bus.queue, session_id=session_id, max_wait_time=1) as receiver:
        [received] = receiver.receive_messages(max_wait_time=1)
        act(receiver, received)


def host_completes_head(bus: Bus, session_id: str) -> None:
    """The host completes the message its function returned from."""
    with_receiver(bus, session_id, lambda receiver, received: receiver.complete_message(received))


# Sending ---------------------------------------------------------------------------------------------------
def test_a_work_item_is_sent_with_its_work_id_session_and_properties(queue: ServiceBusQueue, bus: Bus) -> None:
    assert queue.send([message()]) == [True]
    [sent] = bus.active()
    assert (sent["message_id"], sent["session_id"], sent["body"]) == ("w-1", "26", '{"x": 1}')
    assert sent["properties"] == {"event": "created", "schema_version": "1"}
    assert sent["content_type"] == "application/json"


def test_a_resent_work_id_is_dropped_by_service_bus_silently(queue: ServiceBusQueue, bus: Bus) -> None:
    queue.send([message()])
    # Service Bus does not tell the sender: the port can only say "sent".
    assert queue.send([message()]) == [True]
    assert len(bus.active()) == 1


def test_one_client_is_built_per_process_and_reused(queue: ServiceBusQueue, bus: Bus) -> None:
    for index in range(5):
        queue.send([message(f"w-{index}")])
    assert bus.clients_created == 1


def test_a_batch_too_large_for_one_transfer_is_sent_in_parts(queue: ServiceBusQueue, bus: Bus) -> None:
    batch = [message(f"w-{i}", str(i), b"x" * 100_000) for i in range(5)]
    assert queue.send(batch) == [True] * 5
    assert sorted(str(s["message_id"]) for s in bus.active()) == [f"w-{i}" for i in range(5)]


def test_a_work_item_over_the_message_size_limit_is_refused_as_too_large(queue: ServiceBusQueue, bus: Bus) -> None:
    with pytest.raises(InvalidEvent) as refused:
        queue.send([message(body=b"x" * 300_000)])
    assert refused.value.status == 413
    assert bus.active() == []


def test_a_busy_or_unreachable_namespace_is_a_transient_failure(
    queue: ServiceBusQueue, bus: Bus, amqp_broker: BrokerProcess
) -> None:
    queue.send([message("w-0")])
    amqp_broker.fail_next("send", "com.microsoft:server-busy", "The server is busy.")
    with pytest.raises(Retryable) as busy:
        queue.send([message()])
    assert busy.value.retry_after == 10.0
    amqp_broker.fail_next("send", "amqp:connection:forced", "connection reset")
    with pytest.raises(Retryable):
        queue.send([message()])
    # The next send works again (a fresh sender), and nothing was half-sent.
    assert queue.send([message()]) == [True]
    assert [s["message_id"] for s in bus.active()] == ["w-0", "w-1"]


def test_a_missing_queue_or_role_is_a_configuration_error(bus: Bus, clock: Clock, amqp_broker: BrokerProcess) -> None:
    wrong = ServiceBusQueue("no-such-queue", client_factory=bus.client, clock=clock)
    with pytest.raises(ConfigurationError, match="no-such-queue"):
        wrong.send([message()])
    right = ServiceBusQueue(bus.queue, client_factory=bus.client, clock=clock)
    amqp_broker.fail_next("put-token", "amqp:unauthorized-access", "Unauthorized access. 'Send' claim(s) are required")
    with pytest.raises(ConfigurationError, match="Data Sender"):
        right.send([message()])
    right.close()
    wrong.close()


def test_a_development_connection_string_reaches_the_broker(amqp_broker: BrokerProcess, bus: Bus) -> None:
    settings = Settings(
        queue_backend="servicebus",
        servicebus_connection_string=amqp_broker.connection_string,
        servicebus_queue=bus.queue,
    )
    adapter = ServiceBusQueue.from_settings(settings)
    try:
        assert adapter.send([message()]) == [True]
        assert adapter.health() is True
    finally:
        adapter.close()
    assert [s["message_id"] for s in bus.active()] == ["w-1"]


def test_a_wrong_shared_access_key_is_a_configuration_error(amqp_broker: BrokerProcess, bus: Bus) -> None:
    wrong_key = amqp_broker.connection_string.replace(amqp_broker.key, "not-the-key")
    settings = Settings(queue_backend="servicebus", servicebus_connection_string=wrong_key, servicebus_queue=bus.queue)
    adapter = ServiceBusQueue.from_settings(settings)
    try:
        with pytest.raises(ConfigurationError):
            adapter.send([message()])
    finally:
        adapter.close()
    assert bus.active() == []


def test_settings_without_a_namespace_or_connection_string_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="LIFECYCLE_SERVICEBUS_NAMESPACE"):
        ServiceBusQueue.from_settings(Settings(queue_backend="servicebus"))


def test_a_namespace_setting_builds_no_client_until_first_use() -> None:
    queue = ServiceBusQueue.from_settings(Settings(servicebus_namespace="contoso-bus"))
    assert queue.queue_name == "lifecycle-work" and queue.parking is None
    queue.close()


# Messages from the Functions trigger -----------------------------------------------------------------------
def test_completing_a_trigger_message_leaves_it_to_the_host(queue: ServiceBusQueue, bus: Bus) -> None:
    queue.send([message()])
    received = from_host(queue, bus)
    queue.complete(received)
    assert queue.host_settlement(received) == "complete"
    assert [s["message_id"] for s in bus.active()] == ["w-1"]  # the host completes it on return


def test_abandoning_a_trigger_message_asks_the_host_to_abandon(queue: ServiceBusQueue, bus: Bus) -> None:
    queue.send([message()])
    received = from_host(queue, bus)
    queue.abandon(received)
    assert queue.host_settlement(received) == "abandon"
    # Asked once: the decision is forgotten after it was read.
    assert queue.host_settlement(received) is None


def test_a_trigger_message_cannot_be_settled_twice(queue: ServiceBusQueue, bus: Bus) -> None:
    queue.send([message()])
    received = from_host(queue, bus)
    queue.complete(received)
    with pytest.raises(LockLostError):
        queue.abandon(received)


def test_a_back_off_schedules_a_copy_under_a_new_id_without_using_up_a_delivery(
    queue: ServiceBusQueue, bus: Bus, clock: Clock
) -> None:
    queue.send([message()])
    received = from_host(queue, bus)
    queue.retry_later(received, 30.0, "the DC did not answer")
    assert queue.host_settlement(received) == "complete"
    [copy] = bus.scheduled()
    assert (copy["message_id"], copy["session_id"], copy["body"]) == ("w-1:b1", "26", '{"x": 1}')
    # AMQP carries the schedule time in milliseconds.
    assert copy["visible_at"] == pytest.approx(clock.last + 30.0, abs=0.001)
    properties = copy["properties"]
    assert properties[RETRY_ATTEMPT] == "1" and properties[RETRY_OF] == "w-1"
    assert properties[LAST_RETRY_REASON] == "the DC did not answer"
    assert float(properties[FIRST_ENQUEUED_AT]) == pytest.approx(received.enqueued_at.timestamp())
    assert properties["event"] == "created"


def test_a_second_back_off_continues_the_chain_and_keeps_the_first_enqueue_time(
    queue: ServiceBusQueue, bus: Bus, amqp_broker: BrokerProcess
) -> None:
    queue.send([message()])
    first = from_host(queue, bus)
    queue.retry_later(first, 10.0, "busy")
    host_completes_head(bus, "26")
    amqp_broker.advance(11)
    second = from_host(queue, bus)
    assert second.message_id == "w-1:b1"
    queue.retry_later(second, 20.0, "busy again")
    copy = bus.scheduled()[-1]
    assert copy["message_id"] == "w-1:b2" and copy["properties"][RETRY_OF] == "w-1"
    assert float(copy["properties"][FIRST_ENQUEUED_AT]) == pytest.approx(first.enqueued_at.timestamp())


def test_a_back_off_repeated_after_a_crash_does_not_fork_the_chain(queue: ServiceBusQueue, bus: Bus) -> None:
    queue.send([message()])
    # The function scheduled its copy, then died before returning: the host redelivers the original.
    queue.retry_later(from_host(queue, bus), 10.0, "busy")
    queue.retry_later(from_host(queue, bus, delivery_count=2), 10.0, "busy")
    assert [s["message_id"] for s in bus.scheduled()] == ["w-1:b1"]


def test_a_permanent_failure_without_parking_is_abandoned_until_service_bus_dead_letters_it(
    queue: ServiceBusQueue, bus: Bus
) -> None:
    queue.send([message()])
    received = from_host(queue, bus)
    queue.dead_letter(received, "Permanent", "the OU does not exist")
    assert queue.host_settlement(received) == "abandon"


def test_derived_ids_stay_within_the_message_id_limit() -> None:
    assert derived_id("halo-123", ":b1") == "halo-123:b1"
    long_id = derived_id("x" * 200, ":r2")
    assert len(long_id) <= 128 and long_id.endswith(":r2")
    assert derived_id("x" * 200, ":r2") == long_id and derived_id("x" * 199 + "y", ":r2") != long_id


# Messages received with the SDK ----------------------------------------------------------------------------
def test_receive_takes_the_next_session_and_completes_with_the_sdk(queue: ServiceBusQueue, bus: Bus) -> None:
    queue.send([message("a1", "1"), message("b1", "2"), message("a2", "1")])
    first = queue.receive(timeout=1)
    assert first is not None and (first.message_id, first.delivery_count) == ("a1", 1)
    assert first.properties == {"event": "created", "schema_version": "1"}
    second = queue.receive(timeout=1)
    # Session 1 is locked while a1 is held: the next receive gets the other session.
    assert second is not None and second.message_id == "b1"
    queue.complete(first)
    third = queue.receive(timeout=1)
    assert third is not None and third.message_id == "a2"
    assert queue.receive(timeout=1) is None


def test_an_sdk_message_is_dead_lettered_in_the_sub_queue_with_its_reason(queue: ServiceBusQueue, bus: Bus) -> None:
    queue.send([message()])
    received = queue.receive(timeout=1)
    assert received is not None
    queue.dead_letter(received, "Permanent", "the OU does not exist")
    [dead] = queue.dead_letters()
    assert (dead.message_id, dead.reason, dead.description) == ("w-1", "Permanent", "the OU does not exist")
    assert dead.properties == {"event": "created", "schema_version": "1"} and dead.delivery_count == 1


def test_a_session_lock_lost_before_settling_surfaces_as_the_ports_lock_lost_error(
    queue: ServiceBusQueue, bus: Bus, amqp_broker: BrokerProcess
) -> None:
    queue.send([message()])
    received = queue.receive(timeout=1)
    assert received is not None
    amqp_broker.advance(61)  # past the queue's lock duration: the session lock has expired
    with pytest.raises(LockLostError):
        queue.complete(received)
    # Nothing was lost: the message comes back, one delivery counted.
    again = queue.receive(timeout=1)
    assert again is not None and (again.message_id, again.delivery_count) == ("w-1", 2)


def test_a_renewed_session_lock_outlives_the_lock_duration_and_the_message_still_completes(
    queue: ServiceBusQueue, bus: Bus, amqp_broker: BrokerProcess
) -> None:
    queue.send([message()])
    received = queue.receive(timeout=1)
    assert received is not None and received.locked_until is not None
    amqp_broker.advance(50)
    assert queue.renew_lock(received) is True
    amqp_broker.advance(50)  # 100 s after the receive: past the 60 s lock, within the renewed one
    queue.complete(received)
    assert bus.active() == [] and queue.receive(timeout=1) is None


def test_renewing_a_session_lock_that_expired_or_a_settled_message_reports_it_lost(
    queue: ServiceBusQueue, bus: Bus, amqp_broker: BrokerProcess
) -> None:
    queue.send([message("w-1", "1"), message("w-2", "2")])
    expired = queue.receive(timeout=1)
    settled = queue.receive(timeout=1)
    assert expired is not None and settled is not None
    queue.complete(settled)
    assert queue.renew_lock(settled) is False
    amqp_broker.advance(61)
    assert queue.renew_lock(expired) is False


def test_an_sdk_back_off_sends_the_copy_before_completing_the_original(queue: ServiceBusQueue, bus: Bus) -> None:
    queue.send([message()])
    received = queue.receive(timeout=1)
    assert received is not None
    queue.retry_later(received, 60.0, "busy")
    assert bus.active() == []
    assert [s["message_id"] for s in bus.scheduled()] == ["w-1:b1"]


# Dead letters and replay -----------------------------------------------------------------------------------
def dead_letter_in_sub_queue(bus: Bus, message_id: str, session_id: str, reason: str) -> None:
    client = bus.client()
    with client.get_queue_receiver(bus.queue, session_id=session_id, max_wait_time=1) as receiver:
        [received] = [m for m in receiver.receive_messages(max_wait_time=1) if m.message_id == message_id]
        receiver.dead_letter_message(received, reason=reason, error_description=f"{reason} for {message_id}")


def test_the_dead_letter_sub_queue_is_listed_with_reasons_decoded_from_bytes(queue: ServiceBusQueue, bus: Bus) -> None:
    queue.send([message("w-1", "26"), message("w-2", "27")])
    dead_letter_in_sub_queue(bus, "w-1", "26", "Permanent")
    dead_letter_in_sub_queue(bus, "w-2", "27", "PolicyRefused")
    listed = queue.dead_letters()
    assert [(m.message_id, m.reason, m.description) for m in listed] == [
        ("w-1", "Permanent", "Permanent for w-1"),
        ("w-2", "PolicyRefused", "PolicyRefused for w-2"),
    ]
    assert all("DeadLetterReason" not in m.properties for m in listed)
    assert queue.dead_letter_by_sequence(listed[1].sequence_number) == listed[1]
    assert queue.dead_letter_by_sequence(999) is None


def test_a_replay_sends_a_copy_under_a_new_id_and_removes_the_dead_letter(queue: ServiceBusQueue, bus: Bus) -> None:
    queue.send([message()])
    dead_letter_in_sub_queue(bus, "w-1", "26", "Permanent")
    [dead] = queue.dead_letters()
    assert queue.replay(dead.sequence_number) == "w-1:r1"
    assert queue.dead_letters() == []
    [copy] = bus.active()
    assert (copy["message_id"], copy["session_id"], copy["body"]) == ("w-1:r1", "26", '{"x": 1}')
    assert copy["properties"][ORIGINAL_MESSAGE_ID] == "w-1" and copy["properties"][REPLAY_COUNT] == "1"
    assert "DeadLetterReason" not in copy["properties"]
    with pytest.raises(DeadLetterNotFoundError):
        queue.replay(dead.sequence_number)


def test_a_replay_interrupted_after_sending_is_harmless_when_repeated(
    queue: ServiceBusQueue, bus: Bus, amqp_broker: BrokerProcess
) -> None:
    queue.send([message()])
    dead_letter_in_sub_queue(bus, "w-1", "26", "Permanent")
    [dead] = queue.dead_letters()
    amqp_broker.fail_next("complete", "com.microsoft:server-busy", "The server is busy.")
    with pytest.raises(Retryable):
        queue.replay(dead.sequence_number)
    # The copy went out first; the dead letter is still there (locked until its lock runs out) ...
    assert [m.message_id for m in queue.dead_letters()] == ["w-1"]
    with pytest.raises(DeadLetterNotFoundError, match="in a minute"):
        queue.replay(dead.sequence_number)
    # ... so the operator replays again a minute later.
    amqp_broker.advance(61)
    assert queue.replay(dead.sequence_number) == "w-1:r1"
    # The second copy had the same id: duplicate detection dropped it, one copy is queued.
    assert [s["message_id"] for s in bus.active()] == ["w-1:r1"]
    assert queue.dead_letters() == []


def test_a_replayed_back_off_copy_starts_afresh_from_its_original_id(queue: ServiceBusQueue, bus: Bus) -> None:
    properties = {"event": "created", RETRY_ATTEMPT: "7", RETRY_OF: "w-1", FIRST_ENQUEUED_AT: "1.0"}
    queue.send([OutgoingMessage("w-1:b7", "26", b"{}", properties)])
    dead_letter_in_sub_queue(bus, "w-1:b7", "26", "TransientFailuresExhausted")
    [dead] = queue.dead_letters()
    assert queue.replay(dead.sequence_number) == "w-1:r1"
    [copy] = bus.active()
    assert copy["properties"] == {"event": "created", ORIGINAL_MESSAGE_ID: "w-1", REPLAY_COUNT: "1"}


def test_a_filtered_replay_passes_over_other_dead_letters_and_leaves_them(queue: ServiceBusQueue, bus: Bus) -> None:
    queue.send([message(f"w-{i}", str(i)) for i in range(5)])
    for i in range(5):
        dead_letter_in_sub_queue(bus, f"w-{i}", str(i), "Permanent")
    numbers = [m.sequence_number for m in queue.dead_letters()]
    seen: list[tuple[int, str, str]] = []
    done = queue.replay_many([numbers[1], numbers[3]], progress=lambda n, old, new: seen.append((n, old, new)))
    assert done == {numbers[1]: "w-1:r1", numbers[3]: "w-3:r1"}
    assert seen == [(numbers[1], "w-1", "w-1:r1"), (numbers[3], "w-3", "w-3:r1")]
    assert [m.message_id for m in queue.dead_letters()] == ["w-0", "w-2", "w-4"]


def test_a_message_abandoned_past_max_deliveries_lands_in_the_sub_queue_and_can_be_replayed(
    queue: ServiceBusQueue, bus: Bus
) -> None:
    queue.send([message()])
    for _ in range(3):
        received = queue.receive(timeout=1)
        assert received is not None
        queue.abandon(received)
    assert queue.receive(timeout=1) is None
    [dead] = queue.dead_letters()
    assert (dead.reason, dead.delivery_count) == ("MaxDeliveryCountExceeded", 3)
    queue.replay(dead.sequence_number)
    replayed = queue.receive(timeout=1)
    assert replayed is not None and (replayed.message_id, replayed.delivery_count) == ("w-1:r1", 1)


def test_health_opens_a_sender_and_reports_a_failure(queue: ServiceBusQueue, bus: Bus, clock: Clock) -> None:
    assert queue.health() is True
    assert ServiceBusQueue("no-such-queue", client_factory=bus.client, clock=clock).health() is False


def test_a_session_queue_refuses_a_receiver_without_a_session(bus: Bus) -> None:
    from azure.servicebus.exceptions import ServiceBusError

    client = bus.client()
    with pytest.raises(ServiceBusError, match="requires sessions"):
        client.get_queue_receiver(bus.queue).receive_messages(max_wait_time=1)
