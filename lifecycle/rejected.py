"""Rejected webhook elements as dead letters: kept with their raw body and reason, replayable after a fix.

Once a Halo webhook delivery is authenticated, a bad element never fails the others: the ingress answers 202
and sends the element through the queue as a *rejected item* message (its raw JSON, the problem, and how the
request was authorised). The worker hands such a message to ``redrive``: it parses the element again with the
current settings and mapping. Still bad, it is dead-lettered with the problem as its reason (so ``lifecycle
dlq list`` shows it, by the queue port's own dead-letter mechanism); fixed meanwhile (``lifecycle dlq replay``
after the mapping or ``LIFECYCLE_HALO_EVENT_MAP`` changed), it becomes the work item it should have been.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, cast

from lifecycle.halo.events import Accepted, Rejected, parse_items
from lifecycle.mapping.planner import plan
from lifecycle.observability import log
from lifecycle.queue import OutgoingMessage, ReceivedMessage, message_for
from lifecycle.work import EventKind, WorkItem, canonical_json

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime

REJECTED_ITEM_PROPERTY = "rejected_item"
DEAD_LETTER_REASON = "RejectedDelivery"
_FORMAT = "halo-lifecycle/rejected-item@1"
# Rejected elements of a ticket webhook share the mechanism; lifecycle.requests parses them again.
TICKET_FORMAT = "halo-lifecycle/rejected-ticket@1"


def rejected_message(
    rejected: Rejected, *, kind_override: EventKind | None, bound_kind: EventKind | None, received_at: datetime
) -> OutgoingMessage:
    """The queue message that keeps a rejected element until it is dead-lettered (and later replayed)."""
    body = {
        "format": _FORMAT,
        "problem": rejected.problem,
        "field": rejected.field,
        "index": rejected.index,
        "kind_override": kind_override,
        "bound_kind": bound_kind,
        "received_at": received_at.isoformat(),
        "item": rejected.raw,
    }
    try:
        material = canonical_json({"item": rejected.raw, "kind": kind_override or bound_kind})
    except RecursionError:
        material = canonical_json({"problem": rejected.problem, "at": received_at.isoformat()})
    digest = hashlib.sha256(material.encode())
    return OutgoingMessage(
        # The same bad element sent again is a duplicate, not a second dead letter.
        message_id="rejected-" + digest.hexdigest()[:40],
        session_id=str(rejected.user_id) if rejected.user_id is not None else "rejected",
        body=_envelope(body),
        properties={REJECTED_ITEM_PROPERTY: "1", "event": kind_override or bound_kind or ""},
    )


def _envelope(body: dict[str, Any]) -> bytes:
    try:
        return json.dumps(body, default=str).encode("utf-8")
    except RecursionError:
        # An element nested past what the encoder can write is kept as its reason alone.
        body = {**body, "item": None, "problem": f"{body['problem']} (the element nests too deeply to be kept)"}
        return json.dumps(body, default=str).encode("utf-8")


def reparse(runtime: Runtime, body: bytes) -> WorkItem | str:
    """A rejected-item message's element parsed and planned under today's settings and mapping, or the problem.

    Nothing is sent or changed (the console's replay preview uses it too).
    """
    try:
        data = json.loads(body)
        if isinstance(data, dict) and data.get("format") == TICKET_FORMAT:
            return "a ticket webhook's element: a replay reads the ticket again"
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError("not a rejected-item message")
        received_at = datetime.fromisoformat(str(data["received_at"]))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        # RecursionError: an element nested to the decoder's limit is one level deeper in this envelope.
        return f"the rejected-item message cannot be read: {exc}"
    if not isinstance(data.get("item"), dict):
        return _describe(data, str(data.get("problem", "the element is not a JSON object")))
    settings = runtime.settings
    parsed = parse_items(
        data["item"],
        kind_override=cast(EventKind | None, data.get("kind_override")),
        bound_kind=cast(EventKind | None, data.get("bound_kind")),
        event_map=settings.halo_event_map,
        received_at=received_at,
        max_future_seconds=settings.webhook_max_future_seconds,
    )
    outcome = parsed.items[0]
    if not isinstance(outcome, Accepted):
        return _describe(data, outcome.problem)
    person = runtime.store.get_person(outcome.event.user_id)
    return plan(
        outcome.event,
        runtime.mapping,
        work_id=outcome.work_id,
        context=runtime.plan_context,
        status=person.status if person is not None else "unknown",
    )


def redrive(runtime: Runtime, message: ReceivedMessage) -> tuple[Literal["completed", "dead_lettered"], str]:
    """Parse a rejected element again; enqueue its work if it now reads, else dead-letter it with the reason."""
    queue = runtime.queue
    try:
        body = json.loads(message.body)
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict) and body.get("format") == TICKET_FORMAT:
        from lifecycle.requests.http import redrive_ticket  # a ticket webhook's element (lifecycle.requests)

        return redrive_ticket(runtime, message, body)
    try:
        item = reparse(runtime, message.body)
    except RecursionError:
        item = "the rejected element nests arrays or objects too deeply to be read"
    if isinstance(item, str):
        queue.dead_letter(message, DEAD_LETTER_REASON, item)
        log.warning("kept a rejected webhook element as a dead letter: %s", item)
        return "dead_lettered", item
    queue.send([message_for(item, replayed_from=message.message_id)])
    queue.complete(message)
    log.info("a once rejected webhook element now reads; enqueued %s", item.work_id)
    return "completed", f"enqueued {item.work_id}"


def _describe(body: dict[str, Any], reason: str) -> str:
    index = body.get("index")
    where = f"element {index} of a webhook delivery" if index is not None else "a webhook delivery"
    return f"{where}: {reason} (fix the mapping or settings, then `lifecycle dlq replay`)"
