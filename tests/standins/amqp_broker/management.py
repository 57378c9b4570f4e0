"""The ``$management`` node of an entity: Service Bus's request-response operations.

Each operation is as [rr] (learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-request-response)
defines it: the request names the operation in the application property ``operation``, carries its
arguments as an AMQP map body, and is answered with ``statusCode`` / ``statusDescription`` (and
``errorCondition`` on failure) and a map body.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, cast

from proton import Array, Message, symbol

from tests.standins.amqp_broker import wire
from tests.standins.amqp_broker.entity import (
    DEAD_LETTER_DESCRIPTION,
    DEAD_LETTER_REASON,
    SESSION_LOCK_LOST,
    BrokerError,
    Entity,
)

OK, NO_CONTENT = 200, 204


def _tokens(value: Any) -> list[uuid.UUID]:
    return [v if isinstance(v, uuid.UUID) else uuid.UUID(str(v)) for v in list(value or [])]


def _timestamps(moments: list[float]) -> Array:
    from proton import UNDESCRIBED, Data

    return Array(cast(Any, UNDESCRIBED), Data.TIMESTAMP, *[wire.ms(m) for m in moments])


def _longs(numbers: list[int]) -> Array:
    from proton import UNDESCRIBED, Data

    return Array(cast(Any, UNDESCRIBED), Data.LONG, *numbers)


class ManagementNode:
    """Answers requests for one entity. ``now`` is the broker's clock; ``session_holder`` finds the receiver
    link a request is associated with (its session lock), by the request's ``associated-link-name``."""

    def __init__(self, entity: Entity, now: Callable[[], float], encode: Callable[[Any], bytes]) -> None:
        self.entity = entity
        self.now = now
        self.encode = encode
        self.faults: list[tuple[str, BrokerError]] = []

    def handle(self, request: Any) -> Any:
        properties: dict[Any, Any] = dict(request.properties or {})
        operation = str(properties.get("operation", ""))
        body = request.body if isinstance(request.body, dict) else {}
        body = {str(k): v for k, v in body.items()}
        try:
            for index, (name, error) in enumerate(self.faults):
                if name == operation:
                    del self.faults[index]
                    raise error
            handler = self._operations().get(operation)
            if handler is None:
                raise BrokerError("amqp:not-implemented", f"The operation {operation!r} is not supported.", 501)
            status, result = handler(body)
        except BrokerError as refused:
            return Message(
                correlation_id=request.id,
                properties={
                    "statusCode": refused.status,
                    "statusDescription": refused.description,
                    "errorCondition": symbol(refused.condition),
                },
                body={},
            )
        return Message(
            correlation_id=request.id,
            properties={"statusCode": status, "statusDescription": "OK" if status == OK else "No Content"},
            body=result,
        )

    def _operations(self) -> dict[str, Callable[[dict[str, Any]], tuple[int, Any]]]:
        return {
            "com.microsoft:renew-lock": self.renew_lock,
            "com.microsoft:renew-session-lock": self.renew_session_lock,
            "com.microsoft:peek-message": self.peek,
            "com.microsoft:schedule-message": self.schedule,
            "com.microsoft:cancel-scheduled-message": self.cancel,
            "com.microsoft:update-disposition": self.update_disposition,
            "com.microsoft:get-session-state": self.get_session_state,
            "com.microsoft:set-session-state": self.set_session_state,
            "com.microsoft:receive-by-sequence-number": self.receive_by_sequence_number,
        }

    # [rr] "Message renew lock": lock-tokens (uuid[]) -> expirations (timestamp[]).
    def renew_lock(self, body: dict[str, Any]) -> tuple[int, Any]:
        now = self.now()
        return OK, {"expirations": _timestamps([self.entity.renew(t, now) for t in _tokens(body.get("lock-tokens"))])}

    # [rr] "Renew session lock": session-id -> expiration (timestamp).
    def renew_session_lock(self, body: dict[str, Any]) -> tuple[int, Any]:
        session_id = str(body.get("session-id", ""))
        until = self.entity.renew_session_lock(session_id, None, self.now())
        return OK, {"expiration": wire.ms(until)}

    # [rr] "Peek message": from-sequence-number, message-count[, session-id] -> messages (list of maps with
    # "message": the encoded AMQP message); 204 when there is none.
    def peek(self, body: dict[str, Any]) -> tuple[int, Any]:
        start = int(body.get("from-sequence-number", 0))
        count = int(body.get("message-count", 1))
        session = body.get("session-id")
        found = self.entity.peek(start, count, None if session is None else str(session))
        if not found:
            return NO_CONTENT, {}
        return OK, {"messages": [{"message": self._encoded(s, peeked=True)} for s in found]}

    # [rr] "Schedule message": messages (list of maps: message-id, session-id, message) -> sequence-numbers.
    def schedule(self, body: dict[str, Any]) -> tuple[int, Any]:
        now = self.now()
        prepared = []
        for entry in body.get("messages") or []:
            item = {str(k): v for k, v in entry.items()}
            raw = bytes(item["message"])
            message = wire.decode(raw)
            annotations: dict[Any, Any] = dict(message.annotations or {})
            at = wire.seconds(annotations.get(wire.SCHEDULED_ENQUEUE_TIME))
            if at is None:
                raise BrokerError("com.microsoft:argument-error", "The message has no x-opt-scheduled-enqueue-time.")
            self.entity.check(message, len(raw))
            prepared.append((message, raw, at))
        numbers = [self.entity.enqueue(message, raw, now, at) for message, raw, at in prepared]
        return OK, {"sequence-numbers": _longs(numbers)}

    # [rr] "Cancel scheduled message": sequence-numbers (long[]).
    def cancel(self, body: dict[str, Any]) -> tuple[int, Any]:
        self.entity.cancel_scheduled([int(n) for n in list(body.get("sequence-numbers") or [])], self.now())
        return OK, {}

    # [rr] "Update disposition status": disposition-status (completed/abandoned/suspended/defered), lock-tokens,
    # deadletter-reason, deadletter-description. Settles locks taken on a receive link of this entity.
    def update_disposition(self, body: dict[str, Any]) -> tuple[int, Any]:
        now = self.now()
        status = str(body.get("disposition-status", ""))
        for token in _tokens(body.get("lock-tokens")):
            if status == "completed":
                self.entity.complete(token, None, now)
            elif status == "abandoned":
                self.entity.abandon(token, None, now)
            elif status == "defered":
                self.entity.defer(token, None, now)
            elif status == "suspended":
                self.entity.dead_letter_locked(
                    token,
                    None,
                    now,
                    str(body.get("deadletter-reason", "")),
                    str(body.get("deadletter-description", "")),
                )
            else:
                raise BrokerError("com.microsoft:argument-error", f"Unknown disposition status {status!r}.")
        return OK, {}

    # [rr] "Get session state" / "Set session state".
    def get_session_state(self, body: dict[str, Any]) -> tuple[int, Any]:
        session_id = str(body.get("session-id", ""))
        self._require_session_lock(session_id)
        state = self.entity.session_state.get(session_id)
        return OK, {"session-state": state}

    def set_session_state(self, body: dict[str, Any]) -> tuple[int, Any]:
        session_id = str(body.get("session-id", ""))
        self._require_session_lock(session_id)
        state = body.get("session-state")
        if state is None:
            self.entity.session_state.pop(session_id, None)
        else:
            self.entity.session_state[session_id] = bytes(state)
        return OK, {}

    # [rr] "Receive by sequence number" (deferred messages): locks them and answers with their lock tokens.
    def receive_by_sequence_number(self, body: dict[str, Any]) -> tuple[int, Any]:
        now = self.now()
        found = []
        for number in list(body.get("sequence-numbers") or []):
            stored = self.entity.messages.get(int(number))
            if stored is None or not stored.deferred:
                raise BrokerError("com.microsoft:message-not-found", f"The message {number} was not found.", 404)
            stored.lock_token = uuid.uuid4()
            stored.locked_until = now + self.entity.properties.lock_seconds
            found.append({"lock-token": stored.lock_token, "message": self._encoded(stored, peeked=False)})
        return OK, {"messages": found}

    def _require_session_lock(self, session_id: str) -> None:
        held = self.entity.session_locks.get(session_id)
        if held is None or held.until <= self.now():
            raise BrokerError(SESSION_LOCK_LOST, f"The session lock has expired on the session '{session_id}'.", 410)

    def _encoded(self, stored: Any, *, peeked: bool) -> bytes:
        message = wire.outgoing(
            stored, entity=self.entity.name, now=self.now(), locked=stored.lock_token is not None, peeked=peeked
        )
        return self.encode(message)


__all__ = ["DEAD_LETTER_DESCRIPTION", "DEAD_LETTER_REASON", "ManagementNode"]
