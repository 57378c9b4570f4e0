"""Turn a request body (a webhook delivery, a batch of them, or a runbook body) into lifecycle events.

Each element gets its own outcome: accepted (with the fields that could not be read and were treated as
absent), or rejected with a reason. Only what decides the lifecycle rejects an element: the user id, the
event and ``inactive``. Halo renders an unset runbook variable as ``""``, so ``""`` is an absent value;
event names match after trimming, in any case; ids given as strings are read. A field whose value cannot
be read as its type (Halo's "display value" toggle sends ``"Main"`` for ``site_id``) is dropped for that
element, and the ingress audits it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from lifecycle.errors import InvalidEvent
from lifecycle.halo.models import HaloUser, RunbookBody, WebhookDelivery
from lifecycle.work import EventKind, LifecycleEvent, derive_work_id

EVENT_KINDS: tuple[EventKind, ...] = ("created", "updated", "deleted")
MAX_BATCH = 500
# Keys that make an object a Halo webhook delivery (Halo's payloads all carry some of them, halo-api.md).
_DELIVERY_KEYS = frozenset({"id", "event", "object_id", "webhook_id", "notification_id", "user", "timestamp"})
# Where a value that cannot be read rejects the element instead of being treated as absent.
_DECISIVE = (("user_id",), ("object_id",), ("event",), ("user", "id"), ("user", "inactive"))
# User fields that are not text: "" there is absent even in a webhook delivery (where "" in a text field is
# Halo's own empty value, which the mapping's clear_when_empty may act on).
_TYPED_USER_FIELDS = frozenset({"id", "site_id", "client_id", "inactive", "isserviceaccount", "customfields"})


@dataclass(frozen=True)
class Accepted:
    """An element that became an event. ``notes`` name the fields treated as absent, and why."""

    index: int
    work_id: str
    event: LifecycleEvent
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rejected:
    """An element that could not become an event, with the raw element kept for a dead letter."""

    index: int
    user_id: int | None
    problem: str
    field: str | None
    raw: Any
    status: int = 422


@dataclass(frozen=True)
class ParsedBody:
    """The outcome of every element of a body. ``runbook`` bodies are answered all-or-nothing (422)."""

    runbook: bool
    items: list[Accepted | Rejected] = field(default_factory=list)


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


def kind_of(name: Any, event_map: Mapping[str, EventKind]) -> EventKind | None:
    """The event kind a name stands for: a kind itself or a mapped Halo event name, trimmed, any case."""
    if not isinstance(name, str) or not name.strip():
        return None
    lowered = " ".join(name.split()).lower()
    if lowered in EVENT_KINDS:
        return lowered
    return event_map.get(lowered)


def elements(payload: Any) -> tuple[list[Any], bool]:
    """The elements of a body and whether it was an array, or 422 for a body that is none of ours."""
    if isinstance(payload, list):
        if not payload:
            raise InvalidEvent(422, "Empty batch", "the batch array holds no event", field="$")
        if len(payload) > MAX_BATCH:
            raise InvalidEvent(422, "Batch too large", f"a batch holds at most {MAX_BATCH} events", field="$")
        return payload, True
    if isinstance(payload, dict):
        if "user_id" in payload or _DELIVERY_KEYS & payload.keys():
            return [payload], False
        raise InvalidEvent(
            422,
            "Invalid event",
            "the body is neither a Halo webhook delivery (id, event, object_id, user...) nor a runbook body "
            '({"event": ..., "user_id": ...})',
            field="$",
        )
    raise InvalidEvent(422, "Invalid event", "the body must be a JSON object or an array of objects", field="$")


def parse_items(
    payload: Any,
    *,
    kind_override: EventKind | None,
    event_map: Mapping[str, EventKind],
    received_at: datetime | None = None,
    bound_kind: EventKind | None = None,
    max_future_seconds: float | None = None,
) -> ParsedBody:
    """Parse a decoded body into one outcome per element, in body order.

    Args:
        payload: the decoded JSON body: an object or a non-empty array of objects.
        kind_override: the ``?event=`` kind (already checked as allowed by the ingress); wins over the body.
        event_map: Halo event display names (lower-case) to event kinds.
        received_at: when the request arrived; the event time when the sender gave none.
        bound_kind: the kind the verifying secret belongs to: an element of another kind is rejected.
        max_future_seconds: an element timestamped further ahead than this is rejected (None: no limit).
    """
    received_at = received_at or datetime.now(UTC)
    items, batched = elements(payload)
    runbook = not batched and isinstance(payload, dict) and "user_id" in payload
    parsed = ParsedBody(runbook=runbook)
    for index, raw in enumerate(items):
        prefix = f"[{index}]" if batched else ""
        try:
            parsed.items.append(
                _parse_one(index, raw, prefix, kind_override, bound_kind, event_map, received_at, max_future_seconds)
            )
        except InvalidEvent as exc:
            parsed.items.append(Rejected(index, _user_id_of(raw), exc.detail, exc.field, raw, exc.status))
        except RecursionError:
            # Validation recurses deeper per level than the JSON decoder: no Halo payload nests like this.
            problem = f"{prefix or '$'}: the element nests arrays or objects too deeply"
            parsed.items.append(Rejected(index, _user_id_of(raw), problem, prefix or "$", raw))
    return parsed


def parse_events(
    payload: Any,
    *,
    kind_override: str | None,
    event_map: Mapping[str, EventKind],
    received_at: datetime | None = None,
) -> list[tuple[str, LifecycleEvent]]:
    """All-or-nothing parse: ``(work_id, event)`` pairs, or ``InvalidEvent`` for the first bad element."""
    if kind_override is not None and kind_override not in EVENT_KINDS:
        raise InvalidEvent(422, "Unknown event kind", f"?event= must be one of {', '.join(EVENT_KINDS)}", field="event")
    body = parse_items(payload, kind_override=kind_override, event_map=event_map, received_at=received_at)
    out: list[tuple[str, LifecycleEvent]] = []
    for item in body.items:
        if isinstance(item, Rejected):
            raise InvalidEvent(item.status, "Invalid event", item.problem, field=item.field)
        out.append((item.work_id, item.event))
    return out


def _user_id_of(raw: Any) -> int | None:
    """The user id an element names, for the rejection report, when it can be read at all."""
    if not isinstance(raw, dict):
        return None
    user = raw.get("user")
    for value in (raw.get("user_id"), raw.get("object_id"), user.get("id") if isinstance(user, dict) else None):
        try:
            number = int(str(value).strip())
        except (TypeError, ValueError):
            continue
        if 0 < number <= 2**31 - 1:
            return number
    return None


def _blank_to_absent(raw: dict[str, Any], *, runbook: bool) -> dict[str, Any]:
    cleaned = {k: v for k, v in raw.items() if not (isinstance(v, str) and not v.strip())}
    user = cleaned.get("user")
    if isinstance(user, dict):
        cleaned["user"] = {
            k: v
            for k, v in user.items()
            if not (isinstance(v, str) and not v.strip() and (runbook or k in _TYPED_USER_FIELDS))
        }
    if isinstance(cleaned.get("id"), int) and not isinstance(cleaned.get("id"), bool):
        cleaned["id"] = str(cleaned["id"])
    return cleaned


def _path(prefix: str, loc: tuple[Any, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _drop(data: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    """Remove the value at ``loc`` (a pydantic error location); False when it is not there."""
    parent: Any = data
    for part in loc[:-1]:
        try:
            parent = parent[part]
        except (KeyError, IndexError, TypeError):
            return False
    last = loc[-1]
    if isinstance(parent, dict) and last in parent:
        del parent[last]
        return True
    if isinstance(parent, list) and isinstance(last, int) and 0 <= last < len(parent):
        del parent[last]
        return True
    return False


def _validate(model: type[BaseModel], raw: dict[str, Any], prefix: str, notes: list[str]) -> Any:
    """Validate, treating each unreadable field that decides nothing as absent (and noting it)."""
    try:
        return model.model_validate(raw)  # the common case: nothing to drop, so nothing to copy
    except ValidationError:
        pass
    data = copy.deepcopy(raw)  # fields are dropped from a copy: ``raw`` is kept as received
    for _ in range(100):
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
        for error in errors:
            loc = tuple(part for part in error["loc"] if isinstance(part, (str, int)))
            if any(loc[: len(d)] == d for d in _DECISIVE) or not loc:
                where = _path(prefix, loc)
                raise InvalidEvent(422, "Invalid event", f"{where}: {error['msg']}", field=where) from None
        # Deepest and last first, so removing one list element does not shift another's index.
        for error in sorted(errors, key=lambda e: [str(p).zfill(9) for p in e["loc"]], reverse=True):
            loc = tuple(part for part in error["loc"] if isinstance(part, (str, int)))
            where = _path(prefix, loc)
            if not _drop(data, loc):
                raise InvalidEvent(422, "Invalid event", f"{where}: {error['msg']}", field=where) from None
            notes.append(f"{where}: {error['msg']} (got {error.get('input')!r}); treated as absent")
    raise InvalidEvent(422, "Invalid event", f"{prefix or '$'}: too many unreadable fields", field=prefix or "$")


def _parse_one(
    index: int,
    raw: Any,
    prefix: str,
    kind_override: EventKind | None,
    bound_kind: EventKind | None,
    event_map: Mapping[str, EventKind],
    received_at: datetime,
    max_future_seconds: float | None,
) -> Accepted:
    def at(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    if not isinstance(raw, dict):
        raise InvalidEvent(422, "Invalid event", f"{prefix or '$'}: each event must be a JSON object", field=prefix)
    runbook = "user_id" in raw
    cleaned = _blank_to_absent(raw, runbook=runbook)
    notes: list[str] = []
    body_kind = kind_of(cleaned.get("event"), event_map)
    if cleaned.get("event") is not None and body_kind is None and kind_override is None and bound_kind is None:
        name = cleaned.get("event")
        raise InvalidEvent(
            422,
            "Unknown event",
            f"{at('event')}: event {name!r} is not created/updated/deleted nor mapped to one; add it to "
            "LIFECYCLE_HALO_EVENT_MAP or call the URL with ?event=",
            field=at("event"),
        )
    kind = kind_override or body_kind or bound_kind
    if bound_kind is not None and kind != bound_kind:
        raise InvalidEvent(
            403,
            "Event kind not bound",
            f"{at('event')}: the body was signed with the secret of {bound_kind!r} events, so it cannot be "
            f"a {kind!r} event",
            field=at("event"),
        )
    if kind is None:
        raise InvalidEvent(
            422,
            "Unknown event",
            f"{at('event')}: no event name; send one or call the URL with ?event=created|updated|deleted",
            field=at("event"),
        )

    if runbook:
        body = cast(RunbookBody, _validate(RunbookBody, {**cleaned, "event": kind}, prefix, notes))
        user = _user_dict(body.user)
        if body.user is not None and body.user.id != body.user_id:
            raise InvalidEvent(
                422, "Invalid event", f"{at('user.id')} differs from {at('user_id')}", field=at("user.id")
            )
        user_id, delivery_id, timestamp, halo_event, agent_id = body.user_id, None, body.timestamp, None, body.agent_id
        source = "runbook"
    else:
        delivery = cast(WebhookDelivery, _validate(WebhookDelivery, cleaned, prefix, notes))
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
    if max_future_seconds is not None and (occurred_at - received_at).total_seconds() > max_future_seconds:
        # A future time would make every later event of this person look stale (leavers included).
        raise InvalidEvent(
            422,
            "Timestamp in the future",
            f"{at('timestamp')}: {occurred_at.isoformat()} is more than {max_future_seconds:.0f} s ahead of "
            "the service's clock; check the sender's clock",
            field=at("timestamp"),
        )
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
    return Accepted(index, work_id, event, tuple(notes))


def _user_dict(user: HaloUser | None) -> dict[str, Any] | None:
    # Only the fields the sender gave (exclude_unset): a field absent here must never clear an attribute.
    return None if user is None else user.model_dump(mode="json", exclude_unset=True)


def body_timestamps(payload: Any) -> list[datetime | None]:
    """The timestamp of each element of a body (None where absent or unreadable), as UTC."""
    items = payload if isinstance(payload, list) else [payload]
    found: list[datetime | None] = []
    for raw in items:
        value = raw.get("timestamp") if isinstance(raw, dict) else None
        try:
            stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00")) if isinstance(value, str) else None
        except ValueError:
            stamp = None
        found.append(stamp.replace(tzinfo=UTC) if stamp is not None and stamp.tzinfo is None else stamp)
    return found
