"""Azure Functions entry points (Python v2 model). Thin: bindings only, each body one call into lifecycle/.

Importing this module builds no client and imports no heavy SDK: the runtime pieces are built on first use.
"""

from __future__ import annotations

import azure.functions as func

from lifecycle.azure_host import handle_events, handle_health, handle_work_message

app = func.FunctionApp()


@app.route(route="halo/events", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def halo_events(req: func.HttpRequest) -> func.HttpResponse:
    """Halo webhooks and runbooks post user events here."""
    return handle_events(req)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Readiness: the queue, the store and the mapping answer."""
    return handle_health(req)


@app.service_bus_queue_trigger(
    arg_name="msg",
    queue_name="%LIFECYCLE_SERVICEBUS_QUEUE%",
    connection="ServiceBusConnection",
    is_sessions_enabled=True,
)
def work(msg: func.ServiceBusMessage) -> None:
    """Runs one work item (one person's events arrive in order through the session)."""
    handle_work_message(msg)
