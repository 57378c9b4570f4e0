"""The ticket routes, framework-free like ``lifecycle.ingress`` (the local host and Azure Functions call them).

- ``POST /api/halo/tickets``: a Halo webhook delivery whose entity is a ticket (full or small object under
  ``ticket``, or "event information only": ``object_id``), single or batched, or a runbook body
  ``{"ticket_id": 123, "fields": {...}?}``. The same authentication as ``/api/halo/events``; nothing is read
  from Halo here: each ticket becomes a queued "ticket" work item, and a worker reads the ticket. Webhook
  deliveries answer 202 with ``accepted``, ``duplicates`` and ``rejected`` (a bad item never fails another);
  a runbook body answers flat JSON (``request_id``, ``status``, ``message``) or 422.
- ``GET /api/halo/requests/{request_id}``: the same flat JSON, up to date.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from lifecycle.errors import InvalidEvent, Permanent
from lifecycle.halo.auth import authenticate
from lifecycle.halo.events import MAX_BATCH, parse_json
from lifecycle.halo.tickets import TicketDelivery, TicketRunbookBody, _whole
from lifecycle.ingress import Request, Response, _is_json_type, _json, answered, problem
from lifecycle.observability import log
from lifecycle.queue import OutgoingMessage, ReceivedMessage, message_for
from lifecycle.rejected import DEAD_LETTER_REASON, REJECTED_ITEM_PROPERTY
from lifecycle.requests.service import ticket_work_item
from lifecycle.requests.store import RequestRecord, request_id_for, update
from lifecycle.work import WorkItem, canonical_json

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime

REJECTED_TICKET_FORMAT = "halo-lifecycle/rejected-ticket@1"
RECEIVED_MESSAGE = "the ticket is queued to be read; GET /api/halo/requests/{id} tells how it goes"


def _first_error(exc: ValidationError, prefix: str) -> tuple[str, str]:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    field = f"{prefix}.{where}" if prefix and where else (prefix or where)
    return field, f"{field}: {first['msg']}"


class TicketRoutes:
    """The ticket routes for one runtime."""

    def __init__(self, runtime: Runtime, *, clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self._clock = clock

    def _admit(self, request: Request, method: str) -> None:
        """Method, size, credentials, media type: the request-level checks, in the events route's order."""
        if request.method.upper() != method:
            raise InvalidEvent(405, "Method not allowed", f"use {method}")
        limit = self.settings.max_body_bytes
        declared = request.header("content-length")
        if len(request.body) > limit or (declared is not None and declared.isdigit() and int(declared) > limit):
            raise InvalidEvent(413, "Body too large", f"the body is over the {limit}-byte limit; send smaller batches")
        authenticate(self.settings, {k.lower(): v for k, v in request.headers.items()}, request.body)
        if method == "POST" and not _is_json_type(request.header("content-type")):
            raise InvalidEvent(
                415,
                "Unsupported media type",
                f"send Content-Type: application/json (got {request.header('content-type')!r})",
            )

    # POST /api/halo/tickets --------------------------------------------------------------------------------
    def tickets(self, request: Request) -> Response:
        return answered(lambda: self._tickets(request))

    def _tickets(self, request: Request) -> Response:
        self._admit(request, "POST")
        payload = parse_json(request.body)
        now = datetime.fromtimestamp(self._clock(), UTC)
        if request.query.get("dry_run", "").lower() in ("1", "true", "yes", "on"):
            return self._preview(payload, now)
        if isinstance(payload, dict) and "ticket_id" in payload:
            return self._runbook(payload, now)
        if isinstance(payload, dict):
            items: list[Any] = [payload]
        elif isinstance(payload, list) and 0 < len(payload) <= MAX_BATCH:
            items = payload
        else:
            detail = (
                f"a batch holds 1 to {MAX_BATCH} deliveries"
                if isinstance(payload, list)
                else 'send a Halo ticket webhook delivery, an array of them, or {"ticket_id": N}'
            )
            raise InvalidEvent(422, "Invalid body", detail, field="$")
        accepted: list[tuple[WorkItem, int]] = []
        rejected: list[dict[str, Any]] = []
        for index, raw in enumerate(items):
            try:
                accepted.append(parse_delivery(raw, index if isinstance(payload, list) else None, now))
            except InvalidEvent as exc:
                ticket_id = _whole(raw.get("object_id")) if isinstance(raw, dict) else None
                rejected.append({"index": index, "ticket_id": ticket_id, "problem": exc.detail, "raw": raw})
        # Rejected elements travel too, to be kept as dead letters with their raw JSON (lifecycle dlq list).
        messages = [message_for(item) for item, _ in accepted]
        messages += [rejected_ticket_message(r, now) for r in rejected]
        fresh = self.runtime.queue.send(messages)[: len(accepted)] if messages else []
        for entry in rejected:
            del entry["raw"]
        answer: dict[str, list[dict[str, Any]]] = {"accepted": [], "duplicates": [], "rejected": rejected}
        for (item, ticket_id), is_new in zip(accepted, fresh, strict=True):
            entry = {"work_id": item.work_id, "ticket_id": ticket_id, "request_id": request_id_for(ticket_id)}
            answer["accepted" if is_new else "duplicates"].append(entry)
        log.info(
            "tickets: %d accepted, %d duplicate(s), %d rejected",
            len(answer["accepted"]), len(answer["duplicates"]), len(rejected),
        )  # fmt: skip
        return _json(202, answer)

    def _runbook(self, payload: dict[str, Any], now: datetime) -> Response:
        try:
            body = TicketRunbookBody.model_validate(payload)
        except ValidationError as exc:
            field, detail = _first_error(exc, "")
            raise InvalidEvent(422, "Invalid runbook body", detail, field=field) from None
        fields = {k: v for k, v in (body.fields or {}).items() if v not in (None, "")}
        # Every runbook call is a new look at the ticket (an approval may have happened since the last one).
        material = canonical_json({"ticket": body.ticket_id, "fields": fields, "at": now.isoformat()})
        work_id = "tr-" + hashlib.sha256(material.encode("utf-8")).hexdigest()[:40]
        item = ticket_work_item(body.ticket_id, work_id=work_id, now=now, source="runbook", fields=fields)
        request_id = request_id_for(body.ticket_id)
        record = update(
            self.runtime.requests,
            request_id,
            lambda r: (
                r or RequestRecord(request_id, body.ticket_id, "received", RECEIVED_MESSAGE.format(id=request_id))
            ),
        )
        self.runtime.queue.send([message_for(item)])
        assert record is not None
        return _json(202, record.answer())

    def _preview(self, payload: Any, now: datetime) -> Response:
        """``?dry_run=true``: read each ticket and answer the plan it would get; nothing is written or queued."""
        from lifecycle.requests.notes import password_channel, plan_note
        from lifecycle.requests.service import TicketRequests

        if isinstance(payload, dict) and "ticket_id" in payload:
            try:
                ticket_ids = [TicketRunbookBody.model_validate(payload).ticket_id]
            except ValidationError as exc:
                field, detail = _first_error(exc, "")
                raise InvalidEvent(422, "Invalid runbook body", detail, field=field) from None
            fields = {k: v for k, v in (payload.get("fields") or {}).items() if v not in (None, "")}
        else:
            items = payload if isinstance(payload, list) else [payload]
            ticket_ids = [parse_delivery(raw, None, now)[1] for raw in items]
            fields = {}
        settings = self.settings
        channel = password_channel(
            settings.password_delivery, settings.password_mail_fallback, settings.password_mail_sender
        )
        plans: list[dict[str, Any]] = []
        for ticket_id in ticket_ids:
            loop = TicketRequests(self.runtime, clock=self._clock, preview=True)
            try:
                loop.advance(ticket_id, fields)
            except Permanent as exc:
                raise InvalidEvent(422, "Cannot plan the ticket", str(exc)) from None
            request_id = request_id_for(ticket_id)
            if loop.previewed is None:
                plans.append({"request_id": request_id, "ticket_id": ticket_id, "plan": None})
                continue
            kind, request_plan, user_id = loop.previewed
            note = plan_note(
                request_id,
                ticket_id=ticket_id,
                type_name=kind.name,
                kind=kind.kind,
                person=f"Halo user {user_id or '(created on the first read)'}",
                phases=request_plan.phases,
                digest=request_plan.digest,
                approval=kind.approval,
                password_channel=channel,
            )
            plans.append(
                {
                    "request_id": request_id,
                    "ticket_id": ticket_id,
                    "type": kind.name,
                    "plan_digest": request_plan.digest,
                    "phases": [p.to_json() for p in request_plan.phases],
                    "note": note.text,
                }
            )
        return _json(200, {"dry_run": True, "plans": plans})

    # GET /api/halo/requests/{request_id} -------------------------------------------------------------------
    def request_status(self, request: Request, request_id: str) -> Response:
        return answered(lambda: self._request_status(request, request_id))

    def _request_status(self, request: Request, request_id: str) -> Response:
        self._admit(request, "GET")
        record = self.runtime.requests.get(request_id) if len(request_id) <= 64 else None
        if record is None:
            return problem(
                404, "Not found", f"no request {request_id!r} (request ids are ticket-<ticket id>)", slug="request"
            )
        return _json(200, record.answer())


def parse_delivery(raw: Any, index: int | None, now: datetime) -> tuple[WorkItem, int]:
    """One ticket webhook element as the "ticket" work item it asks for, or ``InvalidEvent`` saying why not."""
    prefix = f"[{index}]" if index is not None else ""
    if not isinstance(raw, dict):
        raise InvalidEvent(422, "Invalid delivery", f"{prefix or '$'}: each delivery must be a JSON object")
    try:
        delivery = TicketDelivery.model_validate(raw)
    except ValidationError as exc:
        field, detail = _first_error(exc, prefix)
        raise InvalidEvent(422, "Invalid delivery", detail, field=field) from None
    from_ticket = _whole((delivery.ticket or {}).get("id"))
    if delivery.object_id is not None and from_ticket not in (None, delivery.object_id):
        raise InvalidEvent(422, "Invalid delivery", f"{prefix}ticket.id differs from object_id")
    ticket_id = delivery.object_id or from_ticket
    if not isinstance(ticket_id, int) or ticket_id <= 0:
        raise InvalidEvent(422, "Invalid delivery", f"{prefix or '$'}: no ticket id (object_id or ticket.id)")
    if delivery.id:
        work_id = f"halo-{delivery.id}"
    else:
        material = canonical_json({"ticket": ticket_id, "event": delivery.event, "at": delivery.timestamp, "body": raw})
        work_id = "tw-" + hashlib.sha256(material.encode("utf-8")).hexdigest()[:40]
    item = ticket_work_item(
        ticket_id,
        work_id=work_id,
        now=now,
        source="webhook",
        delivery_id=delivery.id,
        halo_event=delivery.event,
        agent_id=delivery.agent_id,
    )
    return item, ticket_id


def rejected_ticket_message(rejected: dict[str, Any], received_at: datetime) -> OutgoingMessage:
    """The queue message that keeps a rejected ticket element until the worker dead-letters it."""
    body = {
        "format": REJECTED_TICKET_FORMAT,
        "problem": rejected["problem"],
        "index": rejected["index"],
        "received_at": received_at.isoformat(),
        "item": rejected["raw"],
    }
    digest = hashlib.sha256(canonical_json({"ticket_item": rejected["raw"]}).encode("utf-8")).hexdigest()
    ticket_id = rejected.get("ticket_id")
    return OutgoingMessage(
        # The same bad element sent again is a duplicate, not a second dead letter.
        message_id="rejected-ticket-" + digest[:40],
        session_id=f"-{ticket_id}" if isinstance(ticket_id, int) else "rejected",
        body=json.dumps(body, default=str).encode("utf-8"),
        properties={REJECTED_ITEM_PROPERTY: "1"},
    )


def redrive_ticket(
    runtime: Runtime, message: ReceivedMessage, body: dict[str, Any]
) -> tuple[Literal["completed", "dead_lettered"], str]:
    """A rejected ticket element: read it again (a replay after a fix); dead-lettered while it still fails."""
    queue = runtime.queue
    index = body.get("index")
    try:
        item, _ = parse_delivery(body.get("item"), index, datetime.fromisoformat(str(body["received_at"])))
    except (InvalidEvent, KeyError, ValueError) as exc:
        reason = exc.detail if isinstance(exc, InvalidEvent) else f"unreadable: {exc}"
        where = f"element {index} of a ticket webhook delivery" if index is not None else "a ticket webhook delivery"
        queue.dead_letter(message, DEAD_LETTER_REASON, f"{where}: {reason} (see docs/halo-setup.md, Tickets)")
        log.warning("kept a rejected ticket webhook element as a dead letter: %s", reason)
        return "dead_lettered", reason
    queue.send([message_for(item, replayed_from=message.message_id)])
    queue.complete(message)
    return "completed", f"enqueued {item.work_id}"
