"""Test control of the broker over its stdin: create queues, shift the clock, inject faults, read state.

Nothing here is Service Bus behaviour; it is how a test sets up and observes the broker without a second
AMQP client of its own.
"""

from __future__ import annotations

from typing import Any

from tests.standins.amqp_broker import wire
from tests.standins.amqp_broker.entity import BrokerError, Entity, QueueProperties


class ControlMixin:
    """Mixed into ``Broker``; uses its queues, nodes, faults and clock."""

    queues: dict[str, Entity]
    nodes: dict[str, Any]
    faults: dict[str, list[tuple[str, str]]]
    offset: float

    def now(self) -> float:
        raise NotImplementedError

    def create_queue(self, name: str, properties: QueueProperties) -> None:
        raise NotImplementedError

    def entity(self, path: str) -> Entity:
        raise NotImplementedError

    def _pump(self) -> None:
        raise NotImplementedError

    def control(self, command: dict[str, Any]) -> dict[str, Any]:
        """Test control over stdin: create queues, shift the clock, inject faults, read state."""
        name = command.get("cmd")
        if name == "queue":
            fields = {k: v for k, v in command.items() if k in QueueProperties.__dataclass_fields__}
            self.create_queue(str(command["name"]), QueueProperties(**fields))
            return {"ok": True}
        if name == "advance":
            self.offset += float(command["seconds"])
            self.on_timer_task_now()
            return {"ok": True, "now": self.now()}
        if name == "now":
            return {"ok": True, "now": self.now()}
        if name == "fail":
            self.faults.setdefault(str(command["operation"]), []).append(
                (str(command["condition"]), str(command.get("description", "injected")))
            )
            return {"ok": True}
        if name == "fail-management":
            node = self.nodes[str(command["entity"])]
            node.faults.append(
                (str(command["operation"]), BrokerError(str(command["condition"]), "injected", int(command["status"])))
            )
            return {"ok": True}
        if name == "state":
            return {"ok": True, **self.snapshot(str(command["queue"]))}
        return {"ok": False, "error": f"unknown command {name!r}"}

    def on_timer_task_now(self) -> None:
        now = self.now()
        for entity in self.queues.values():
            entity.expire(now)
            assert entity.dead_letter is not None
            entity.dead_letter.expire(now)
        self._pump()

    def snapshot(self, queue: str) -> dict[str, Any]:
        entity = self.entity(queue)
        now = self.now()

        def rows(target: Entity) -> list[dict[str, Any]]:
            out = []
            for stored in sorted(target.messages.values(), key=lambda s: s.sequence_number):
                message = wire.decode(stored.raw)
                body = message.body
                out.append(
                    {
                        "sequence_number": stored.sequence_number,
                        "message_id": stored.message_id,
                        "session_id": stored.session_id,
                        "body": bytes(body).decode("utf-8", "replace")
                        if isinstance(body, (bytes, memoryview))
                        else str(body),
                        "content_type": None if message.content_type is None else str(message.content_type),
                        "properties": {str(k): _jsonable(v) for k, v in (message.properties or {}).items()},
                        "added": dict(stored.properties_added),
                        "enqueued_at": stored.enqueued_at,
                        "visible_at": stored.visible_at,
                        "scheduled": stored.visible_at > now,
                        "deferred": stored.deferred,
                        "locked": stored.lock_token is not None,
                        "delivery_count": stored.delivery_count,
                        "size": stored.size,
                    }
                )
            return out

        assert entity.dead_letter is not None
        return {"now": now, "messages": rows(entity), "dead_letters": rows(entity.dead_letter)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
