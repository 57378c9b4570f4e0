"""Between the queue's state and AMQP: building the messages a receiver gets, reading what a sender sent.

Built on python-qpid-proton's own encoder, so the broker shares nothing with the SDK's pyamqp.
[guide] = learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-protocol-guide, "Message
annotations" and "Message mapping"; [rr] = .../service-bus-amqp-request-response.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse
from typing import Any

from proton import Message, symbol, timestamp, ulong

from tests.standins.amqp_broker.entity import Stored

# .NET ticks at the Unix epoch: Service Bus sends some times (com.microsoft:locked-until-utc) as ticks ([guide]).
DOTNET_EPOCH_TICKS = 621355968000000000

ENQUEUED_TIME = symbol("x-opt-enqueued-time")
SEQUENCE_NUMBER = symbol("x-opt-sequence-number")
ENQUEUE_SEQUENCE_NUMBER = symbol("x-opt-enqueue-sequence-number")
LOCKED_UNTIL = symbol("x-opt-locked-until")
LOCK_TOKEN = symbol("x-opt-lock-token")
SCHEDULED_ENQUEUE_TIME = symbol("x-opt-scheduled-enqueue-time")
MESSAGE_STATE = symbol("x-opt-message-state")
DEAD_LETTER_SOURCE = symbol("x-opt-deadletter-source")


def decode(raw: bytes) -> Any:
    message: Any = Message()
    message.decode(raw)
    return message


def ms(moment: float) -> timestamp:
    return timestamp(int(moment * 1000))


def seconds(value: Any) -> float | None:
    """An AMQP timestamp (ms since the epoch, as proton decodes it) or a datetime, in epoch seconds."""
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return int(value) / 1000.0


def ticks(moment: float) -> int:
    return DOTNET_EPOCH_TICKS + int(moment * 10_000_000)


def outgoing(stored: Stored, *, entity: str, now: float, locked: bool, peeked: bool) -> Any:
    """The message a receiver (or a peek) gets: the sender's message plus what the broker stamps on it."""
    message = decode(stored.raw)
    annotations = dict(message.annotations or {})
    # [guide] "Message annotations": x-opt-enqueued-time, x-opt-sequence-number, x-opt-locked-until, ...
    annotations[ENQUEUED_TIME] = ms(stored.enqueued_at)
    annotations[SEQUENCE_NUMBER] = stored.sequence_number
    annotations[ENQUEUE_SEQUENCE_NUMBER] = stored.sequence_number
    if stored.scheduled:
        annotations[SCHEDULED_ENQUEUE_TIME] = ms(stored.visible_at)
    if locked:
        annotations[LOCKED_UNTIL] = ms(stored.locked_until)
    if peeked:
        # [rr] peek-message: the message state (0 active, 1 deferred, 2 scheduled).
        annotations[MESSAGE_STATE] = 1 if stored.deferred else 2 if stored.visible_at > now else 0
    if entity.endswith("/$DeadLetterQueue"):
        annotations[DEAD_LETTER_SOURCE] = entity.rsplit("/", 1)[0]
    message.annotations = annotations
    if stored.properties_added:
        message.properties = {**(message.properties or {}), **stored.properties_added}
    # [amqp] 3.2.1: delivery-count, the number of previous unsuccessful delivery attempts.
    message.delivery_count = stored.delivery_count
    message.durable = True  # [guide] "Message mapping": Service Bus messages are durable; the header is always sent
    message.first_acquirer = stored.delivery_count == 0
    return message


def address_path(address: str | None) -> str:
    """An entity path from a link address, which the SDK sends with or without ``amqps://host:port/``."""
    text = address or ""
    if "://" in text:
        text = urllib.parse.urlsplit(text).path
    return text.strip("/")


def check_sas(token: str, audience: str, key_name: str, key: str, now: float) -> str | None:
    """Why a SAS token is refused, or None ([service-bus-sas] "Generate a Shared Access Signature token":
    HMAC-SHA256 over the URL-encoded resource URI, a newline and the expiry, with the named key)."""
    if not token.startswith("SharedAccessSignature "):
        return "not a SharedAccessSignature token"
    fields = dict(part.split("=", 1) for part in token[len("SharedAccessSignature ") :].split("&") if "=" in part)
    try:
        resource, signature, expiry, name = fields["sr"], fields["sig"], fields["se"], fields["skn"]
    except KeyError as missing:
        return f"the token lacks {missing}"
    if name != key_name:
        return f"unknown key name {name!r}"
    signed = f"{resource}\n{expiry}".encode()
    expected = base64.b64encode(hmac.new(key.encode(), signed, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(urllib.parse.unquote(signature), expected):
        return "the signature does not match"
    if int(expiry) < now:
        return "the token has expired"
    if address_path(urllib.parse.unquote(resource)) not in ("", address_path(audience)) and not address_path(
        audience
    ).startswith(address_path(urllib.parse.unquote(resource))):
        return "the token is for another resource"
    return None


def as_ulong(value: int) -> ulong:
    return ulong(value)
