"""The Functions host as a process of its own, for the crash-recovery test to SIGKILL.

Usage: ``python -m tests.reliability.functions_host_process LEASE_SECONDS INVOCATIONS``, with the service's
settings in ``LIFECYCLE_*`` (Service Bus queue and Table storage) and ``RELIABILITY_TABLE_PREFIX`` naming the
test's tables. The process builds the runtime as ``lifecycle/azure_host.py`` does, puts the store on the test's
tables, and runs ``INVOCATIONS`` concurrent invocations of ``function_app.work`` through the Functions host
simulator (tests/reliability/functions_backend.py) until SIGTERM. A killed host's messages come back when their
session lock expires (the broker queue's lock duration) and its in-progress steps are taken over when their
lease runs out; the test shortens the lease (``LEASE_SECONDS``) as tests/reliability/serve_short_leases.py does.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def main(argv: list[str]) -> int:
    lease_seconds, invocations = float(argv[0]), int(argv[1])
    from azure.data.tables import TableServiceClient

    import lifecycle.steps
    import lifecycle.worker
    from lifecycle import azure_host
    from lifecycle.observability import configure_logging
    from lifecycle.runtime import Runtime
    from tests.reliability.functions_backend import FunctionsWorkers, use_tables

    lifecycle.steps.STEP_LEASE_SECONDS = lease_seconds
    runtime = Runtime()
    settings = runtime.settings
    configure_logging(settings.log_level, settings.secret_values())
    tables = TableServiceClient.from_connection_string(settings.table_connection_string.get_secret_value())
    use_tables(runtime, tables, os.environ["RELIABILITY_TABLE_PREFIX"])
    azure_host.use_runtime(runtime, worker=lifecycle.worker.Worker(runtime))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    workers = FunctionsWorkers(
        settings.servicebus_connection_string.get_secret_value(), settings.servicebus_queue, invocations
    ).start()
    print("functions host: running", flush=True)
    stop.wait()
    workers.stop()
    azure_host.use_runtime(None)
    runtime.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
