"""Adapters between Azure Functions' binding types and the framework-neutral ingress and worker.

Only this module and ``function_app.py`` know about ``azure.functions``; the runtime is built lazily, once per
worker process, on the first invocation.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import azure.functions as func

from lifecycle.ingress import Ingress, Request, Response

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime


@lru_cache(maxsize=1)
def _runtime() -> Runtime:
    from lifecycle.observability import configure_logging
    from lifecycle.runtime import Runtime

    runtime = Runtime()
    configure_logging(runtime.settings.log_level, runtime.settings.secret_values())
    return runtime


def _to_func(response: Response) -> func.HttpResponse:
    return func.HttpResponse(
        body=response.body, status_code=response.status, headers=dict(response.headers), mimetype=response.content_type
    )


def handle_events(req: func.HttpRequest) -> func.HttpResponse:
    request = Request(req.method, req.get_body(), dict(req.headers), dict(req.params))
    return _to_func(Ingress(_runtime()).events(request))


def handle_health(req: func.HttpRequest) -> func.HttpResponse:
    return _to_func(Ingress(_runtime()).health())


def handle_work_message(msg: func.ServiceBusMessage) -> None:
    from lifecycle.errors import ConfigurationError

    raise ConfigurationError("the Service Bus worker arrives with the Azure runtime issue; run locally for now")
