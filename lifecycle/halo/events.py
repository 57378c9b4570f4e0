"""Turn a request body (a webhook delivery, a batch of them, or a runbook body) into lifecycle events.

Every element is validated before any is accepted, so a batch is all or nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from lifecycle.errors import InvalidEvent
from lifecycle.halo.models import HaloUser, RunbookBody, WebhookDelivery
from lifecycle.work import EventKind, LifecycleEvent, derive_work_id

EVENT_KINDS: tuple[EventKind, ...] = ("created", "updated", "deleted")
MAX_BATCH = 500


def _field_path(prefix: str, loc: tuple[Any, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _validate(model: type[BaseModel], raw: dict[str, Any], prefix: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_path(prefix, tuple(first["loc"]))
        raise InvalidEvent(422, "Invalid event", f"{field}: {first['msg']}", field=field) from None


def parse_json(body: bytes) -> Any:
    """Decode a JSON body, or answer 400 with where it broke."""
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise InvalidEvent(400, "Body is not UTF-8", "the request body must be UTF-8 encoded JSON") from None
    except json.JSONDecodeError as exc:
        raise InvalidEvent(
            400, "Malformed JSON", f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidEvent(400, "Malformed JSON", "the body nests arrays or objects too deeply") from None


def _kind_from_name(name: str | None, event_map: Mapping[str, EventKind]) -> EventKind | None:
    if not name:
        return None
    return event_map.get(name.strip().lower())


def _user_dict(user: HaloUser | None) -> dict[str, Any] | None:
    # Only the fields the sender gave (exclude_unset): a field absent here must never clear an attribute.
    return None if user is None else user.model_dump(mode="json", exclude_unset=True)


def parse_events(
    payload: Any,
    *,
    kind_override: str | None,
    event_map: Mapping[str, EventKind],
    received_at: datetime | None = None,
) -> list[tuple[str, LifecycleEvent]]:
    """Validate a decoded body and return ``(work_id, event)`` pairs in body order.

    Args:
        payload: the decoded JSON body: an object or a non-empty array of objects.
        kind_override: the ``?event=`` query value, which wins over everything else.
        event_map: Halo event display names (lower-case) to event kinds.
        received_at: when the request arrived; the event time when the sender gave none.
    """
    received_at = received_at or datetime.now(UTC)
    if kind_override is not None and kind_override not in EVENT_KINDS:
        raise InvalidEvent(422, "Unknown event kind", f"?event= must be one of {', '.join(EVENT_KINDS)}", field="event")
    if isinstance(payload, dict):
        items, batched = [payload], False
    elif isinstance(payload, list):
        items, batched = payload, True
        if not items:
            raise InvalidEvent(422, "Empty batch", "the batch array holds no event", field="$")
        if len(items) > MAX_BATCH:
            raise InvalidEvent(422, "Batch too large", f"a batch holds at most {MAX_BATCH} events", field="$")
    else:
        raise InvalidEvent(422, "Invalid event", "the body must be a JSON object or an array of objects", field="$")

    parsed: list[tuple[str, LifecycleEvent]] = []
    for index, raw in enumerate(items):
        prefix = f"[{index}]" if batched else ""
        if not isinstance(raw, dict):
            raise InvalidEvent(422, "Invalid event", f"{prefix or '$'}: each event must be a JSON object", field=prefix)
        parsed.append(_parse_one(raw, prefix, kind_override, event_map, received_at))
    return parsed


def _parse_one(
    raw: dict[str, Any],
    prefix: str,
    kind_override: str | None,
    event_map: Mapping[str, EventKind],
    received_at: datetime,
) -> tuple[str, LifecycleEvent]:
    def at(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    # A runbook body names the user with user_id; a webhook delivery with object_id or its user object.
    if "user_id" in raw:
        if kind_override is not None and "event" not in raw:
            raw = {**raw, "event": kind_override}
        body = cast(RunbookBody, _validate(RunbookBody, raw, prefix))
        kind = cast(EventKind, kind_override or body.event)
        user = _user_dict(body.user)
        if body.user is not None and body.user.id != body.user_id:
            raise InvalidEvent(
                422, "Invalid event", f"{at('user.id')} differs from {at('user_id')}", field=at("user.id")
            )
        user_id, delivery_id, timestamp, halo_event, agent_id = body.user_id, None, body.timestamp, None, body.agent_id
        source = "runbook"
    else:
        delivery = cast(WebhookDelivery, _validate(WebhookDelivery, raw, prefix))
        found = kind_override or _kind_from_name(delivery.event, event_map)
        if found is None:
            detail = (
                f"{at('event')}: Halo event {delivery.event!r} is not mapped to created/updated/deleted; "
                "add it to LIFECYCLE_HALO_EVENT_MAP or call the URL with ?event="
                if delivery.event
                else f"{at('event')}: no event name; call the URL with ?event=created|updated|deleted"
            )
            raise InvalidEvent(422, "Unknown event", detail, field=at("event"))
        kind = cast(EventKind, found)
        user = _user_dict(delivery.user)
        if delivery.user is not None and delivery.object_id is not None and delivery.user.id != delivery.object_id:
            raise InvalidEvent(
                422, "Invalid event", f"{at('user.id')} differs from {at('object_id')}", field=at("user.id")
            )
        resolved_id = delivery.user.id if delivery.user is not None else delivery.object_id
        if resolved_id is None or resolved_id <= 0:
            raise InvalidEvent(
                422,
                "Invalid event",
                f"{at('object_id')}: the user id is missing (no object_id and no user object)",
                field=at("object_id"),
            )
        user_id, delivery_id, timestamp = resolved_id, delivery.id, delivery.timestamp
        halo_event, agent_id, source = delivery.event, delivery.agent_id, "webhook"

    occurred_at = timestamp if timestamp is not None else received_at
    if occurred_at.tzinfo is None:
        # Halo sends UTC timestamps without an offset.
        occurred_at = occurred_at.replace(tzinfo=UTC)
    event = LifecycleEvent(
        kind=kind,
        user_id=user_id,
        occurred_at=occurred_at,
        source=source,  # type: ignore[arg-type]
        delivery_id=delivery_id,
        halo_event=halo_event,
        agent_id=agent_id,
        user=user,
    )
    work_id = derive_work_id(user_id=user_id, kind=kind, user=user, delivery_id=delivery_id, timestamp=timestamp)
    return work_id, event
