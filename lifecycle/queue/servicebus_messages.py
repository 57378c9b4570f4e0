"""How the port's messages travel as Service Bus messages: ids, properties, and the copies that carry a
back-off or a replay.

Replay sends a copy under ``<original id>:r<n>`` (``original_message_id`` keeps the first id) *before* it
completes the dead-lettered original (or deletes the parked entry): a crash in between replays twice, and the
second copy is dropped by duplicate detection or absorbed by the worker's journal.

Kept apart from ``servicebus`` (the SDK plumbing and settling): these change with what a message carries,
that with how the SDK and the Functions host deliver it.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, cast

from lifecycle.queue import (
    FIRST_ENQUEUED_AT,
    LAST_RETRY_REASON,
    ORIGINAL_MESSAGE_ID,
    REPLAY_COUNT,
    RETRY_ATTEMPT,
    RETRY_OF,
    DeadLetteredMessage,
    OutgoingMessage,
    ReceivedMessage,
)

DEAD_LETTER_REASON = "DeadLetterReason"
DEAD_LETTER_DESCRIPTION = "DeadLetterErrorDescription"

MAX_MESSAGE_ID = 128
"""Service Bus refuses a MessageId longer than this."""

# Back-off copies and replays drop these: they describe the previous life of the message.
_HISTORY_PROPERTIES = frozenset(
    {RETRY_ATTEMPT, LAST_RETRY_REASON, RETRY_OF, FIRST_ENQUEUED_AT, DEAD_LETTER_REASON, DEAD_LETTER_DESCRIPTION}
)
# Service Bus caps the size of all application properties together; a reason is for a person, not a log.
MAX_REASON = 1024
MAX_DESCRIPTION = 4096


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode_properties(raw: dict[Any, Any] | None) -> dict[str, str]:
    """Received application properties as the port's str-to-str mapping (the SDK gives bytes)."""
    return {_text(k): _text(v) for k, v in (raw or {}).items() if v is not None}


def body_of(message: Any) -> bytes:
    body = message.body
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return b"".join(bytes(part) for part in body)


def utc(moment: datetime | None, fallback: float) -> datetime:
    if moment is None:
        return datetime.fromtimestamp(fallback, UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def derived_id(root: str, suffix: str) -> str:
    """``<root><suffix>``, shortened with a digest of ``root`` when it would pass the MessageId limit."""
    candidate = f"{root}{suffix}"
    if len(candidate) <= MAX_MESSAGE_ID:
        return candidate
    digest = hashlib.sha256(root.encode("utf-8")).hexdigest()[:32]
    return f"{root[: MAX_MESSAGE_ID - len(suffix) - 33]}~{digest}{suffix}"


def backoff_copy(message: ReceivedMessage, delay_seconds: float, reason: str, now: float) -> OutgoingMessage:
    """The scheduled copy that carries a message through a back-off without using up a delivery."""
    properties = dict(message.properties)
    attempt = int(properties.get(RETRY_ATTEMPT, "0")) + 1
    root = properties.get(RETRY_OF, message.message_id)
    properties[RETRY_ATTEMPT] = str(attempt)
    properties[LAST_RETRY_REASON] = reason[:MAX_REASON]
    properties[RETRY_OF] = root
    properties.setdefault(FIRST_ENQUEUED_AT, repr(message.enqueued_at.timestamp()))
    return OutgoingMessage(
        message_id=derived_id(root, f":b{attempt}"),
        session_id=message.session_id,
        body=message.body,
        properties=properties,
        scheduled_at=datetime.fromtimestamp(now + max(0.0, delay_seconds), UTC),
    )


def replay_copy(message_id: str, session_id: str, body: bytes, properties: dict[str, str]) -> OutgoingMessage:
    """The copy a replay sends: a fresh message under ``<original id>:r<n>``, without its back-off history."""
    original = properties.get(ORIGINAL_MESSAGE_ID) or properties.get(RETRY_OF) or message_id
    count = int(properties.get(REPLAY_COUNT, "0")) + 1
    fresh = {k: v for k, v in properties.items() if k not in _HISTORY_PROPERTIES}
    fresh[ORIGINAL_MESSAGE_ID] = original
    fresh[REPLAY_COUNT] = str(count)
    return OutgoingMessage(derived_id(original, f":r{count}"), session_id, body, fresh)


def to_sdk(message: OutgoingMessage) -> Any:
    """The SDK's message for one of ours."""
    from azure.servicebus import ServiceBusMessage

    # Service Bus takes at most 128 characters of MessageId and SessionId: a longer one (a long Halo delivery
    # id) is shortened deterministically, so duplicates are still detected and one person keeps one session.
    return ServiceBusMessage(
        body=message.body,
        message_id=derived_id(message.message_id, ""),
        session_id=derived_id(message.session_id, ""),
        application_properties=cast(Any, dict(message.properties)),
        content_type="application/json",
    )


def from_dead_letter(sdk_message: Any, now: float) -> DeadLetteredMessage:
    """A message of the dead-letter sub-queue as the port's (``now`` stands in for a missing enqueue time)."""
    properties = decode_properties(sdk_message.application_properties)
    reason = sdk_message.dead_letter_reason or properties.get(DEAD_LETTER_REASON, "")
    description = sdk_message.dead_letter_error_description or properties.get(DEAD_LETTER_DESCRIPTION, "")
    enqueued = utc(sdk_message.enqueued_time_utc, now)
    return DeadLetteredMessage(
        message_id=str(sdk_message.message_id),
        session_id=str(sdk_message.session_id or ""),
        body=body_of(sdk_message),
        properties={k: v for k, v in properties.items() if k not in (DEAD_LETTER_REASON, DEAD_LETTER_DESCRIPTION)},
        delivery_count=int(sdk_message.delivery_count or 0),
        enqueued_at=enqueued,
        # Service Bus does not record when a message was dead-lettered; its enqueue time is the best bound.
        dead_lettered_at=enqueued,
        reason=str(reason),
        description=str(description),
        sequence_number=int(sdk_message.sequence_number),
    )
