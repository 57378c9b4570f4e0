"""``lifecycle worker``: the worker alone, consuming the Service Bus queue from inside the customer's network.

Most customers have no network path from Azure to their domain controllers. This runs the same worker as the
Functions app's ``work`` function (the same sessions, settlement, back-off copies, person gates, journal and
audit in the same Table store) on a machine next to the DCs, with outbound connections only: AMQP over TLS to
Service Bus (5671, or 443 over WebSockets), HTTPS to Table storage and to Entra ID for its token. Deploy the
infrastructure with ``cloudWorker=false`` so the cloud consumer stays off (docs/deployment.md, "Reaching
Active Directory"); the identity is an app registration with a certificate (``AZURE_TENANT_ID``,
``AZURE_CLIENT_ID``, ``AZURE_CLIENT_CERTIFICATE_PATH``, read by ``DefaultAzureCredential``).

It runs until SIGTERM or SIGINT (systemd's stop, a Windows service wrapper's Ctrl+C), lets each thread finish
the item it holds, and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from lifecycle.errors import ConfigurationError

# How long one receive waits for a session before it looks again (and sees a stop request).
RECEIVE_SECONDS = 5.0


def register(subparsers: Any) -> None:
    """Add the ``worker`` command."""
    worker = subparsers.add_parser(
        "worker", help="run only the worker, consuming the Service Bus queue (an on-premises worker next to the DCs)"
    )
    worker.add_argument("--threads", type=int, help="worker threads (default LIFECYCLE_WORKER_CONCURRENCY)")
    worker.set_defaults(func=cmd_worker)


def run_workers(runtime: Any, stop: threading.Event, threads: int, *, poll_seconds: float = RECEIVE_SECONDS) -> None:
    """Run ``threads`` workers on ``runtime`` until ``stop`` is set, then wait for them to finish their item."""
    from lifecycle.worker import Worker

    worker = Worker(runtime)
    pool = [
        threading.Thread(
            target=worker.run_forever, args=(stop,), kwargs={"poll_seconds": poll_seconds}, name=f"worker-{n}"
        )
        for n in range(threads)
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def cmd_worker(args: argparse.Namespace) -> int:
    """Consume the queue until stopped."""
    from lifecycle import cli
    from lifecycle.observability import configure_logging, configure_telemetry, log

    runtime = cli._runtime()
    settings = runtime.settings
    if settings.queue_backend != "servicebus" or settings.store_backend != "table":
        raise ConfigurationError(
            "lifecycle worker serves the Azure queue: set LIFECYCLE_QUEUE_BACKEND=servicebus and "
            "LIFECYCLE_STORE_BACKEND=table (with LIFECYCLE_SERVICEBUS_NAMESPACE and LIFECYCLE_TABLE_ENDPOINT)"
        )
    configure_logging(settings.log_level, settings.secret_values())
    configure_telemetry()
    _ = runtime.mapping, runtime.queue, runtime.store  # fail now, not on the first message
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = args.threads or settings.worker_concurrency
    print(f"halo-lifecycle worker: {threads} thread(s) on queue {settings.servicebus_queue}", file=sys.stderr)
    log.info("on-premises worker started with %d thread(s)", threads)
    try:
        run_workers(runtime, stop, threads)
    finally:
        runtime.close()
    log.info("on-premises worker stopped")
    return 0
