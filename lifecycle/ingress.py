"""The HTTP ingress, independent of any web framework: Azure Functions and the local host both call it.

``POST /api/halo/events``: authenticate -> parse -> validate -> plan -> enqueue, answering 202 with the work ids
in milliseconds. Every rejection is ``application/problem+json`` (RFC 9457) with a reason a person can act on,
and nothing is enqueued for a rejected request: a batch is accepted whole or not at all.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lifecycle.errors import ConfigurationError, InvalidEvent, LifecycleError
from lifecycle.halo.auth import AuthResult, authenticate
from lifecycle.halo.events import (
    EVENT_KINDS,
    Accepted,
    ParsedBody,
    Rejected,
    body_timestamps,
    elements,
    kind_of,
    parse_items,
    parse_json,
)
from lifecycle.ingress_replay import ReplayMemory as _ReplayMemory
from lifecycle.mapping.planner import plan
from lifecycle.observability import log
from lifecycle.queue import message_for
from lifecycle.rejected import rejected_message
from lifecycle.state import AuditEntry
from lifecycle.work import EventKind, WorkItem

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime
    from lifecycle.state import HeldStatus

PROBLEM_JSON = "application/problem+json"
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Request:
    """What the ingress needs of an HTTP request. Header names are matched case-insensitively."""

    method: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


def problem(status: int, title: str, detail: str, *, slug: str | None = None, **extra: Any) -> Response:
    """An RFC 9457 problem response."""
    body = {
        "type": f"https://github.com/halo-lifecycle/halo-lifecycle/blob/main/docs/problems.md#{slug or status}",
        "title": title,
        "status": status,
        "detail": detail,
        **{k: v for k, v in extra.items() if v is not None},
    }
    headers = {"WWW-Authenticate": 'Basic realm="halo-lifecycle"'} if status == 401 else {}
    return Response(status, json.dumps(body).encode("utf-8"), PROBLEM_JSON, headers)


# What json.dumps(default=str) uses, built once instead of on every response.
_ENCODER = json.JSONEncoder(default=str)


def _json(status: int, body: Any) -> Response:
    return Response(status, _ENCODER.encode(body).encode("utf-8"))


def _is_true(request: Request, name: str) -> bool:
    return request.query.get(name, "").strip().lower() in _TRUE


def _query_kind(value: str | None, auth: AuthResult) -> EventKind | None:
    """The ``?event=`` kind, when the credentials allow the URL to decide it.

    A body signature proves the body, not the URL: with the signature alone, the query may name only the kind
    whose own secret verified the body (``LIFECYCLE_WEBHOOK_HMAC_SECRETS``); with the shared secret it may
    name none, or a captured "created" body could be posted again as a deletion.
    """
    if value is None:
        return None
    kind = kind_of(value, {})
    if kind is None:
        raise InvalidEvent(422, "Unknown event kind", f"?event= must be one of {', '.join(EVENT_KINDS)}", field="event")
    if auth.signed_only and auth.bound_kind is None:
        raise InvalidEvent(
            403,
            "Event kind not bound",
            "?event= is refused for a request authenticated by a shared signing secret alone: the signature "
            "covers the body, not the URL. Let the body name the event, or give each webhook its own secret "
            "(LIFECYCLE_WEBHOOK_HMAC_SECRETS) or Basic credentials",
            slug="event-not-bound",
            field="event",
        )
    if auth.signed_only and kind != auth.bound_kind:
        raise InvalidEvent(
            403,
            "Event kind not bound",
            f"?event={kind} is refused: the body was signed with the secret of {auth.bound_kind!r} events",
            slug="event-not-bound",
            field="event",
        )
    return kind


def _check_signed_freshness(payload: Any, now: datetime, window: float) -> None:
    """A body vouched for by its signature alone must be recent, or a leaked body could be replayed for ever."""
    for index, stamp in enumerate(body_timestamps(payload)):
        where = f"[{index}].timestamp" if isinstance(payload, list) else "timestamp"
        if stamp is None:
            raise InvalidEvent(
                401,
                "Signed body without a timestamp",
                f"{where}: a body authenticated by its signature alone must carry Halo's timestamp",
                slug="signed-timestamp",
                field=where,
            )
        if abs((now - stamp).total_seconds()) > window:
            raise InvalidEvent(
                401,
                "Signed body outside its time window",
                f"{where}: {stamp.isoformat()} is more than {window:.0f} s from the service's clock; a signed body "
                "is accepted only within LIFECYCLE_WEBHOOK_SIGNED_WINDOW_SECONDS of its timestamp",
                slug="signed-timestamp",
                field=where,
            )


def _is_json_type(content_type: str | None) -> bool:
    if content_type is None:
        return True  # Halo's custom integrations may omit it; the body decides (400 if it is not JSON)
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def answered(handle: Callable[[], Response]) -> Response:
    """``handle()``'s response, or the problem document for what it raised (every accepting route uses this)."""
    try:
        return handle()
    except InvalidEvent as exc:
        log.info("rejected a request: %s", exc.detail, extra={"status": exc.status})
        return problem(exc.status, exc.title, exc.detail, slug=exc.slug, field=exc.field)
    except ConfigurationError as exc:
        log.error("configuration error: %s", exc)
        return problem(
            503,
            "Service misconfigured",
            "the service's configuration is invalid; see its log",
            slug="misconfigured",
        )
    except LifecycleError as exc:
        log.error("could not accept: %s", exc)
        return problem(
            503, "Temporarily unavailable", "the request was not accepted; send it again later", slug="unavailable"
        )
    except Exception:
        log.exception("unexpected error in the ingress")
        return problem(500, "Internal error", "the request was not accepted; nothing was enqueued", slug="internal")


class Ingress:
    """Handles the ingress routes for one runtime (settings, mapping, queue, store)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings

    def events(self, request: Request) -> Response:
        """``POST /api/halo/events``."""
        return answered(lambda: self._events(request))

    def _events(self, request: Request) -> Response:
        settings = self.settings
        if request.method.upper() != "POST":
            return problem(405, "Method not allowed", "send events with POST", slug="method")
        declared = request.header("content-length")
        if len(request.body) > settings.max_body_bytes or (
            declared is not None and declared.strip().isdigit() and int(declared) > settings.max_body_bytes
        ):
            raise InvalidEvent(
                413,
                "Body too large",
                f"the body is over the {settings.max_body_bytes}-byte limit (LIFECYCLE_MAX_BODY_BYTES); "
                "send smaller batches",
            )
        auth = authenticate(settings, {k.lower(): v for k, v in request.headers.items()}, request.body)
        if not _is_json_type(request.header("content-type")):
            raise InvalidEvent(
                415,
                "Unsupported media type",
                f"send Content-Type: application/json (got {request.header('content-type')!r})",
            )
        payload = parse_json(request.body)
        now = datetime.now(UTC)
        kind_override = _query_kind(request.query.get("event"), auth)
        elements(payload)  # 422 for a body that is no delivery, batch or runbook body, before anything else
        if auth.signed_only:
            _check_signed_freshness(payload, now, settings.webhook_signed_window_seconds)
        parsed = parse_items(
            payload,
            kind_override=kind_override,
            bound_kind=auth.bound_kind if auth.signed_only else None,
            event_map=settings.halo_event_map,
            received_at=now,
            max_future_seconds=settings.webhook_max_future_seconds,
        )
        if parsed.runbook:
            # A runbook step (or the agent who ran it) reads the answer: a bad body is a 422 it can show.
            for outcome in parsed.items:
                if isinstance(outcome, Rejected):
                    raise InvalidEvent(outcome.status, "Invalid event", outcome.problem, field=outcome.field)
        return self.accept(parsed, auth, kind_override, now, request.body, dry_run=_is_true(request, "dry_run"))

    def accept(
        self,
        parsed: ParsedBody,
        auth: AuthResult,
        kind_override: EventKind | None,
        received_at: datetime,
        body: bytes,
        *,
        dry_run: bool,
    ) -> Response:
        """Plan and enqueue every accepted element, keep every rejected one as a dead letter, answer 202.

        Reusable by any route that authenticated a request and parsed it into outcomes per element.
        """
        runtime = self.runtime
        mapping = runtime.mapping
        accepted_items = [o for o in parsed.items if isinstance(o, Accepted)]
        rejected_items = [o for o in parsed.items if isinstance(o, Rejected)]
        items: list[WorkItem] = []
        for outcome in accepted_items:
            person = runtime.store.get_person(outcome.event.user_id)
            status = person.status if person is not None else "unknown"
            items.append(
                plan(outcome.event, mapping, work_id=outcome.work_id, context=runtime.plan_context, status=status)
            )
        rejected_view = [{"index": r.index, "user_id": r.user_id, "problem": r.problem} for r in rejected_items]

        if dry_run:
            # Planned as the worker will run it: an event with no field to route on follows the person's tie.
            from lifecycle import tenancy

            tied = [tenancy.plan_by_tie(runtime.store, mapping, item, runtime.plan_context) for item in items]
            return _json(
                200, {"dry_run": True, "plans": [self._plan_view(item) for item in tied], "rejected": rejected_view}
            )

        replays = _ReplayMemory(runtime, body, items, auth.bound_kind) if auth.signed_only else None
        seen = replays.claim() if replays is not None else set()
        try:
            # Positions, not work ids: two equal elements in one batch are one new item and one duplicate.
            fresh_items = [(index, item) for index, item in enumerate(items) if item.work_id not in seen]
            bound = auth.bound_kind if auth.signed_only else None
            messages = [message_for(item) for _, item in fresh_items] + (
                []
                if replays is not None and replays.body_seen
                else [
                    rejected_message(r, kind_override=kind_override, bound_kind=bound, received_at=received_at)
                    for r in rejected_items
                ]
            )
            fresh = runtime.queue.send(messages)[: len(fresh_items)] if messages else []
        except BaseException:
            if replays is not None:
                replays.release()
            raise
        if replays is not None:
            replays.finish()
        is_new = {index: new for (index, _), new in zip(fresh_items, fresh, strict=True)}
        accepted: list[dict[str, Any]] = []
        duplicates: list[dict[str, Any]] = []
        for position, (item, outcome) in enumerate(zip(items, accepted_items, strict=True)):
            entry: dict[str, Any] = {"work_id": item.work_id, "event": item.event.kind, "user_id": item.event.user_id}
            if outcome.notes:
                entry["ignored_fields"] = list(outcome.notes)
            new = is_new.get(position, False)
            (accepted if new else duplicates).append(entry)
            if new and outcome.notes:
                self._audit_ignored(item, outcome, received_at)
        log.info(
            "accepted %d event(s), %d duplicate(s), %d rejected", len(accepted), len(duplicates), len(rejected_view)
        )
        return _json(202, {"accepted": accepted, "duplicates": duplicates, "rejected": rejected_view})

    def _audit_ignored(self, item: WorkItem, outcome: Accepted, at: datetime) -> None:
        # The audit says which fields of the payload were not used, so nobody wonders why a value did not apply.
        self.runtime.store.append_audit(
            AuditEntry(
                at=at,
                work_id=item.work_id,
                user_id=item.event.user_id,
                step="ingress",
                action="read_payload",
                target="halo",
                outcome="skipped",
                requested_by={"source": item.event.source, "delivery_id": item.event.delivery_id},
                message="; ".join(outcome.notes),
            )
        )

    @staticmethod
    def _plan_view(item: WorkItem) -> dict[str, Any]:
        view = item.model_dump(mode="json")
        if item.lifecycle == "fetch":
            view["note"] = "the user's fields are fetched from Halo when the work runs; steps are planned then"
        return view

    def manage_held(self, request: Request, held_id: str | None = None, decision: str | None = None) -> Response:
        """The mass-change guard's operator routes, behind their own bearer token (``LIFECYCLE_ADMIN_TOKEN``).

        ``GET /api/manage/held[?status=held|approved|rejected|all]`` lists held work;
        ``POST /api/manage/held/{id}/approve`` releases an item, ``.../reject`` drops it (both audited; an
        optional JSON body ``{"by": "name", "note": "why"}`` is recorded). The prefix is ``manage``, not
        ``admin``: Azure Functions reserves routes that start with ``admin`` for its host.
        """
        try:
            return self._manage_held(request, held_id, decision)
        except InvalidEvent as exc:
            return problem(exc.status, exc.title, exc.detail, field=exc.field)
        except Exception:
            log.exception("unexpected error in the operator routes")
            return problem(500, "Internal error", "the request failed; nothing was changed", slug="internal")

    def _manage_held(self, request: Request, held_id: str | None, decision: str | None) -> Response:
        from lifecycle.guard import HeldConflict, HeldNotFound, MassChangeGuard

        token = self.settings.admin_token.get_secret_value()
        if not token:
            return problem(
                404, "Not found", "the operator routes are off: set LIFECYCLE_ADMIN_TOKEN to use them", slug="manage"
            )
        given = request.header("authorization") or ""
        scheme, _, credential = given.partition(" ")
        # Constant-time over bytes, and always run, so timing tells nothing about the token.
        token_ok = hmac.compare_digest(credential.strip().encode("utf-8", "replace"), token.encode("utf-8"))
        if scheme.lower() != "bearer" or not token_ok:
            response = problem(401, "Unauthorized", "send Authorization: Bearer <the operator token>")
            return Response(
                response.status, response.body, response.content_type, {"WWW-Authenticate": 'Bearer realm="manage"'}
            )
        runtime = self.runtime
        guard = MassChangeGuard(self.settings, runtime.store)
        method = request.method.upper()
        if held_id is None:
            if method != "GET":
                return problem(405, "Method not allowed", "list held work with GET", slug="method")
            wanted = request.query.get("status", "held")
            statuses: dict[str, HeldStatus | None] = {"held": "held", "approved": "approved", "rejected": "rejected"}
            if wanted not in (*statuses, "all"):
                raise InvalidEvent(422, "Invalid query", "status is held, approved, rejected or all", field="status")
            rows = runtime.store.held(status=statuses.get(wanted))
            return _json(200, {"guard": guard.status(), "held": [h.to_json() for h in rows]})
        if method != "POST":
            return problem(405, "Method not allowed", "approve or reject with POST", slug="method")
        if decision not in ("approve", "reject"):
            return problem(404, "Not found", "use .../held/{id}/approve or .../held/{id}/reject", slug="route")
        if len(request.body) > self.settings.max_body_bytes:
            raise InvalidEvent(413, "Body too large", f"the body is over the {self.settings.max_body_bytes}-byte limit")
        details = parse_json(request.body) if request.body.strip() else {}
        if not isinstance(details, dict) or not all(
            isinstance(details.get(k, ""), str) and len(details.get(k, "")) <= 500 for k in ("by", "note")
        ):
            raise InvalidEvent(422, "Invalid body", 'send {"by": "name", "note": "why"} (strings) or nothing')
        by = details.get("by") or "operator-api"
        note = details.get("note") or ""
        try:
            if decision == "approve":
                item = guard.approve(held_id, runtime.queue, by=by, source="manage-api", note=note)
            else:
                item = guard.reject(held_id, by=by, source="manage-api", note=note)
        except HeldNotFound as exc:
            return problem(404, "Not found", str(exc), slug="held")
        except HeldConflict as exc:
            return problem(409, "Conflict", str(exc), slug="held")
        return _json(200, {"held": item.to_json()})

    def health(self) -> Response:
        """``GET /api/health``: 200 when the queue and the store answer, 503 otherwise."""
        checks: dict[str, bool] = {}
        for name in ("queue", "store"):
            try:
                checks[name] = bool(getattr(self.runtime, name).health())
            except Exception:
                log.exception("health check of %s failed", name)
                checks[name] = False
        try:
            _ = self.runtime.mapping
            checks["mapping"] = True
        except Exception:
            checks["mapping"] = False
        # Set-up problems the worker ran into (a mapping file missing, storage refusing the identity).
        from lifecycle import readiness

        reasons = readiness.problems()
        ok = all(checks.values()) and not reasons
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "checks": checks}
        if reasons:
            body["reasons"] = reasons
        return _json(200 if ok else 503, body)
