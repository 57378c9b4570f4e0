"""The queue port: what the ingress and the worker need from a queue, whatever carries it.

Two adapters implement it with the same semantics: ``embedded`` (SQLite, local mode) and ``servicebus``
(Azure Service Bus, session-enabled queue with duplicate detection). Semantics every adapter keeps:

- **Sessions**: messages with the same ``session_id`` (the Halo user id) are delivered one at a time, in
  send order; a session is locked to one receiver while it holds a message of it.
- **Duplicate detection**: a message whose ``message_id`` was sent within the window is accepted and dropped
  (``send`` reports it as a duplicate).
- **Peek-lock**: a received message is invisible until completed, abandoned, dead-lettered, retried later, or
  until its lock expires (then it comes back with ``delivery_count`` + 1).
- **Dead-letter** after ``max_deliveries`` with a reason; dead-lettered messages never expire and can be
  replayed under a new message id that keeps the original in the ``original_message_id`` property.
- **Scheduled delivery**: a message can be made visible at a later time (backoff without burning a delivery).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from lifecycle.errors import LifecycleError

if TYPE_CHECKING:
    from lifecycle.work import WorkItem

ORIGINAL_MESSAGE_ID = "original_message_id"
# Property of a back-off copy (a queue that backs off by re-sending): the message id the chain started from.
RETRY_OF = "retry_of"
REPLAY_COUNT = "replay_count"

RETRY_ATTEMPT = "retry_attempt"
"""Property counting the ``retry_later`` back-offs of a message (they do not count as deliveries)."""

LAST_RETRY_REASON = "last_retry_reason"
"""Property holding the reason given to the last ``retry_later``."""

FIRST_ENQUEUED_AT = "first_enqueued_at"
"""Property of a back-off copy (a queue that backs off by re-sending): epoch seconds of the first enqueue (the
worker's retry deadline counts from it)."""


class LockLostError(LifecycleError):
    """The lock token of a received message is no longer valid, so the message cannot be settled.

    Either the lock expired and the message was received again (possibly by another worker), or the message
    was already settled. The holder must not settle it: whoever holds the current lock will.
    """


class DeadLetterNotFoundError(LifecycleError, LookupError):
    """No dead-lettered message has this sequence number (never existed, replayed or purged already)."""


@dataclass(frozen=True)
class OutgoingMessage:
    """A message to send. ``scheduled_at`` (UTC) delays its first delivery."""

    message_id: str
    session_id: str
    body: bytes
    properties: dict[str, str] = field(default_factory=dict)
    scheduled_at: datetime | None = None


@dataclass(frozen=True)
class ReceivedMessage:
    """A message under a peek-lock; settle it through the queue with its ``lock_token``."""

    message_id: str
    session_id: str
    body: bytes
    properties: dict[str, str]
    delivery_count: int
    enqueued_at: datetime
    lock_token: str
    # When the lock runs out unless renewed (``renew_lock``); None when the queue's host renews it (Functions).
    locked_until: datetime | None = None


@dataclass(frozen=True)
class DeadLetteredMessage:
    """A message in the dead-letter sub-queue, with why it got there."""

    message_id: str
    session_id: str
    body: bytes
    properties: dict[str, str]
    delivery_count: int
    enqueued_at: datetime
    dead_lettered_at: datetime
    reason: str
    description: str
    sequence_number: int


def message_for(item: WorkItem, *, message_id: str | None = None, **properties: str) -> OutgoingMessage:
    """The queue message carrying ``item``: one person's items share a session, the work id dedupes.

    Every sender (ingress, reconcile, staged work, held-item approval) builds its message here, so the
    properties a consumer or an operator filters on are the same whoever sent it.
    """
    return OutgoingMessage(
        message_id=message_id or item.work_id,
        session_id=str(item.event.user_id),
        body=item.to_bytes(),
        properties={
            "event": item.event.kind,
            "lifecycle": item.lifecycle,
            "schema_version": str(item.schema_version),
            **properties,
        },
    )


class WorkQueue(Protocol):
    """The queue port."""

    def send(self, messages: Sequence[OutgoingMessage]) -> list[bool]:
        """Send all messages atomically; for each, True if new, False if a duplicate that was dropped."""
        ...

    def receive(self, timeout: float) -> ReceivedMessage | None:
        """Lock and return the next deliverable message of an unlocked session, waiting up to ``timeout``."""
        ...

    def complete(self, message: ReceivedMessage) -> None:
        """Remove a processed message and release its session."""
        ...

    def abandon(self, message: ReceivedMessage) -> None:
        """Give the message back at once (its delivery count stays incremented)."""
        ...

    def retry_later(self, message: ReceivedMessage, delay_seconds: float, reason: str) -> None:
        """Back off: deliver the same message again after ``delay_seconds`` without using up a delivery.

        Order within the session is kept: later messages of the session wait behind it.
        """
        ...

    def renew_lock(self, message: ReceivedMessage) -> bool:
        """Extend the lock of a message still being worked on (and of its session) by the queue's lock duration.

        Returns False when the lock is no longer this holder's (it lapsed and another receiver took the
        message, or the message was settled); a lock that lapsed with nobody taking it is extended again.
        """
        ...

    def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None:
        """Move the message to the dead-letter sub-queue with a reason a person can read."""
        ...

    def dead_letters(self, limit: int = 100) -> list[DeadLetteredMessage]:
        """Dead-lettered messages, oldest first."""
        ...

    def replay(self, sequence_number: int) -> str:
        """Send a dead-lettered message again under a new message id, then remove the dead-letter entry.

        Returns the new message id. The copy is sent before the entry is removed, so a crash in between
        replays twice, which the worker's idempotency absorbs.
        """
        ...

    def health(self) -> bool:
        """True when the queue can be used."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
