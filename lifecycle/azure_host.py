"""Adapters between Azure Functions' binding types and the framework-neutral ingress and worker.

Only this module and ``function_app.py`` know about ``azure.functions``. Importing it is cheap: the runtime
(settings, mapping, Service Bus client, Table client, AD connections) is built on the first invocation that
needs it, once per worker process, and shared by the invocations that run on the worker's threads.

Settlement of the Service Bus trigger: the host completes a message when the function returns and abandons
it when the function raises. The worker settles through the queue port; ``ServiceBusQueue`` turns that into a
decision (back-off copies and parked dead letters are written before the function returns), and
``handle_work_message`` raises ``AbandonMessage`` when the decision is to give the message back.

Set-up problems wait: when the runtime cannot even be built (an app setting that is an unresolved Key Vault
reference, any invalid setting), the message is rescheduled with a long delay through a queue built from the
host's own Service Bus settings, the cause is logged at error level and ``GET /api/health`` answers 503 with
it; nothing is abandoned, so no delivery is burnt.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import azure.functions as func

from lifecycle import readiness
from lifecycle.errors import ConfigurationError, LifecycleError

if TYPE_CHECKING:
    from lifecycle.ingress import Response
    from lifecycle.queue.servicebus import ServiceBusQueue
    from lifecycle.runtime import Runtime
    from lifecycle.worker import Worker

_lock = threading.Lock()
_runtime_obj: Runtime | None = None
_worker_obj: Worker | None = None
_setup_queue_factory: Callable[[], ServiceBusQueue] | None = None


class AbandonMessage(LifecycleError):
    """Raised by the worker function so that the Functions host abandons the message (redelivered at once)."""


def use_runtime(runtime: Runtime | None, *, worker: Worker | None = None) -> None:
    """Run the functions on ``runtime`` (tests, or a host that builds its own) and, when given, ``worker`` on
    it; None: build from settings."""
    global _runtime_obj, _worker_obj  # noqa: PLW0603 - the per-process runtime of the Functions worker
    with _lock:
        previous, _worker_obj = _worker_obj, worker
        _runtime_obj = runtime
    if previous is not None and previous is not worker:
        previous.close()


def use_setup_queue(factory: Callable[[], ServiceBusQueue] | None) -> None:
    """The queue that reschedules messages while the runtime cannot be built (tests); None: from the host's
    Service Bus settings."""
    global _setup_queue_factory  # noqa: PLW0603
    _setup_queue_factory = factory


class SetUpError(LifecycleError):
    """The runtime cannot be built from the app settings; the message says which and why."""


def _setup_reason(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        location = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        return f"LIFECYCLE_{location.upper()}: {message}" if location else message
    return str(exc)


def _runtime() -> Runtime:
    global _runtime_obj  # noqa: PLW0603
    with _lock:
        if _runtime_obj is None:
            from lifecycle.observability import configure_logging, configure_telemetry
            from lifecycle.runtime import Runtime
            from lifecycle.settings import get_settings

            try:
                get_settings.cache_clear()  # a Key Vault reference may have been resolved since
                runtime = Runtime()
            except Exception as exc:
                reason = _setup_reason(exc)
                readiness.report("settings", reason)
                raise SetUpError(f"the app settings are not usable: {reason}") from exc
            readiness.clear("settings")
            configure_logging(runtime.settings.log_level, runtime.settings.secret_values())
            configure_telemetry()
            _runtime_obj = runtime
        return _runtime_obj


def _setup_queue() -> ServiceBusQueue:
    """A queue built from the host's own Service Bus settings alone (they hold no secret to resolve)."""
    if _setup_queue_factory is not None:
        return _setup_queue_factory()
    from pydantic import SecretStr

    from lifecycle.queue.servicebus import ServiceBusQueue
    from lifecycle.settings import Settings

    env = os.environ
    settings = Settings.model_construct(
        servicebus_namespace=env.get("LIFECYCLE_SERVICEBUS_NAMESPACE")
        or env.get("ServiceBusConnection__fullyQualifiedNamespace", ""),
        servicebus_queue=env.get("LIFECYCLE_SERVICEBUS_QUEUE", "lifecycle-work"),
        servicebus_connection_string=SecretStr(env.get("LIFECYCLE_SERVICEBUS_CONNECTION_STRING", "")),
        table_endpoint="",
        table_connection_string=SecretStr(""),
    )
    return ServiceBusQueue.from_settings(settings)


def _wait_for_set_up(msg: func.ServiceBusMessage, error: SetUpError) -> None:
    """Reschedule a message the runtime cannot process yet (no delivery burnt), and say why at error level."""
    from lifecycle.observability import log
    from lifecycle.settings import Settings

    delay = float(Settings.model_fields["setup_retry_seconds"].default)
    queue = _setup_queue()
    try:
        received = _received(queue, msg)
        log.error("%s; message %s waits %.0f s (nothing is lost)", error, received.message_id, delay)
        queue.retry_later(received, delay, f"set-up problem: {error}")
        if queue.host_settlement(received) != "complete":
            raise AbandonMessage(f"message {received.message_id!r} could not be rescheduled: {error}")
    finally:
        queue.close()


def _received(queue: ServiceBusQueue, msg: func.ServiceBusMessage) -> Any:
    return queue.from_host(
        message_id=msg.message_id or "",
        session_id=msg.session_id or "",
        body=msg.get_body(),
        application_properties=dict(msg.application_properties or {}),
        delivery_count=int(msg.delivery_count or 1),
        enqueued_at=msg.enqueued_time_utc,
        lock_token=msg.lock_token or _random_token(),
        sequence_number=int(msg.sequence_number or 0),
    )


def _worker() -> Worker:
    global _worker_obj  # noqa: PLW0603
    runtime = _runtime()
    with _lock:
        if _worker_obj is None:
            from lifecycle.worker import Worker

            _worker_obj = Worker(runtime)
        return _worker_obj


def _to_func(response: Response) -> func.HttpResponse:
    return func.HttpResponse(
        body=response.body, status_code=response.status, headers=dict(response.headers), mimetype=response.content_type
    )


def handle_events(req: func.HttpRequest) -> func.HttpResponse:
    """``POST /api/halo/events``: the ingress, then the accepted count for telemetry."""
    from lifecycle.ingress import Ingress, Request
    from lifecycle.observability import record_accepted

    request = Request(req.method, req.get_body(), dict(req.headers), dict(req.params))
    response = Ingress(_runtime()).events(request)
    if response.status == 202:
        record_accepted(len(response.json().get("accepted", [])))
    return _to_func(response)


def handle_tickets(req: func.HttpRequest) -> func.HttpResponse:
    """``POST /api/halo/tickets``: ticket webhooks and runbook bodies (lifecycle.requests)."""
    from lifecycle.ingress import Request
    from lifecycle.requests.http import TicketRoutes

    request = Request(req.method, req.get_body(), dict(req.headers), dict(req.params))
    return _to_func(TicketRoutes(_runtime()).tickets(request))


def handle_request_status(req: func.HttpRequest) -> func.HttpResponse:
    """``GET /api/halo/requests/{request_id}``: where a ticket request stands."""
    from lifecycle.ingress import Request
    from lifecycle.requests.http import TicketRoutes

    request = Request(req.method, b"", dict(req.headers), dict(req.params))
    return _to_func(TicketRoutes(_runtime()).request_status(request, (req.route_params or {}).get("request_id", "")))


def handle_ticket_poll(timer: Any) -> None:
    """The ticket requests' safety net: re-read open requests' tickets and post notes still owed."""
    from lifecycle.requests.service import TicketRequests

    runtime = _runtime()
    if runtime.mapping.requests is not None:
        TicketRequests(runtime).poll()


def handle_manage_held(req: func.HttpRequest) -> func.HttpResponse:
    """``/api/manage/held[/{held_id}/{decision}]``: the mass-change guard's operator routes."""
    from lifecycle.ingress import Ingress, Request

    request = Request(req.method, req.get_body(), dict(req.headers), dict(req.params))
    params = req.route_params or {}
    return _to_func(Ingress(_runtime()).manage_held(request, params.get("held_id"), params.get("decision")))


_console_obj: Any = None


def handle_console(req: func.HttpRequest) -> func.HttpResponse:
    """``/api/console/{*path}``: the operator console (it signs people in itself; see lifecycle/console)."""
    global _console_obj  # noqa: PLW0603 - one console (its signing key and links) per worker process
    from lifecycle.console.app import Console
    from lifecycle.ingress import Request

    runtime = _runtime()
    with _lock:
        if _console_obj is None or _console_obj.runtime is not runtime:
            _console_obj = Console(runtime)
        console = _console_obj
    request = Request(req.method, req.get_body(), dict(req.headers), dict(req.params))
    return _to_func(console.handle(request, (req.route_params or {}).get("path") or ""))


def handle_health(req: func.HttpRequest) -> func.HttpResponse:
    """``GET /api/health``: 200 when the queue, the store and the mapping answer; 503 with the reason when not
    (the app settings among them)."""
    from lifecycle.ingress import Ingress

    try:
        runtime = _runtime()
    except SetUpError as exc:
        body = {"status": "unavailable", "checks": {"settings": False}, "reasons": {"settings": str(exc)}}
        return func.HttpResponse(json.dumps(body), status_code=503, mimetype="application/json")
    return _to_func(Ingress(runtime).health())


def handle_work_message(msg: func.ServiceBusMessage) -> None:
    """Run the work item of one Service Bus message; raise so that the host abandons it when the worker says so.

    Raises:
        ConfigurationError: The queue backend is not Service Bus (the trigger would settle nothing).
        AbandonMessage: The worker gave the message back (an unexpected error): the host redelivers it.
    """
    from lifecycle.observability import log, log_context, record_outcome
    from lifecycle.queue.servicebus import ServiceBusQueue

    try:
        runtime = _runtime()
    except SetUpError as exc:
        _wait_for_set_up(msg, exc)
        return
    queue = runtime.queue
    if not isinstance(queue, ServiceBusQueue):
        raise ConfigurationError(
            "the Service Bus trigger needs LIFECYCLE_QUEUE_BACKEND=servicebus "
            f"(it is {runtime.settings.queue_backend!r})"
        )
    received = _received(queue, msg)
    with log_context(
        message_id=received.message_id, user_id=received.session_id, delivery_count=received.delivery_count
    ):
        try:
            result = _worker().process_message(received)
        finally:
            settlement = queue.host_settlement(received)
        record_outcome(result.outcome)
        if settlement != "complete":
            log.warning("abandoning the message so that Service Bus redelivers it: %s", result.reason or result.outcome)
            raise AbandonMessage(
                f"message {received.message_id!r} abandoned ({result.reason or result.outcome}); "
                f"delivery {received.delivery_count}"
            )


def handle_reconcile(timer: Any) -> None:
    """The reconciliation timer: ``lifecycle.reconcile.run_reconcile`` once it exists (the Halo API issue)."""
    from lifecycle.observability import log

    runtime = _runtime()
    try:
        from lifecycle.reconcile import run_reconcile  # type: ignore[import-not-found, unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name != "lifecycle.reconcile":
            raise
        log.warning("reconciliation is not available in this version (no lifecycle.reconcile); nothing done")
        return
    if getattr(timer, "past_due", False):
        log.info("the reconciliation timer is past due; running now")
    from lifecycle import deadline

    # Halo's rate-limited fetches wait no longer than the invocation's deadline (lifecycle.halo.client).
    with deadline.invocation():
        run_reconcile(runtime)


def handle_halo_poll(timer: Any) -> None:
    """The delta-poll timer: users changed in Halo since the last poll, through the planner and the queue."""
    from lifecycle.observability import log
    from lifecycle.poll import run_poll

    runtime = _runtime()
    if not runtime.settings.halo_api_url:
        log.info("the delta poll needs the Halo API (LIFECYCLE_HALO_API_URL); nothing done")
        return
    run_poll(runtime)


def handle_release_due(timer: Any) -> None:
    """The staged-work timer: release due staged and future-dated work within the invocation's deadline."""
    from lifecycle.observability import log

    if getattr(timer, "past_due", False):
        log.info("the staged-work timer is past due; releasing now")
    released = _worker().release_due()
    log.info("released %d due staged work item(s)", released)


def _random_token() -> str:
    # uuid is imported here, not at the top: with platform it costs `import function_app` (what the Functions
    # host runs to index the app) several milliseconds, and only a Service Bus message without a lock token
    # needs it.
    import uuid

    return uuid.uuid4().hex
