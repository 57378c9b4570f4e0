"""A Service Bus namespace in memory, at the azure-servicebus SDK boundary.

No Service Bus emulator runs on this machine, so tests hand the adapter a client factory that returns
``StandInClient`` instead of ``azure.servicebus.ServiceBusClient``. It implements exactly the methods the
adapter and the Functions host simulator call, with the documented semantics and errors:

- **Sessions**: a session-enabled queue rejects a message without SessionId; a receiver on it must name a
  session or ask for the next available one (``OperationTimeoutError`` when none comes within
  ``max_wait_time``); a session is locked to one receiver (``SessionCannotBeLockedError``), its messages are
  delivered in order, and settling after the session lock expired raises ``SessionLockLostError``.
- **Peek-lock**: a received message is locked; completing removes it, abandoning gives it back at once with
  its delivery count kept; past ``max_delivery_count`` deliveries it is dead-lettered with reason
  ``MaxDeliveryCountExceeded``. Settling twice raises ``MessageAlreadySettled``.
- **Duplicate detection**: a MessageId sent within the window is accepted and silently dropped.
- **Scheduled messages**: invisible until their time; ``schedule_messages`` returns sequence numbers.
- **Dead-letter sub-queue**: read without a session; received application property keys and string values
  come back as bytes, including ``DeadLetterReason`` and ``DeadLetterErrorDescription``; its messages keep
  their sequence numbers and never expire.
- **Limits**: 256 KiB per message (``MessageSizeExceededError``); ``max_wait_time`` must be positive.

Outgoing messages are the SDK's own ``ServiceBusMessage`` objects, so what the adapter asks the SDK to send is
recorded exactly (``StandInNamespace.sent``). Faults are injected per operation with ``fail_next``.
Visibility and locks follow the injectable ``clock``; waiting for messages uses real time, bounded by the
caller's ``max_wait_time``.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

MAX_MESSAGE_BYTES = 256 * 1024
DEAD_LETTER_REASON = "DeadLetterReason"
DEAD_LETTER_DESCRIPTION = "DeadLetterErrorDescription"
MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"


@dataclass
class SentMessage:
    """One message the SDK was asked to send or schedule, and whether the entity kept it."""

    queue: str
    message_id: str | None
    session_id: str | None
    body: bytes
    application_properties: dict[str, Any]
    content_type: str | None
    scheduled_at: datetime | None
    accepted: bool


@dataclass
class _Stored:
    sequence_number: int
    message_id: str | None
    session_id: str | None
    body: bytes
    properties: dict[str, Any]
    content_type: str | None
    enqueued_at: float
    visible_at: float
    delivery_count: int = 0
    lock_token: str | None = None
    locked_until: float = 0.0
    holder: StandInReceiver | None = None
    scheduled: bool = False


@dataclass
class _Queue:
    name: str
    requires_session: bool
    duplicate_window: float
    messages: dict[int, _Stored] = field(default_factory=dict)
    dead_letters: dict[int, _Stored] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    # session id -> (receiver holding it, lock expiry)
    session_locks: dict[str, tuple[StandInReceiver, float]] = field(default_factory=dict)


def _body_bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return b"".join(bytes(part) for part in body)


def _str_keys(properties: dict[Any, Any] | None) -> dict[str, Any]:
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in (properties or {}).items()}


def _size(body: bytes, properties: dict[Any, Any]) -> int:
    # Body plus a rough measure of the headers: what the broker counts against the 256 KiB limit.
    return len(body) + sum(len(str(k)) + len(str(v)) for k, v in properties.items()) + 64


class StandInNamespace:
    """One namespace: queues, their dead-letter sub-queues, and a log of what was sent.

    Args:
        clock: Current time in UTC epoch seconds (visibility of scheduled messages, locks, duplicate window).
        lock_seconds: Peek-lock (and session lock) duration.
        max_delivery_count: Deliveries before a message is dead-lettered (``MaxDeliveryCountExceeded``).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        lock_seconds: float = 60.0,
        max_delivery_count: int = 10,
    ) -> None:
        self.clock = clock
        self.lock_seconds = lock_seconds
        self.max_delivery_count = max_delivery_count
        self.sent: list[SentMessage] = []
        self.clients_created = 0
        self._queues: dict[str, _Queue] = {}
        self._condition = threading.Condition()
        self._sequence = itertools.count(1)
        self._faults: dict[str, list[BaseException]] = {}

    # ----------------------------------------------------------------------------------------- set-up
    def create_queue(
        self, name: str, *, requires_session: bool = True, duplicate_window_seconds: float = 86400.0
    ) -> None:
        with self._condition:
            self._queues[name] = _Queue(name, requires_session, duplicate_window_seconds)

    def client(self, **_: Any) -> StandInClient:
        """The ``ServiceBusClient`` replacement handed to the adapter as its client factory."""
        with self._condition:
            self.clients_created += 1
        return StandInClient(self)

    def fail_next(self, operation: str, error: BaseException) -> None:
        """Make the next call of ``operation`` raise ``error``.

        Operations: send, schedule, accept_session, receive, peek, complete, abandon, dead_letter.
        """
        with self._condition:
            self._faults.setdefault(operation, []).append(error)

    # ------------------------------------------------------------------------------------ inspection
    def active(self, queue: str) -> list[_Stored]:
        """Messages visible now or locked (not scheduled for later), in sequence order."""
        with self._condition:
            now = self.clock()
            return [m for m in sorted(self._q(queue).messages.values(), key=_seq) if m.visible_at <= now]

    def scheduled(self, queue: str) -> list[_Stored]:
        with self._condition:
            now = self.clock()
            return [m for m in sorted(self._q(queue).messages.values(), key=_seq) if m.visible_at > now]

    def dead_lettered(self, queue: str) -> list[_Stored]:
        with self._condition:
            return sorted(self._q(queue).dead_letters.values(), key=_seq)

    # ------------------------------------------------------------------------------------- internals
    def _q(self, name: str) -> _Queue:
        try:
            return self._queues[name]
        except KeyError:
            raise MessagingEntityNotFoundError(message=f"The messaging entity '{name}' could not be found.") from None

    def _fault(self, operation: str) -> None:
        pending = self._faults.get(operation)
        if pending:
            raise pending.pop(0)

    def _accept(self, queue: _Queue, messages: list[tuple[ServiceBusMessage, datetime | None]]) -> list[int]:
        """Store sent messages atomically (all checked first); duplicates are accepted and dropped."""
        now = self.clock()
        prepared = []
        total = 0
        for message, scheduled_at in messages:
            body = _body_bytes(message.body)
            properties = _str_keys(message.application_properties)
            if queue.requires_session and not message.session_id:
                raise ServiceBusError(
                    "The SessionId was not set on a message, and it cannot be sent to the entity. Entities that "
                    "have session support enabled can only receive messages that have the SessionId set to a "
                    "valid value."
                )
            size = _size(body, properties)
            total += size
            if size > MAX_MESSAGE_BYTES or total > MAX_MESSAGE_BYTES:
                raise MessageSizeExceededError(
                    message=f"The message ({total} bytes) is larger than the maximum of {MAX_MESSAGE_BYTES} bytes."
                )
            when = scheduled_at or message.scheduled_enqueue_time_utc
            if when is not None and when.tzinfo is None:
                raise ValueError("schedule time must be timezone-aware")
            prepared.append((message, body, properties, when))
        for key in [k for k, at in queue.seen.items() if now - at >= queue.duplicate_window]:
            del queue.seen[key]
        numbers = []
        for message, body, properties, when in prepared:
            message_id = message.message_id
            duplicate = message_id is not None and message_id in queue.seen
            self.sent.append(
                SentMessage(
                    queue.name,
                    message_id,
                    message.session_id,
                    body,
                    properties,
                    message.content_type,
                    when,
                    accepted=not duplicate,
                )
            )
            number = next(self._sequence)
            numbers.append(number)
            if duplicate:
                continue
            if message_id is not None:
                queue.seen[message_id] = now
            visible = when.timestamp() if when is not None else now
            queue.messages[number] = _Stored(
                number,
                message_id,
                message.session_id,
                body,
                properties,
                message.content_type,
                enqueued_at=max(now, visible),
                visible_at=visible,
                scheduled=when is not None,
            )
        self._condition.notify_all()
        return numbers

    def _dead_letter(self, queue: _Queue, stored: _Stored, reason: str, description: str) -> None:
        del queue.messages[stored.sequence_number]
        stored.lock_token, stored.holder, stored.locked_until = None, None, 0.0
        stored.properties = {**stored.properties, DEAD_LETTER_REASON: reason, DEAD_LETTER_DESCRIPTION: description}
        queue.dead_letters[stored.sequence_number] = stored

    def _expire_locks(self, queue: _Queue) -> None:
        now = self.clock()
        for session_id, (_, until) in list(queue.session_locks.items()):
            if until <= now:
                del queue.session_locks[session_id]
        for store in (queue.messages, queue.dead_letters):
            for stored in store.values():
                if stored.lock_token is not None and stored.locked_until <= now:
                    stored.lock_token, stored.holder = None, None

    def _deliverable(self, queue: _Queue, stored: _Stored, now: float) -> bool:
        return stored.visible_at <= now and stored.lock_token is None


def _seq(stored: _Stored) -> int:
    return stored.sequence_number


class StandInReceivedMessage:
    """What ``ServiceBusReceivedMessage`` offers the code under test, as the SDK presents it."""

    def __init__(self, stored: _Stored, *, lock_token: str | None, locked_until: float | None) -> None:
        self._stored = stored
        self._body = stored.body
        self.message_id = stored.message_id
        self.session_id = stored.session_id
        self.content_type = stored.content_type
        self.delivery_count = stored.delivery_count
        self.sequence_number = stored.sequence_number
        self.enqueued_time_utc = datetime.fromtimestamp(stored.enqueued_at, UTC)
        self.scheduled_enqueue_time_utc = datetime.fromtimestamp(stored.visible_at, UTC) if stored.scheduled else None
        self.lock_token = lock_token
        self.locked_until_utc = datetime.fromtimestamp(locked_until, UTC) if locked_until else None
        # As the SDK decodes AMQP application properties: keys and string values are bytes.
        self.application_properties: dict[bytes, Any] = {
            str(k).encode(): (v.encode() if isinstance(v, str) else v) for k, v in stored.properties.items()
        }
        reason = stored.properties.get(DEAD_LETTER_REASON)
        description = stored.properties.get(DEAD_LETTER_DESCRIPTION)
        self.dead_letter_reason: str | None = reason
        self.dead_letter_error_description: str | None = description
        self._settled = False

    @property
    def body(self) -> Iterator[bytes]:
        # The SDK returns the data sections as a generator, not bytes.
        return (part for part in [self._body])

    def __str__(self) -> str:
        return self._body.decode("utf-8")


class StandInReceiver:
    """A queue or dead-letter receiver in peek-lock mode (a session receiver on a session-enabled queue)."""

    def __init__(
        self,
        namespace: StandInNamespace,
        queue_name: str,
        *,
        session_id: Any = None,
        sub_queue: Any = None,
        receive_mode: Any = ServiceBusReceiveMode.PEEK_LOCK,
        max_wait_time: float | None = None,
    ) -> None:
        self._ns = namespace
        self._queue_name = queue_name
        self._requested_session = session_id
        self._dead_letter = sub_queue in (ServiceBusSubQueue.DEAD_LETTER, "deadletter")
        if receive_mode not in (ServiceBusReceiveMode.PEEK_LOCK, "peeklock"):
            raise ValueError("the stand-in supports peek-lock receivers only")
        if max_wait_time is not None and max_wait_time <= 0:
            raise ValueError("The max_wait_time must be greater than 0.")
        self._max_wait = max_wait_time
        self._session: str | None = None
        self._opened = False
        self._closed = False

    # ---------------------------------------------------------------------------------- open, close
    def __enter__(self) -> Self:
        self._open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def session(self) -> Any:
        self._open()
        return _Session(self._session or "")

    def _open(self) -> None:
        if self._closed:
            raise ValueError(
                "The handler has already been shutdown. Please use ServiceBusClient to create a new instance."
            )
        if self._opened:
            return
        ns = self._ns
        with ns._condition:
            queue = ns._q(self._queue_name)
            if self._dead_letter or not queue.requires_session:
                if self._requested_session is not None and not queue.requires_session:
                    raise ServiceBusError(
                        "It is not possible for an entity that does not require sessions to accept a session."
                    )
                self._opened = True
                return
            if self._requested_session is None:
                raise ServiceBusError(
                    "It is not possible for an entity that requires sessions to create a non-sessionful message "
                    "receiver."
                )
            ns._fault("accept_session")
            deadline = time.monotonic() + (self._max_wait if self._max_wait is not None else 60.0)
            while True:
                ns._expire_locks(queue)
                session = self._find_session(queue)
                if session is not None:
                    queue.session_locks[session] = (self, ns.clock() + ns.lock_seconds)
                    self._session = session
                    self._opened = True
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if self._requested_session is NEXT_AVAILABLE_SESSION:
                        raise OperationTimeoutError(message="No session available within the wait time.")
                    raise SessionCannotBeLockedError(
                        message=f"The requested session '{self._requested_session}' cannot be accepted. "
                        "It may be locked by another receiver."
                    )
                ns._condition.wait(min(remaining, 0.05))

    def _find_session(self, queue: _Queue) -> str | None:
        now = self._ns.clock()
        if self._requested_session is not NEXT_AVAILABLE_SESSION:
            wanted = str(self._requested_session)
            return None if wanted in queue.session_locks else wanted
        candidates = [
            m
            for m in sorted(queue.messages.values(), key=_seq)
            if m.session_id not in queue.session_locks and m.visible_at <= now and m.lock_token is None
        ]
        return candidates[0].session_id if candidates else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ns = self._ns
        with ns._condition:
            queue = ns._queues.get(self._queue_name)
            if queue is None:
                return
            # Closing a session receiver releases the session; its unsettled messages become available again.
            if self._session is not None and queue.session_locks.get(self._session, (None, 0))[0] is self:
                del queue.session_locks[self._session]
            for store in (queue.messages, queue.dead_letters):
                for stored in store.values():
                    if stored.holder is self and self._session is not None:
                        stored.lock_token, stored.holder = None, None
            ns._condition.notify_all()

    # ----------------------------------------------------------------------------------- receiving
    def receive_messages(
        self, max_message_count: int | None = 1, max_wait_time: float | None = None
    ) -> list[StandInReceivedMessage]:
        if max_wait_time is not None and max_wait_time <= 0:
            raise ValueError("The max_wait_time must be greater than 0.")
        if max_message_count is not None and max_message_count <= 0:
            raise ValueError("The max_message_count must be greater than 0")
        if max_message_count is None:
            return []
        self._open()
        ns = self._ns
        wait = max_wait_time if max_wait_time is not None else (self._max_wait or 60.0)
        deadline = time.monotonic() + wait
        with ns._condition:
            ns._fault("receive")
            queue = ns._q(self._queue_name)
            while True:
                ns._expire_locks(queue)
                self._check_session(queue)
                got = self._take(queue, max_message_count)
                if got:
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                ns._condition.wait(min(remaining, 0.05))

    def _take(self, queue: _Queue, count: int) -> list[StandInReceivedMessage]:
        ns = self._ns
        now = ns.clock()
        store = queue.dead_letters if self._dead_letter else queue.messages
        taken: list[StandInReceivedMessage] = []
        for stored in sorted(store.values(), key=_seq):
            if len(taken) >= count:
                break
            if self._session is not None and stored.session_id != self._session:
                continue
            if not ns._deliverable(queue, stored, now):
                if self._session is not None and stored.visible_at <= now:
                    break  # in-order delivery within a session: a locked head holds the rest back
                continue
            if not self._dead_letter and stored.delivery_count >= ns.max_delivery_count:
                ns._dead_letter(
                    queue,
                    stored,
                    MAX_DELIVERY_COUNT_EXCEEDED,
                    f"Message could not be consumed after {stored.delivery_count} delivery attempts.",
                )
                continue
            stored.delivery_count += 1
            stored.lock_token = str(uuid.uuid4())
            stored.holder = self
            if self._session is not None:
                stored.locked_until = queue.session_locks[self._session][1]
            else:
                stored.locked_until = now + ns.lock_seconds
            taken.append(StandInReceivedMessage(stored, lock_token=stored.lock_token, locked_until=stored.locked_until))
        return taken

    def peek_messages(
        self, max_message_count: int = 1, *, sequence_number: int = 0, timeout: float | None = None
    ) -> list[StandInReceivedMessage]:
        self._open()
        ns = self._ns
        with ns._condition:
            ns._fault("peek")
            queue = ns._q(self._queue_name)
            store = queue.dead_letters if self._dead_letter else queue.messages
            found = [
                StandInReceivedMessage(s, lock_token=None, locked_until=None)
                for s in sorted(store.values(), key=_seq)
                if s.sequence_number >= sequence_number and (self._session is None or s.session_id == self._session)
            ]
        return found[:max_message_count]

    # ------------------------------------------------------------------------------------ settling
    def _check_session(self, queue: _Queue) -> None:
        if self._session is None:
            return
        holder = queue.session_locks.get(self._session)
        if holder is None or holder[0] is not self:
            raise SessionLockLostError(message=f"The session lock has expired on the session '{self._session}'.")

    def _settle(self, message: StandInReceivedMessage, operation: str) -> tuple[_Queue, _Stored]:
        if message._settled:
            raise MessageAlreadySettled(action=operation)
        ns = self._ns
        ns._fault(operation)
        queue = ns._q(self._queue_name)
        ns._expire_locks(queue)
        self._check_session(queue)
        store = queue.dead_letters if self._dead_letter else queue.messages
        stored = store.get(message.sequence_number)
        if stored is None or stored.lock_token != message.lock_token or stored.holder is not self:
            raise MessageLockLostError(
                message="The lock supplied is invalid. Either the lock expired, or the message has already been "
                "removed from the queue."
            )
        message._settled = True
        return queue, stored

    def complete_message(self, message: StandInReceivedMessage) -> None:
        with self._ns._condition:
            queue, stored = self._settle(message, "complete")
            store = queue.dead_letters if self._dead_letter else queue.messages
            del store[stored.sequence_number]
            self._ns._condition.notify_all()

    def abandon_message(self, message: StandInReceivedMessage) -> None:
        ns = self._ns
        with ns._condition:
            queue, stored = self._settle(message, "abandon")
            stored.lock_token, stored.holder = None, None
            if not self._dead_letter and stored.delivery_count >= ns.max_delivery_count:
                ns._dead_letter(
                    queue,
                    stored,
                    MAX_DELIVERY_COUNT_EXCEEDED,
                    f"Message could not be consumed after {stored.delivery_count} delivery attempts.",
                )
            ns._condition.notify_all()

    def dead_letter_message(
        self, message: StandInReceivedMessage, reason: str | None = None, error_description: str | None = None
    ) -> None:
        ns = self._ns
        with ns._condition:
            if self._dead_letter:
                raise ServiceBusError("A message in the dead-letter sub-queue cannot be dead-lettered again.")
            queue, stored = self._settle(message, "dead_letter")
            ns._dead_letter(queue, stored, reason or "", error_description or "")
            ns._condition.notify_all()


@dataclass(frozen=True)
class _Session:
    session_id: str


class StandInBatch:
    """``ServiceBusMessageBatch``: add messages until the size limit refuses one."""

    def __init__(self, max_size_in_bytes: int | None) -> None:
        self.max_size_in_bytes = max_size_in_bytes or MAX_MESSAGE_BYTES
        self.size_in_bytes = 0
        self.messages: list[ServiceBusMessage] = []

    def add_message(self, message: ServiceBusMessage) -> None:
        body = _body_bytes(message.body)
        size = _size(body, dict(message.application_properties or {}))
        if self.size_in_bytes + size > self.max_size_in_bytes:
            raise MessageSizeExceededError(
                message=f"ServiceBusMessageBatch has reached its size limit: {self.max_size_in_bytes}"
            )
        self.messages.append(message)
        self.size_in_bytes += size

    def __len__(self) -> int:
        return len(self.messages)


class StandInSender:
    def __init__(self, namespace: StandInNamespace, queue_name: str) -> None:
        self._ns = namespace
        self._queue_name = queue_name
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check(self) -> None:
        if self._closed:
            raise ValueError(
                "The handler has already been shutdown. Please use ServiceBusClient to create a new instance."
            )

    def send_messages(self, message: Any, *, timeout: float | None = None) -> None:
        self._check()
        items: Iterable[ServiceBusMessage]
        if isinstance(message, StandInBatch):
            items = message.messages
        elif isinstance(message, ServiceBusMessage):
            items = [message]
        else:
            items = list(message)
        for item in items:
            if not isinstance(item, ServiceBusMessage):
                raise TypeError(f"Only ServiceBusMessage can be sent, got {type(item).__name__}")
        with self._ns._condition:
            self._ns._fault("send")
            self._ns._accept(self._ns._q(self._queue_name), [(m, None) for m in items])

    def schedule_messages(
        self, messages: Any, schedule_time_utc: datetime, *, timeout: float | None = None
    ) -> list[int]:
        self._check()
        items = [messages] if isinstance(messages, ServiceBusMessage) else list(messages)
        with self._ns._condition:
            self._ns._fault("schedule")
            return self._ns._accept(self._ns._q(self._queue_name), [(m, schedule_time_utc) for m in items])

    def cancel_scheduled_messages(self, sequence_numbers: int | list[int], *, timeout: float | None = None) -> None:
        numbers = [sequence_numbers] if isinstance(sequence_numbers, int) else sequence_numbers
        with self._ns._condition:
            queue = self._ns._q(self._queue_name)
            for number in numbers:
                queue.messages.pop(number, None)

    def create_message_batch(self, max_size_in_bytes: int | None = None) -> StandInBatch:
        self._check()
        with self._ns._condition:
            self._ns._q(self._queue_name)  # opening the link fails for an unknown entity
        return StandInBatch(max_size_in_bytes)

    def close(self) -> None:
        self._closed = True


class StandInClient:
    """``azure.servicebus.ServiceBusClient``: hands out senders and receivers of one namespace."""

    def __init__(self, namespace: StandInNamespace) -> None:
        self._ns = namespace
        self.closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def get_queue_sender(self, queue_name: str, **_: Any) -> StandInSender:
        return StandInSender(self._ns, queue_name)

    def get_queue_receiver(
        self,
        queue_name: str,
        *,
        session_id: Any = None,
        sub_queue: Any = None,
        receive_mode: Any = ServiceBusReceiveMode.PEEK_LOCK,
        max_wait_time: float | None = None,
        prefetch_count: int = 0,
        **_: Any,
    ) -> StandInReceiver:
        return StandInReceiver(
            self._ns,
            queue_name,
            session_id=session_id,
            sub_queue=sub_queue,
            receive_mode=receive_mode,
            max_wait_time=max_wait_time,
        )

    def close(self) -> None:
        self.closed = True
