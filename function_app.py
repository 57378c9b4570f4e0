"""Azure Functions entry points (Python v2 model). Thin: bindings only, each body one call into lifecycle/.

Importing this module builds no client and imports no heavy SDK (azure-servicebus, azure-data-tables, ldap3,
msgraph): the runtime is built on the first invocation. An exception here would show in Azure as "0 functions
found", so nothing here reads settings or touches the network.

- ``halo_events``: ``POST /api/halo/events``, function key (``?code=`` or ``x-functions-key``) on top of the
  webhook's own authentication (Basic and/or signed body).
- ``health``: ``GET /api/health``, anonymous, for probes.
- ``work``: the Service Bus trigger on the session-enabled queue named by ``LIFECYCLE_SERVICEBUS_QUEUE``,
  connected through the ``ServiceBusConnection`` settings (``__fullyQualifiedNamespace`` with the managed
  identity in Azure, a connection string for development).
- ``reconcile``: the timer that compares Halo's users with what was applied (``LIFECYCLE_RECONCILE_SCHEDULE``).
- ``halo_poll``: the delta poll of users changed in Halo (``LIFECYCLE_HALO_POLL_SCHEDULE``, 5 minutes).
- ``halo_tickets`` / ``halo_request``: ticket requests (``POST /api/halo/tickets``, ``GET
  /api/halo/requests/{request_id}``), authenticated like ``halo_events``; ``ticket_requests``: their timer.
- ``console``: the operator console (``/api/console/...``), anonymous at the host: it signs people in with
  Microsoft Entra ID itself (Flex Consumption has no App Service Authentication), see docs/console.md.
- ``release_due``: the timer that releases due staged work (deletions and archives N days after a leaver, any
  future-dated work), on the schedule of the app setting ``LIFECYCLE_RELEASE_SCHEDULE``.
- ``manage_held`` / ``manage_held_decision``: the mass-change guard's operator routes (``/api/manage/...``,
  since Azure reserves ``/api/admin``), a function key plus the operator's bearer token.
"""

from __future__ import annotations

import azure.functions as func

from lifecycle.azure_host import (
    handle_console,
    handle_events,
    handle_halo_poll,
    handle_health,
    handle_manage_held,
    handle_reconcile,
    handle_release_due,
    handle_request_status,
    handle_ticket_poll,
    handle_tickets,
    handle_work_message,
)

# Every 30 minutes at minute 7 and 37 (NCRONTAB, UTC): off the hour, when Halo's own jobs run.
# From the app setting (once a day by default; infra/main.bicep sets it).
RECONCILE_SCHEDULE = "%LIFECYCLE_RECONCILE_SCHEDULE%"
# Every 5 minutes: open ticket requests are re-read (the safety net under the ticket webhook).
TICKET_POLL_SCHEDULE = "0 */5 * * * *"

app = func.FunctionApp()


@app.route(route="halo/events", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def halo_events(req: func.HttpRequest) -> func.HttpResponse:
    """Halo webhooks and runbooks post user events here."""
    return handle_events(req)


@app.route(route="halo/tickets", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def halo_tickets(req: func.HttpRequest) -> func.HttpResponse:
    """Halo ticket webhooks and runbooks (New Starter, Leaver requests) post here."""
    return handle_tickets(req)


@app.route(route="halo/requests/{request_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def halo_request(req: func.HttpRequest) -> func.HttpResponse:
    """Where a ticket request stands (flat JSON for runbook output variables)."""
    return handle_request_status(req)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Readiness: the queue, the store and the mapping answer."""
    return handle_health(req)


@app.route(route="manage/held", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def manage_held(req: func.HttpRequest) -> func.HttpResponse:
    """Work held by the mass-change guard (operator bearer token on top of the function key)."""
    return handle_manage_held(req)


@app.route(route="manage/held/{held_id}/{decision}", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def manage_held_decision(req: func.HttpRequest) -> func.HttpResponse:
    """Approve (release) or reject (drop) one held work item."""
    return handle_manage_held(req)


@app.route(route="console/{*path}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def console(req: func.HttpRequest) -> func.HttpResponse:
    """The operator console in the browser: pages and form posts (Entra ID sign-in, CSRF-checked)."""
    return handle_console(req)


@app.service_bus_queue_trigger(
    arg_name="msg",
    queue_name="%LIFECYCLE_SERVICEBUS_QUEUE%",
    connection="ServiceBusConnection",
    is_sessions_enabled=True,
)
def work(msg: func.ServiceBusMessage) -> None:
    """Runs one work item (one person's events arrive in order through the session)."""
    handle_work_message(msg)


@app.timer_trigger(arg_name="timer", schedule=RECONCILE_SCHEDULE, run_on_startup=False, use_monitor=True)
def reconcile(timer: func.TimerRequest) -> None:
    """Finds drift between Halo and what was applied (webhooks a network outage lost) and queues the fixes."""
    handle_reconcile(timer)


@app.timer_trigger(arg_name="timer", schedule="%LIFECYCLE_HALO_POLL_SCHEDULE%", run_on_startup=False, use_monitor=True)
def halo_poll(timer: func.TimerRequest) -> None:
    """Picks up users changed directly in Halo (no user webhook exists for certain) within one interval."""
    handle_halo_poll(timer)


@app.timer_trigger(arg_name="timer", schedule=TICKET_POLL_SCHEDULE, run_on_startup=False, use_monitor=True)
def ticket_requests(timer: func.TimerRequest) -> None:
    """Re-reads the tickets of open requests (approval without a webhook) and posts notes still owed."""
    handle_ticket_poll(timer)


@app.timer_trigger(arg_name="timer", schedule="%LIFECYCLE_RELEASE_SCHEDULE%", run_on_startup=False, use_monitor=True)
def release_due(timer: func.TimerRequest) -> None:
    """Releases staged work whose time has come (a deletion 30 days after a leaver) onto the queue."""
    handle_release_due(timer)
