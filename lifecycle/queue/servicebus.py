"""The Service Bus adapter of the queue port: a session-enabled queue with duplicate detection.

Sending: MessageId = the work id, SessionId = the Halo user id, application properties carry the event kind,
lifecycle and schema version. Service Bus drops a MessageId it saw within the duplicate window silently and
says nothing to the sender, so ``send`` reports every message as new; the effect is still deduplicated.

Two ways a message reaches the worker, settled differently:

- **From the Functions trigger** (``from_host``): the host settles the message itself, completing it when the
  function returns and abandoning it when it raises. The port's settle operations are therefore *decisions*
  that ``azure_host`` reads back with ``host_settlement`` after the worker returned:

  - ``complete``: nothing to do, the host completes on return.
  - ``abandon``: the function must raise, so the host abandons (redelivered at once, delivery count + 1, and
    dead-lettered by Service Bus as ``MaxDeliveryCountExceeded`` past the queue's ``maxDeliveryCount``).
  - ``retry_later``: back-off without using up a delivery: a copy is *scheduled* with the SDK under a new
    MessageId ``<work id>:b<n>`` (a copy under the same id would be dropped by duplicate detection), carrying
    ``retry_attempt``, ``last_retry_reason`` and ``first_enqueued_at``; then the host completes the original.
    A crash between the two redelivers the original; its retry sends the same ``:b<n>`` id again, which
    duplicate detection drops, so back-off chains never fork.
  - ``dead_letter``: the trigger cannot dead-letter with a reason (that needs the SDK-type binding, see the
    README's trade-off), so the message is *parked*: written with its reason to the ``deadletters`` table,
    then completed by the host. ``dead_letters`` and ``replay`` read the parked entries and the real
    dead-letter sub-queue (crash loops, expired messages) as one list.

- **From ``receive``** (the SDK, e.g. ``lifecycle serve`` against Service Bus): settled explicitly with the
  SDK; ``dead_letter`` then uses the real dead-letter sub-queue with reason and description.

The SDK (``azure.servicebus``, ``azure.identity``) is imported on first use only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from lifecycle.errors import ConfigurationError, InvalidEvent, LifecycleError, Retryable
from lifecycle.observability import log
from lifecycle.queue import (
    DeadLetteredMessage,
    DeadLetterNotFoundError,
    LockLostError,
    OutgoingMessage,
    ReceivedMessage,
)
from lifecycle.queue.servicebus_client import client_factory
from lifecycle.queue.servicebus_messages import (
    MAX_DESCRIPTION,
    MAX_REASON,
    backoff_copy,
    body_of,
    decode_properties,
    from_dead_letter,
    replay_copy,
    to_sdk,
    utc,
)

if TYPE_CHECKING:
    from lifecycle.settings import Settings

__all__ = [
    "HOST_LOCK_PREFIX",
    "DeadLetterParking",
    "HostSettlement",
    "ServiceBusQueue",
]

HOST_LOCK_PREFIX = "host:"
"""Lock tokens of messages the Functions host received (and settles) start with this."""


_PEEK_PAGE = 250
_RECEIVE_PAGE = 100

HostSettlement = Literal["complete", "abandon"]


class DeadLetterParking(Protocol):
    """Where permanent failures of trigger-delivered messages wait, with their reason, for a replay."""

    def park(self, entry: DeadLetteredMessage) -> None:
        """Record an entry (replacing one with the same sequence number: a redelivery parked it twice)."""
        ...

    def parked(self, limit: int = 100) -> list[DeadLetteredMessage]:
        """Parked entries, oldest first."""
        ...

    def get(self, sequence_number: int) -> DeadLetteredMessage | None: ...

    def remove(self, sequence_number: int) -> bool:
        """Delete an entry; True if it existed."""
        ...

    def close(self) -> None: ...


@dataclass
class _HostDelivery:
    sequence_number: int
    outcome: HostSettlement | None = None


class ServiceBusQueue:
    """A ``WorkQueue`` on an Azure Service Bus session queue.

    Args:
        queue_name: The queue (``LIFECYCLE_SERVICEBUS_QUEUE``).
        client_factory: Builds a ``ServiceBusClient`` (called once, on first use; tests pass a stand-in).
        parking: Where trigger-delivered permanent failures are parked; without one they are abandoned until
            Service Bus dead-letters them as ``MaxDeliveryCountExceeded`` (nothing is lost, the reason is
            only in the log).
        clock: UTC epoch seconds (back-off schedule times).
        receive_wait_seconds: How long a dead-letter scan waits for the next page before it concludes.
        where: The namespace, for error messages.
    """

    def __init__(
        self,
        queue_name: str,
        *,
        client_factory: Callable[[], Any],
        parking: DeadLetterParking | None = None,
        clock: Callable[[], float] = time.time,
        receive_wait_seconds: float = 5.0,
        where: str = "",
    ) -> None:
        self.queue_name = queue_name
        self.parking = parking
        self._factory = client_factory
        self._clock = clock
        self._wait = receive_wait_seconds
        self._where = where or "the namespace"
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._client_obj: Any = None
        self._sender_obj: Any = None
        self._host: dict[str, _HostDelivery] = {}
        self._held: dict[str, tuple[Any, Any]] = {}
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, *, parking: DeadLetterParking | None = None) -> ServiceBusQueue:
        """The queue of the settings: the managed identity (``DefaultAzureCredential``) on
        ``LIFECYCLE_SERVICEBUS_NAMESPACE``, or ``LIFECYCLE_SERVICEBUS_CONNECTION_STRING`` for development.

        Args:
            settings: The Service Bus settings.
            parking: Where permanent failures wait; the runtime builds it (the queue layer knows no store).

        Raises:
            ConfigurationError: Neither is set.
        """
        factory, where = client_factory(settings)
        return cls(settings.servicebus_queue, client_factory=factory, parking=parking, where=where)

    # ------------------------------------------------------------------------------------- plumbing
    def _client(self) -> Any:
        with self._lock:
            if self._closed:
                raise LifecycleError("the Service Bus queue is closed")
            if self._client_obj is None:
                self._client_obj = self._factory()
            return self._client_obj

    def _sender(self) -> Any:
        # Called under _send_lock: an SDK sender is not safe to share between threads.
        if self._sender_obj is None:
            self._sender_obj = self._client().get_queue_sender(self.queue_name)
        return self._sender_obj

    def _drop_sender(self) -> None:
        sender, self._sender_obj = self._sender_obj, None
        if sender is not None:
            try:
                sender.close()
            except Exception:  # it is being thrown away; its error is not news
                log.debug("closing a failed Service Bus sender failed", exc_info=True)

    def _translate(self, exc: BaseException, action: str) -> BaseException:
        """The port's error for an SDK error: configuration, lost lock, too large, or transient."""
        from azure.core.exceptions import ClientAuthenticationError
        from azure.servicebus import exceptions as sb

        if isinstance(exc, LifecycleError):
            return exc
        if isinstance(exc, sb.MessageSizeExceededError):
            return InvalidEvent(
                413,
                "Work item too large",
                f"a work item is larger than the queue's message size limit ({exc}); send fewer or smaller users",
            )
        if isinstance(exc, sb.MessagingEntityNotFoundError):
            return ConfigurationError(
                f"Service Bus queue {self.queue_name!r} does not exist in {self._where} (LIFECYCLE_SERVICEBUS_QUEUE)"
            )
        if isinstance(
            exc, (sb.ServiceBusAuthenticationError, sb.ServiceBusAuthorizationError, ClientAuthenticationError)
        ):
            return ConfigurationError(
                f"Service Bus refused to {action} on {self.queue_name!r} in {self._where}: {exc} (the identity "
                "needs the Azure Service Bus Data Sender and Data Receiver roles on the queue)"
            )
        if isinstance(exc, (sb.MessageLockLostError, sb.SessionLockLostError, sb.MessageAlreadySettled)):
            return LockLostError(f"could not {action}: {exc}")
        if isinstance(exc, sb.ServiceBusError):
            retry_after = 10.0 if isinstance(exc, sb.ServiceBusServerBusyError) else None
            return Retryable(f"Service Bus could not {action}: {exc}", retry_after=retry_after)
        return exc

    # ------------------------------------------------------------------------------------------ send
    def _send_all(self, sender: Any, batch: list[Any]) -> None:
        from azure.servicebus.exceptions import MessageSizeExceededError

        try:
            sender.send_messages(batch)
        except MessageSizeExceededError:
            if len(batch) == 1:
                raise
            # Too much for one AMQP transfer: halves, each atomic; a retry of the whole request is still safe
            # because duplicate detection drops the halves already sent.
            middle = len(batch) // 2
            self._send_all(sender, batch[:middle])
            self._send_all(sender, batch[middle:])

    def send(self, messages: Sequence[OutgoingMessage]) -> list[bool]:
        """Send (or schedule) the messages. Duplicates are dropped by Service Bus, which does not report them.

        Raises:
            Retryable: Service Bus is unreachable or busy (the caller answers 503 or backs off).
            ConfigurationError: Missing queue or missing role.
            InvalidEvent: A work item over the message size limit (413).
        """
        if not messages:
            return []
        immediate = [to_sdk(m) for m in messages if m.scheduled_at is None]
        scheduled = [(to_sdk(m), m.scheduled_at) for m in messages if m.scheduled_at is not None]
        with self._send_lock:
            try:
                sender = self._sender()
                if immediate:
                    self._send_all(sender, immediate)
                for sdk_message, at in scheduled:
                    sender.schedule_messages(sdk_message, at)
            except Exception as exc:
                self._drop_sender()
                raise self._translate(exc, "send") from exc
        return [True] * len(messages)

    # ---------------------------------------------------------------------------- from the trigger
    def from_host(
        self,
        *,
        message_id: str,
        session_id: str,
        body: bytes,
        application_properties: dict[str, Any] | None,
        delivery_count: int,
        enqueued_at: datetime | None,
        lock_token: str,
        sequence_number: int,
    ) -> ReceivedMessage:
        """Adopt a message the Functions host received; settle it through the port, then ask
        ``host_settlement`` what the function must do."""
        token = f"{HOST_LOCK_PREFIX}{lock_token}"
        with self._lock:
            self._host[token] = _HostDelivery(sequence_number)
        return ReceivedMessage(
            message_id=message_id,
            session_id=session_id,
            body=body,
            properties={str(k): str(v) for k, v in (application_properties or {}).items() if v is not None},
            delivery_count=delivery_count,
            enqueued_at=utc(enqueued_at, self._clock()),
            lock_token=token,
        )

    def host_settlement(self, message: ReceivedMessage) -> HostSettlement | None:
        """What the worker decided for a host-delivered message (None: it decided nothing); forgets it."""
        with self._lock:
            delivery = self._host.pop(message.lock_token, None)
        return None if delivery is None else delivery.outcome

    def _host_delivery(self, message: ReceivedMessage) -> _HostDelivery | None:
        if not message.lock_token.startswith(HOST_LOCK_PREFIX):
            return None
        with self._lock:
            delivery = self._host.get(message.lock_token)
        if delivery is None or delivery.outcome is not None:
            raise LockLostError(f"message {message.message_id!r} was already settled in this invocation")
        return delivery

    # ------------------------------------------------------------------------------ SDK receiving
    def receive(self, timeout: float) -> ReceivedMessage | None:
        """Accept the next available session and lock its next message (``None`` when none comes in time)."""
        from azure.servicebus import NEXT_AVAILABLE_SESSION
        from azure.servicebus.exceptions import OperationTimeoutError

        wait = max(timeout, 0.1)
        try:
            receiver = self._client().get_queue_receiver(
                self.queue_name, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=wait
            )
            receiver.__enter__()
        except OperationTimeoutError:
            return None
        except Exception as exc:
            raise self._translate(exc, "receive") from exc
        try:
            messages = receiver.receive_messages(max_message_count=1, max_wait_time=wait)
        except OperationTimeoutError:
            # The service may also answer "no session available" by detaching the link after it opened.
            receiver.close()
            return None
        except Exception as exc:
            receiver.close()
            raise self._translate(exc, "receive") from exc
        if not messages:
            receiver.close()
            return None
        sdk_message = messages[0]
        token = str(sdk_message.lock_token)
        with self._lock:
            self._held[token] = (receiver, sdk_message)
        # A session's messages are locked by the session lock: that is what runs out, and what renew_lock renews.
        session_until = getattr(receiver.session, "locked_until_utc", None)
        return ReceivedMessage(
            message_id=str(sdk_message.message_id),
            session_id=str(sdk_message.session_id),
            body=body_of(sdk_message),
            properties=decode_properties(sdk_message.application_properties),
            # AMQP's header delivery-count counts the previous attempts (absent, i.e. 0, on the first).
            delivery_count=int(sdk_message.delivery_count or 0) + 1,
            enqueued_at=utc(sdk_message.enqueued_time_utc, self._clock()),
            lock_token=token,
            locked_until=session_until if isinstance(session_until, datetime) else None,
        )

    def renew_lock(self, message: ReceivedMessage) -> bool:
        """Renew the session lock of a message this process received (the Functions host renews its own
        deliveries' locks, up to host.json's maxAutoLockRenewalDuration).

        Raises:
            Retryable: Service Bus could not be reached (the lock may still run a while; try again).
        """
        if message.lock_token.startswith(HOST_LOCK_PREFIX):
            return True  # the host holds and renews it
        from azure.servicebus import exceptions as sb

        with self._lock:
            held = self._held.get(message.lock_token)
        if held is None:
            return False
        receiver, _ = held
        try:
            receiver.session.renew_lock()
        except (sb.SessionLockLostError, sb.MessageLockLostError, sb.MessageAlreadySettled):
            return False
        except Exception as exc:
            raise self._translate(exc, "renew the lock") from exc
        return True

    def _settle_held(self, message: ReceivedMessage, action: str, settle: Callable[[Any, Any], None]) -> None:
        with self._lock:
            held = self._held.pop(message.lock_token, None)
        if held is None:
            raise LockLostError(f"message {message.message_id!r} is not held by this process (settled already?)")
        receiver, sdk_message = held
        try:
            settle(receiver, sdk_message)
        except Exception as exc:
            raise self._translate(exc, action) from exc
        finally:
            # One session per received message: closing releases the session for its next message.
            receiver.close()

    # ----------------------------------------------------------------------------------- settling
    def complete(self, message: ReceivedMessage) -> None:
        """Host: the host completes on return. SDK: complete now."""
        delivery = self._host_delivery(message)
        if delivery is not None:
            delivery.outcome = "complete"
            return
        self._settle_held(message, "complete", lambda r, m: r.complete_message(m))

    def abandon(self, message: ReceivedMessage) -> None:
        """Host: the function raises so that the host abandons. SDK: abandon now."""
        delivery = self._host_delivery(message)
        if delivery is not None:
            delivery.outcome = "abandon"
            return
        self._settle_held(message, "abandon", lambda r, m: r.abandon_message(m))

    def retry_later(self, message: ReceivedMessage, delay_seconds: float, reason: str) -> None:
        """Schedule a copy ``<id>:b<n>`` for ``delay_seconds`` from now, then complete the original.

        The copy goes behind messages of the session that are already queued; the worker's stale-event check
        keeps an older event from undoing a newer one that overtook it.
        """
        delivery = self._host_delivery(message)
        copy = backoff_copy(message, delay_seconds, reason, self._clock())
        self.send([copy])
        if delivery is not None:
            delivery.outcome = "complete"
            return
        self._settle_held(message, "complete", lambda r, m: r.complete_message(m))

    def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None:
        """Host: park the message with its reason, then the host completes it. SDK: the real dead-letter
        sub-queue with reason and description."""
        reason, description = reason[:MAX_REASON], description[:MAX_DESCRIPTION]
        delivery = self._host_delivery(message)
        if delivery is None:
            self._settle_held(
                message,
                "dead-letter",
                lambda r, m: r.dead_letter_message(m, reason=reason, error_description=description),
            )
            return
        if self.parking is None:
            log.error(
                "cannot park a dead-lettered message without Table storage (LIFECYCLE_TABLE_ENDPOINT); it is "
                "abandoned until Service Bus dead-letters it as MaxDeliveryCountExceeded: %s: %s",
                reason,
                description,
            )
            delivery.outcome = "abandon"
            return
        self.parking.park(
            DeadLetteredMessage(
                message_id=message.message_id,
                session_id=message.session_id,
                body=message.body,
                properties=dict(message.properties),
                delivery_count=message.delivery_count,
                enqueued_at=message.enqueued_at,
                dead_lettered_at=datetime.fromtimestamp(self._clock(), UTC),
                reason=reason,
                description=description,
                sequence_number=delivery.sequence_number,
            )
        )
        delivery.outcome = "complete"

    # ------------------------------------------------------------------------------- dead letters
    def _dead_letter_receiver(self) -> Any:
        from azure.servicebus import ServiceBusSubQueue

        return self._client().get_queue_receiver(
            self.queue_name, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=self._wait
        )

    def _peek_dead_letters(self, limit: int, start: int = 0) -> list[DeadLetteredMessage]:
        found: list[DeadLetteredMessage] = []
        try:
            with self._dead_letter_receiver() as receiver:
                next_number = start
                while len(found) < limit:
                    page = receiver.peek_messages(min(_PEEK_PAGE, limit - len(found)), sequence_number=next_number)
                    if not page:
                        break
                    found.extend(from_dead_letter(m, self._clock()) for m in page)
                    next_number = int(page[-1].sequence_number) + 1
        except Exception as exc:
            raise self._translate(exc, "read the dead-letter sub-queue") from exc
        return found

    def dead_letters(self, limit: int = 100) -> list[DeadLetteredMessage]:
        """Parked entries and the dead-letter sub-queue, oldest first."""
        entries = list(self.parking.parked(limit)) if self.parking is not None else []
        entries.extend(self._peek_dead_letters(limit))
        entries.sort(key=lambda m: (m.dead_lettered_at, m.sequence_number))
        return entries[:limit]

    def dead_letter_by_sequence(self, sequence_number: int) -> DeadLetteredMessage | None:
        """One dead-lettered message, parked or in the sub-queue, or None."""
        if self.parking is not None:
            parked = self.parking.get(sequence_number)
            if parked is not None:
                return parked
        page = self._peek_dead_letters(1, start=sequence_number)
        return page[0] if page and page[0].sequence_number == sequence_number else None

    def replay(self, sequence_number: int) -> str:
        """Send a dead-lettered message again under a new id, then remove the dead-letter entry.

        Raises:
            DeadLetterNotFoundError: Neither parked nor in the sub-queue (replayed already?).
        """
        done = self.replay_many([sequence_number])
        if sequence_number not in done:
            raise DeadLetterNotFoundError(
                f"no dead-lettered message with sequence number {sequence_number} is available: replayed already, "
                "or still locked by a replay that failed a moment ago (try again in a minute)"
            )
        return done[sequence_number]

    def replay_many(
        self,
        sequence_numbers: Iterable[int],
        *,
        progress: Callable[[int, str, str], None] | None = None,
    ) -> dict[int, str]:
        """Replay several entries in one pass over the sub-queue.

        ``progress(sequence_number, old_id, new_id)`` is called after each one. Entries not found are left out
        of the result. Messages of the sub-queue passed over while looking are abandoned, which raises their
        delivery count (Service Bus offers no other way to reach a message in the middle of the sub-queue).
        """
        wanted = set(sequence_numbers)
        done: dict[int, str] = {}
        if self.parking is not None:
            for number in sorted(wanted):
                entry = self.parking.get(number)
                if entry is None:
                    continue
                copy = replay_copy(entry.message_id, entry.session_id, entry.body, entry.properties)
                self.send([copy])
                self.parking.remove(number)
                done[number] = copy.message_id
                if progress is not None:
                    progress(number, entry.message_id, copy.message_id)
        remaining = wanted - done.keys()
        if remaining:
            done.update(self._replay_from_sub_queue(remaining, progress))
        return done

    def _replay_from_sub_queue(
        self, wanted: set[int], progress: Callable[[int, str, str], None] | None
    ) -> dict[int, str]:
        done: dict[int, str] = {}
        passed_over: list[Any] = []
        try:
            with self._dead_letter_receiver() as receiver:
                try:
                    while wanted - done.keys():
                        page = receiver.receive_messages(max_message_count=_RECEIVE_PAGE, max_wait_time=self._wait)
                        if not page:
                            break
                        for sdk_message in page:
                            number = int(sdk_message.sequence_number)
                            if number not in wanted or number in done:
                                passed_over.append(sdk_message)
                                continue
                            entry = from_dead_letter(sdk_message, self._clock())
                            copy = replay_copy(entry.message_id, entry.session_id, entry.body, entry.properties)
                            self.send([copy])  # first the copy ...
                            receiver.complete_message(sdk_message)  # ... then the original
                            done[number] = copy.message_id
                            if progress is not None:
                                progress(number, entry.message_id, copy.message_id)
                finally:
                    for sdk_message in passed_over:
                        try:
                            receiver.abandon_message(sdk_message)
                        except Exception:  # its lock runs out by itself
                            log.debug("could not abandon a passed-over dead letter", exc_info=True)
        except LifecycleError:
            raise
        except Exception as exc:
            raise self._translate(exc, "replay from the dead-letter sub-queue") from exc
        return done

    # --------------------------------------------------------------------------------- operations
    def health(self) -> bool:
        """True when a sender link to the queue opens (it is kept open for the next send)."""
        with self._send_lock:
            try:
                self._sender().create_message_batch()
                return True
            except Exception:
                log.warning("Service Bus health check failed", exc_info=True)
                self._drop_sender()
                return False

    def close(self) -> None:
        with self._send_lock:
            self._drop_sender()
        with self._lock:
            self._closed = True
            held, self._held = list(self._held.values()), {}
            client, self._client_obj = self._client_obj, None
        for receiver, _ in held:
            receiver.close()
        if client is not None:
            client.close()
        if self.parking is not None:
            self.parking.close()
