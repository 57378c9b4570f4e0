"""A Service Bus queue and its dead-letter sub-queue, as state: no AMQP here, only the queue's rules.

Every rule cites where Service Bus documents it. Sources (all under learn.microsoft.com/azure/service-bus-messaging/):
[locks] message-transfers-locks-settlement; [sessions] message-sessions; [dup] duplicate-detection;
[dlq] service-bus-dead-letter-queues; [sched] message-sequencing; [quotas] service-bus-quotas;
[rr] service-bus-amqp-request-response; [guide] service-bus-amqp-protocol-guide. [amqp] is the OASIS AMQP 1.0
core specification. Where the documents say nothing, the rule is the worst plausible behaviour and says so.

The clock is the caller's (``now`` arguments), so the process can shift its time for tests.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# Error conditions as Service Bus sends them ([guide] "Service Bus error conditions"; the SDK maps them).
LOCK_LOST = "com.microsoft:message-lock-lost"
SESSION_LOCK_LOST = "com.microsoft:session-lock-lost"
SESSION_CANNOT_BE_LOCKED = "com.microsoft:session-cannot-be-locked"
MESSAGE_NOT_FOUND = "com.microsoft:message-not-found"
ARGUMENT_ERROR = "com.microsoft:argument-error"
TIMEOUT = "com.microsoft:timeout"
SIZE_EXCEEDED = "amqp:link:message-size-exceeded"
NOT_FOUND = "amqp:not-found"

MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
DEAD_LETTER_REASON = "DeadLetterReason"
DEAD_LETTER_DESCRIPTION = "DeadLetterErrorDescription"
MAX_ID_LENGTH = 128  # [quotas]: MessageId and SessionId, at most 128 characters.


class BrokerError(Exception):
    """A refusal Service Bus would send: an AMQP error condition, a description and a request-response status."""

    def __init__(self, condition: str, description: str, status: int = 400) -> None:
        super().__init__(f"{condition}: {description}")
        self.condition = condition
        self.description = description
        self.status = status


@dataclass(frozen=True)
class QueueProperties:
    """The queue as infra/modules/servicebus.bicep declares it (requiresSession, duplicate detection, ...)."""

    requires_session: bool = True
    lock_seconds: float = 60.0
    max_delivery_count: int = 10
    duplicate_window_seconds: float = 600.0
    # [quotas]: 256 KB per message on Standard (the Bicep's default tier), header and body counted together.
    max_message_bytes: int = 256 * 1024


@dataclass
class Stored:
    """One message in an entity. ``raw`` is the AMQP message as the sender encoded it."""

    sequence_number: int
    raw: bytes
    size: int
    message_id: str | None
    session_id: str | None
    enqueued_at: float
    visible_at: float
    scheduled: bool = False
    deferred: bool = False
    # [amqp] 3.2.1 header delivery-count: "the number of unsuccessful previous attempts to deliver this message".
    delivery_count: int = 0
    lock_token: uuid.UUID | None = None
    locked_until: float = 0.0
    holder: object | None = None
    properties_added: dict[str, str] = field(default_factory=dict)


@dataclass
class SessionLock:
    holder: object
    until: float


class Entity:
    """A queue (``dead_letter`` is its sub-queue, itself an ``Entity`` without sessions)."""

    def __init__(self, name: str, properties: QueueProperties, *, sub_queue: bool = False) -> None:
        self.name = name
        self.properties = properties
        self.messages: dict[int, Stored] = {}
        self.seen: dict[str, float] = {}
        self.session_locks: dict[str, SessionLock] = {}
        self.session_state: dict[str, bytes] = {}
        # Worst plausible: the dead-letter sub-queue numbers its messages itself ([dlq] calls it a sub-queue of
        # its own; nothing says a dead letter keeps its number), so its numbers can collide with the queue's.
        self._sequence = itertools.count(1)
        self.requires_session = properties.requires_session and not sub_queue
        self.dead_letter: Entity | None = (
            None if sub_queue else Entity(f"{name}/$DeadLetterQueue", properties, sub_queue=True)
        )

    # ------------------------------------------------------------------------------------------ sending
    def check(self, message: Any, size: int) -> None:
        """Refuse what Service Bus refuses, before anything of a transfer is stored."""
        if size > self.properties.max_message_bytes:
            # [quotas] "Message size for a queue": larger messages are refused (QuotaExceeded /
            # MessageSizeExceeded); over AMQP the link error amqp:link:message-size-exceeded.
            raise BrokerError(
                SIZE_EXCEEDED,
                f"The received message (size {size} bytes) exceeds the limit ({self.properties.max_message_bytes} "
                "bytes) currently allowed on the link.",
                413,
            )
        message_id = _text(message.id)
        session_id = _text(message.group_id)
        for label, value in (("MessageId", message_id), ("SessionId", session_id)):
            if value is not None and len(value) > MAX_ID_LENGTH:
                raise BrokerError(ARGUMENT_ERROR, f"The {label} exceeds the maximum length of {MAX_ID_LENGTH}.")
        if self.requires_session and not session_id:
            # [sessions]: a session-aware entity takes only messages with a SessionId.
            raise BrokerError(
                ARGUMENT_ERROR,
                "The SessionId was not set on a message, and it cannot be sent to the entity. Entities that have "
                "session support enabled can only receive messages that have the SessionId set to a valid value.",
            )
        for key, value in (message.properties or {}).items():
            # [amqp] 3.2.5: application-properties values are simple types only (no map, list or array), and
            # [guide] "Message mapping": Service Bus takes the simple types its .NET property bag takes.
            if not isinstance(key, str) or isinstance(value, (dict, list, tuple)) or type(value).__name__ == "Array":
                raise BrokerError(
                    ARGUMENT_ERROR, f"The application property {key!r} is of a type Service Bus does not support."
                )

    def enqueue(self, message: Any, raw: bytes, now: float, scheduled_at: float | None = None) -> int:
        """Store a message; a duplicate MessageId within the window is accepted and dropped ([dup]).

        Returns the sequence number (a dropped duplicate still gets one, as the send cannot tell).
        """
        size = len(raw)
        self.check(message, size)
        number = next(self._sequence)
        message_id = _text(message.id)
        window = self.properties.duplicate_window_seconds
        for key in [k for k, at in self.seen.items() if now - at >= window]:
            del self.seen[key]
        if message_id is not None and message_id in self.seen and not self.name.endswith("$DeadLetterQueue"):
            # [dup]: "the duplicate message is accepted (the send operation succeeds) but ... dropped".
            return number
        if message_id is not None:
            self.seen[message_id] = now
        visible = scheduled_at if scheduled_at is not None and scheduled_at > now else now
        self.messages[number] = Stored(
            number,
            raw,
            size,
            message_id,
            _text(message.group_id),
            enqueued_at=now,
            visible_at=visible,
            scheduled=scheduled_at is not None,
        )
        return number

    def cancel_scheduled(self, numbers: list[int], now: float) -> None:
        """[rr] cancel-scheduled-message: removes scheduled messages that have not been enqueued yet."""
        for number in numbers:
            stored = self.messages.get(number)
            if stored is None or not stored.scheduled or stored.visible_at <= now:
                # Worst plausible: cancelling a message that is already active (or gone) is an error.
                raise BrokerError(MESSAGE_NOT_FOUND, f"The scheduled message {number} was not found.", 404)
        for number in numbers:
            del self.messages[number]

    # ---------------------------------------------------------------------------------------- sessions
    def available_session(self, now: float) -> str | None:
        """[sessions] "accept next available session": the session of the oldest deliverable message whose
        session is not locked."""
        for stored in self._in_order():
            if stored.session_id and stored.session_id not in self.session_locks and self._deliverable(stored, now):
                return stored.session_id
        return None

    def lock_session(self, session_id: str, holder: object, now: float) -> float:
        """[sessions]: a session is locked by one receiver at a time; the lock lasts the queue's lock duration."""
        held = self.session_locks.get(session_id)
        if held is not None and held.holder is not holder:
            raise BrokerError(
                SESSION_CANNOT_BE_LOCKED,
                f"The requested session '{session_id}' cannot be accepted. It may be locked by another receiver.",
                410,
            )
        until = now + self.properties.lock_seconds
        self.session_locks[session_id] = SessionLock(holder, until)
        return until

    def renew_session_lock(self, session_id: str, holder: object | None, now: float) -> float:
        """[rr] renew-session-lock: only the holder of a live session lock renews it."""
        held = self.session_locks.get(session_id)
        if held is None or (holder is not None and held.holder is not holder):
            raise BrokerError(SESSION_LOCK_LOST, f"The session lock has expired on the session '{session_id}'.", 410)
        held.until = now + self.properties.lock_seconds
        return held.until

    def release_session(self, session_id: str, holder: object, now: float) -> None:
        """The receiver closed: the session is free, and what it still held is abandoned.

        Worst plausible ([locks] says a lock lost to a closed link is like an expired one): each such message
        counts a delivery and may be dead-lettered for it.
        """
        held = self.session_locks.get(session_id)
        if held is not None and held.holder is holder:
            del self.session_locks[session_id]
        for stored in list(self.messages.values()):
            if stored.holder is holder:
                self._unlock(stored, now)

    # ---------------------------------------------------------------------------------------- delivery
    def next_message(self, holder: object, session_id: str | None, now: float) -> Stored | None:
        """Lock the next deliverable message for ``holder`` (of ``session_id``, in order, on session queues)."""
        if session_id is not None:
            lock = self.session_locks.get(session_id)
            if lock is None or lock.holder is not holder or lock.until <= now:
                return None
        for stored in self._in_order():
            if session_id is not None and stored.session_id != session_id:
                continue
            if not self._deliverable(stored, now):
                continue
            stored.lock_token = uuid.uuid4()
            stored.holder = holder
            # [locks] peek-lock: the lock lasts the queue's LockDuration; in a session, the session lock rules.
            stored.locked_until = now + self.properties.lock_seconds
            return stored
        return None

    def locked(self, token: uuid.UUID, holder: object | None, now: float) -> Stored:
        """The message a lock token names, if the lock is still held (else lock lost, as [locks] says)."""
        for stored in self.messages.values():
            if stored.lock_token == token:
                if stored.session_id is not None and self.requires_session:
                    held = self.session_locks.get(stored.session_id)
                    if held is None or held.until <= now or (holder is not None and held.holder is not stored.holder):
                        raise BrokerError(
                            SESSION_LOCK_LOST,
                            f"The session lock has expired on the session '{stored.session_id}'.",
                            410,
                        )
                elif stored.locked_until <= now:
                    break
                return stored
        if self.requires_session:
            raise BrokerError(SESSION_LOCK_LOST, "The session lock was lost; the message cannot be settled.", 410)
        raise BrokerError(
            LOCK_LOST,
            "The lock supplied is invalid. Either the lock expired, or the message has already been removed "
            "from the queue.",
            410,
        )

    def complete(self, token: uuid.UUID, holder: object | None, now: float) -> None:
        stored = self.locked(token, holder, now)
        del self.messages[stored.sequence_number]

    def abandon(self, token: uuid.UUID, holder: object | None, now: float) -> None:
        """[locks] abandon: the message is available again at once, its delivery count up by one."""
        self._unlock(self.locked(token, holder, now), now)

    def defer(self, token: uuid.UUID, holder: object | None, now: float) -> None:
        """[locks] defer: kept aside, reachable only by sequence number."""
        stored = self.locked(token, holder, now)
        stored.lock_token, stored.holder, stored.deferred = None, None, True

    def dead_letter_locked(self, token: uuid.UUID, holder: object | None, now: float, reason: str, text: str) -> None:
        """[dlq] "Application-level dead-lettering": moved with DeadLetterReason and DeadLetterErrorDescription."""
        stored = self.locked(token, holder, now)
        stored.delivery_count += 1  # this delivery counts: it was attempted (and ended here)
        self.move_to_dead_letter(stored, now, reason, text)

    def renew(self, token: uuid.UUID, now: float) -> float:
        """[rr] renew-lock (message locks of non-session entities)."""
        stored = self.locked(token, None, now)
        stored.locked_until = now + self.properties.lock_seconds
        return stored.locked_until

    def move_to_dead_letter(self, stored: Stored, now: float, reason: str, description: str) -> None:
        assert self.dead_letter is not None, "a dead-letter sub-queue has no dead-letter queue"
        del self.messages[stored.sequence_number]
        number = next(self.dead_letter._sequence)
        self.dead_letter.messages[number] = Stored(
            number,
            stored.raw,
            stored.size,
            stored.message_id,
            stored.session_id,
            enqueued_at=now,
            visible_at=now,
            delivery_count=stored.delivery_count,
            properties_added={DEAD_LETTER_REASON: reason, DEAD_LETTER_DESCRIPTION: description},
        )

    def expire(self, now: float) -> None:
        """Locks that ran out: the message is available again with one more delivery counted ([locks])."""
        for session_id, held in list(self.session_locks.items()):
            if held.until <= now:
                del self.session_locks[session_id]
        for stored in list(self.messages.values()):
            if stored.lock_token is None:
                continue
            if stored.session_id is not None and self.requires_session:
                if stored.session_id not in self.session_locks:
                    self._unlock(stored, now)
            elif stored.locked_until <= now:
                self._unlock(stored, now)

    def _unlock(self, stored: Stored, now: float) -> None:
        stored.lock_token, stored.holder, stored.locked_until = None, None, 0.0
        stored.delivery_count += 1
        if self.dead_letter is not None and stored.delivery_count >= self.properties.max_delivery_count:
            # [dlq] "Maximum delivery count": past MaxDeliveryCount the message is dead-lettered.
            self.move_to_dead_letter(
                stored,
                now,
                MAX_DELIVERY_COUNT_EXCEEDED,
                f"Message could not be consumed after {self.properties.max_delivery_count} delivery attempts.",
            )

    # ---------------------------------------------------------------------------------------- browsing
    def peek(self, start: int, count: int, session_id: str | None) -> list[Stored]:
        """[rr] peek-message: from a sequence number on, without locking (active, scheduled and deferred)."""
        found = []
        for stored in self._in_order():
            if stored.sequence_number < start or (session_id is not None and stored.session_id != session_id):
                continue
            found.append(stored)
            if len(found) >= count:
                break
        return found

    def has_session_messages(self, session_id: str) -> bool:
        return any(s.session_id == session_id for s in self.messages.values())

    def _in_order(self) -> Iterator[Stored]:
        return iter(sorted(self.messages.values(), key=lambda s: s.sequence_number))

    @staticmethod
    def _deliverable(stored: Stored, now: float) -> bool:
        return stored.lock_token is None and not stored.deferred and stored.visible_at <= now


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
