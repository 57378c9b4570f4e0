"""Unit fixtures: the Service Bus adapter on a fresh queue of the session's AMQP broker (tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.servicebus import ServiceBusClient

from lifecycle.queue import OutgoingMessage
from lifecycle.queue.servicebus import ServiceBusQueue
from tests.standins.amqp_broker.process import BrokerProcess


class Clock:
    """The broker's clock (it may have been moved forward), remembering what it last said."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.last = 0.0

    def __call__(self) -> float:
        self.last = self.broker.now()
        return self.last


class Bus:
    """The broker as the tests look at it: one fresh queue (max delivery count 3), its clients counted."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.queue = f"lifecycle-work-{uuid.uuid4().hex[:8]}"
        broker.create_queue(self.queue, max_delivery_count=3)
        self.clients_created = 0
        self._clients: list[Any] = []

    def client(self) -> Any:
        # retry_total=0: the adapter's own handling of an error is under test, not the SDK's retries.
        self.clients_created += 1
        client = ServiceBusClient.from_connection_string(self.broker.connection_string, retry_total=0)
        self._clients.append(client)
        return client

    def active(self) -> list[dict[str, Any]]:
        return self.broker.active(self.queue)

    def scheduled(self) -> list[dict[str, Any]]:
        return self.broker.scheduled(self.queue)

    def state(self) -> dict[str, Any]:
        """Everything the queue holds: ``messages`` (active, scheduled, locked) and ``dead_letters``."""
        return self.broker.state(self.queue)

    def dead_lettered(self) -> list[dict[str, Any]]:
        return self.broker.dead_lettered(self.queue)

    def close(self) -> None:
        for client in self._clients:
            client.close()


@pytest.fixture
def bus(amqp_broker: BrokerProcess) -> Iterator[Bus]:
    namespace = Bus(amqp_broker)
    yield namespace
    namespace.close()


@pytest.fixture
def clock(amqp_broker: BrokerProcess) -> Clock:
    return Clock(amqp_broker)


@pytest.fixture
def queue(bus: Bus, clock: Clock) -> Iterator[ServiceBusQueue]:
    adapter = ServiceBusQueue(bus.queue, client_factory=bus.client, clock=clock, receive_wait_seconds=1.0)
    yield adapter
    adapter.close()


def message(message_id: str = "w-1", session_id: str = "26", body: bytes = b'{"x": 1}') -> OutgoingMessage:
    return OutgoingMessage(message_id, session_id, body, {"event": "created", "schema_version": "1"})
