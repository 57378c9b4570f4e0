"""The HTTP ingress, independent of any web framework: Azure Functions and the local host both call it.

``POST /api/halo/events``: authenticate -> parse -> validate -> plan -> enqueue, answering 202 with the work ids
in milliseconds. Every rejection is ``application/problem+json`` (RFC 9457) with a reason a person can act on,
and nothing is enqueued for a rejected request: a batch is accepted whole or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lifecycle.errors import ConfigurationError, InvalidEvent, LifecycleError
from lifecycle.halo.auth import authenticate
from lifecycle.halo.events import parse_events, parse_json
from lifecycle.mapping.planner import plan
from lifecycle.observability import log
from lifecycle.queue import OutgoingMessage
from lifecycle.work import WorkItem

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime

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


def _json(status: int, body: Any) -> Response:
    return Response(status, json.dumps(body, default=str).encode("utf-8"))


def _is_json_type(content_type: str | None) -> bool:
    if content_type is None:
        return True  # Halo's custom integrations may omit it; the body decides (400 if it is not JSON)
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class Ingress:
    """Handles the ingress routes for one runtime (settings, mapping, queue, store)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings

    def events(self, request: Request) -> Response:
        """``POST /api/halo/events``."""
        try:
            return self._events(request)
        except InvalidEvent as exc:
            log.info("rejected a request: %s", exc.detail, extra={"status": exc.status})
            return problem(exc.status, exc.title, exc.detail, field=exc.field)
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

    def _events(self, request: Request) -> Response:
        settings = self.settings
        if request.method.upper() != "POST":
            return problem(405, "Method not allowed", "send events with POST", slug="method")
        declared = request.header("content-length")
        if len(request.body) > settings.max_body_bytes or (
            declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes
        ):
            raise InvalidEvent(
                413,
                "Body too large",
                f"the body is over the {settings.max_body_bytes}-byte limit; send smaller batches",
            )
        authenticate(settings, {k.lower(): v for k, v in request.headers.items()}, request.body)
        if not _is_json_type(request.header("content-type")):
            raise InvalidEvent(
                415,
                "Unsupported media type",
                f"send Content-Type: application/json (got {request.header('content-type')!r})",
            )
        payload = parse_json(request.body)
        kind_override = request.query.get("event")
        events = parse_events(
            payload, kind_override=kind_override, event_map=settings.halo_event_map, received_at=datetime.now(UTC)
        )
        runtime = self.runtime
        mapping = runtime.mapping
        items: list[WorkItem] = []
        for work_id, event in events:
            person = runtime.store.get_person(event.user_id)
            status = person.status if person is not None else "unknown"
            items.append(plan(event, mapping, work_id=work_id, context=runtime.plan_context, status=status))

        if request.query.get("dry_run", "").lower() in _TRUE:
            return _json(200, {"dry_run": True, "plans": [self._plan_view(item) for item in items]})

        messages = [
            OutgoingMessage(
                message_id=item.work_id,
                session_id=str(item.event.user_id),
                body=item.to_bytes(),
                properties={
                    "event": item.event.kind,
                    "lifecycle": item.lifecycle,
                    "schema_version": str(item.schema_version),
                },
            )
            for item in items
        ]
        fresh = runtime.queue.send(messages)
        accepted: list[dict[str, Any]] = []
        duplicates: list[dict[str, Any]] = []
        for item, is_new in zip(items, fresh, strict=True):
            entry = {"work_id": item.work_id, "event": item.event.kind, "user_id": item.event.user_id}
            (accepted if is_new else duplicates).append(entry)
        log.info("accepted %d event(s), %d duplicate(s)", len(accepted), len(duplicates))
        return _json(202, {"accepted": accepted, "duplicates": duplicates})

    @staticmethod
    def _plan_view(item: WorkItem) -> dict[str, Any]:
        view = item.model_dump(mode="json")
        if item.lifecycle == "fetch":
            view["note"] = "the user's fields are fetched from Halo when the work runs; steps are planned then"
        return view

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
        ok = all(checks.values())
        return _json(200 if ok else 503, {"status": "ok" if ok else "unavailable", "checks": checks})
