"""The reliability scenarios through the Functions host: HTTP trigger in, Service Bus trigger out, Table storage.

Azure runs the service as ``function_app.py``: the HTTP trigger ``halo_events`` takes Halo's deliveries, and the
session-enabled Service Bus trigger ``work`` runs one message per invocation, settled by the host by the
function's outcome (completed when it returns, abandoned when it raises). The host runs several invocations at
once in one Python worker process (host.json's ``maxConcurrentSessions``; the Python worker's thread pool), all
on the same ``lifecycle/azure_host.py`` runtime and ``Worker``. Here the host simulator
(``tests/standins/functions_host.py``: the real azure-servicebus receiver against the AMQP broker stand-in, the
trigger's ``func.ServiceBusMessage`` built by azure-functions' own converter) runs in ``count`` threads, each
delivering one message at a time, and the store is ``TableStore`` on Azurite.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import azure.functions as func
from azure.servicebus import ServiceBusClient

import function_app
from tests.standins.functions_host import FunctionsHost

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime

EVENTS_URL = "https://func-halo.azurewebsites.net/api/halo/events"


@dataclass(frozen=True)
class HostResponse:
    """What the scenarios read of an HTTP answer (as of ``httpx.Response``)."""

    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def post_events(raw: bytes, headers: dict[str, str]) -> HostResponse:
    """A delivery to the HTTP trigger, as the host hands it to the function (the function key is the host's)."""
    request = func.HttpRequest(method="POST", url=EVENTS_URL, headers=headers, params={}, body=raw)
    response = function_app.halo_events(request)
    return HostResponse(response.status_code, response.get_body())


class FunctionsWorkers:
    """``count`` concurrent invocations of the Service Bus trigger, each one message at a time, until stopped."""

    def __init__(self, connection_string: str, queue: str, count: int) -> None:
        self._connection_string = connection_string
        self._queue = queue
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.settled: Counter[str] = Counter()  # "completed" / "abandoned", as the host settled them
        self.errors: list[BaseException] = []  # what a delivery raised outside the function (the simulator)
        self._threads = [
            threading.Thread(target=self._run, name=f"functions-host-{n}", daemon=True) for n in range(count)
        ]

    def start(self) -> FunctionsWorkers:
        for thread in self._threads:
            thread.start()
        return self

    def _run(self) -> None:
        client = ServiceBusClient.from_connection_string(self._connection_string)
        try:
            host = FunctionsHost(client, self._queue, wait_seconds=1.0)
            while not self._stop.is_set():
                try:
                    delivery = host.deliver_next(function_app.work)
                except Exception as exc:  # the link broke (the broker restarted a session): the host reconnects
                    with self._lock:
                        self.errors.append(exc)
                    self._stop.wait(0.5)  # a pause before reconnecting, as the host's listener makes
                    continue
                if delivery is not None:
                    with self._lock:
                        self.settled[delivery.settled] += 1
        finally:
            with contextlib.suppress(Exception):
                client.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def use_tables(runtime: Runtime, service: Any, prefix: str) -> None:
    """The runtime's store, ticket requests and the queue's parking on Table storage, in tables of ``prefix``
    (as Runtime builds them from the settings, with a prefix of the test's own)."""
    from lifecycle.queue.servicebus import ServiceBusQueue
    from lifecycle.requests.table import TableRequestStore
    from lifecycle.state.table import TableStore
    from lifecycle.state.table_parking import TableParking

    runtime.__dict__["test_table_prefix"] = prefix
    runtime.__dict__["store"] = TableStore(service, prefix=prefix)
    runtime.__dict__["requests"] = TableRequestStore(service, prefix=prefix)
    runtime.__dict__["queue"] = ServiceBusQueue.from_settings(
        runtime.settings, parking=TableParking(service, prefix=prefix)
    )
