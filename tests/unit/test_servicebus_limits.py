"""The limits Service Bus documents, which the adapter must respect, checked over the wire against the AMQP
broker (which refuses what Service Bus refuses): MessageId and SessionId at most 128 characters, application
properties of simple types, the message size. Each test fails if the adapter sends what Service Bus refuses."""

from __future__ import annotations

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import ServiceBusError

from lifecycle.queue import OutgoingMessage
from lifecycle.queue.servicebus import ServiceBusQueue
from tests.unit.conftest import Bus, message

LONG_DELIVERY = "halo-" + "d" * 200 + "-created"


def test_a_message_id_over_128_characters_is_shortened_and_still_deduplicated(queue: ServiceBusQueue, bus: Bus) -> None:
    queue.send([message(LONG_DELIVERY)])
    queue.send([message(LONG_DELIVERY)])  # Halo re-sent the delivery
    [stored] = bus.active()
    assert len(stored["message_id"]) <= 128 and stored["message_id"].startswith("halo-ddd")
    queue.send([message(LONG_DELIVERY[:-1] + "x")])  # another delivery is other work
    assert len(bus.active()) == 2


def test_a_session_id_over_128_characters_keeps_one_persons_messages_in_one_session(
    queue: ServiceBusQueue, bus: Bus
) -> None:
    person = "p" * 300
    queue.send([message("w-1", person), message("w-2", person)])
    sessions = {m["session_id"] for m in bus.active()}
    assert len(sessions) == 1 and len(sessions.pop()) <= 128
    first = queue.receive(timeout=1)
    assert first is not None and first.message_id == "w-1"
    # The person's session is locked while w-1 is held: w-2 waits behind it.
    assert queue.receive(timeout=0.5) is None


def test_every_property_the_adapter_sends_is_a_type_service_bus_takes(queue: ServiceBusQueue, bus: Bus) -> None:
    queue.send([message()])
    received = queue.receive(timeout=1)
    assert received is not None
    queue.retry_later(received, 0.0, "the DC did not answer")  # a back-off copy with its history properties
    copy = queue.receive(timeout=1)
    assert copy is not None and copy.message_id == "w-1:b1"
    queue.dead_letter(copy, "Permanent", "x" * 10_000)  # a reason longer than a property should carry
    [dead] = queue.dead_letters()
    queue.replay(dead.sequence_number)  # the replay copy
    [replayed] = bus.active()
    assert replayed["message_id"] == "w-1:r1"
    assert all(isinstance(v, str) for v in replayed["properties"].values())


def test_a_work_item_over_the_size_limit_is_refused_before_anything_is_stored(queue: ServiceBusQueue, bus: Bus) -> None:
    from lifecycle.errors import InvalidEvent

    with pytest.raises(InvalidEvent) as refused:
        queue.send([OutgoingMessage("w-big", "26", b"x" * (256 * 1024), {"event": "created"})])
    assert refused.value.status == 413
    assert bus.active() == []


def test_the_broker_refuses_what_service_bus_refuses_so_these_tests_can_fail(bus: Bus) -> None:
    client = bus.client()
    with client.get_queue_sender(bus.queue) as sender:
        with pytest.raises(ServiceBusError, match="type Service Bus does not support"):
            sender.send_messages(
                ServiceBusMessage(b"{}", message_id="p", session_id="26", application_properties={"l": [1, 2]})  # type: ignore[dict-item]
            )
        with pytest.raises(ServiceBusError, match="SessionId was not set"):
            sender.send_messages(ServiceBusMessage(b"{}", message_id="no-session"))
    assert bus.active() == []
