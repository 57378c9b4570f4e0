"""The reliability suite: the service under duplicates, crashes, outages, fuzzing and bursts, on a real DC.

The suite gets its own Samba AD DC (it starts in about a second from the cached template): the outage test
stops it for a minute, and nothing else should notice. Every run records its figures (events, faults
injected, outcomes); they are printed at the end of the session and written to
``.local/reliability/figures.json`` for docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ldap3  # type: ignore[import-untyped]
import pytest
from ldap3.utils.conv import escape_filter_chars  # type: ignore[import-untyped]

from lifecycle.ingress import Ingress, Request, Response
from lifecycle.local.samba import DCInfo
from lifecycle.local.server import LocalHost
from lifecycle.mapping.schema import Mapping
from lifecycle.runtime import Runtime
from lifecycle.state import AuditEntry
from lifecycle.worker import Worker
from tests.conftest import ROOT
from tests.integration import conftest as integration
from tests.integration.azurite import azurite as azurite_fixture
from tests.integration.azurite import table_prefix
from tests.integration.conftest import AUTH, admin_connection, dc_settings
from tests.reliability import secret_scan
from tests.reliability.functions_backend import FunctionsWorkers, HostResponse, post_events, use_tables

# The integration suite's fixtures, registered again for this directory: a DC of the suite's own.
dc = integration.dc
directory = integration.directory
azurite = azurite_fixture

FIGURES = ROOT / ".local" / "reliability" / "figures.json"
_figures: dict[str, dict[str, Any]] = {}
UF_ACCOUNTDISABLE = 2
UNICODE_PWD = 0x9005A  # the attribute id of unicodePwd (MS-ADTS)


@pytest.fixture(autouse=True)
def _lifecycle_logs_reach_caplog() -> Iterator[None]:
    """``configure_logging`` (run by a CLI test in this process) stops propagation; caplog needs it."""
    logger = logging.getLogger("lifecycle")
    before = logger.propagate
    logger.propagate = True
    yield
    logger.propagate = before


def record_figures(name: str, **values: Any) -> None:
    """Keep a test's figures for the session summary and the figures file."""
    _figures[name] = values


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _figures:
        return
    terminalreporter.section("reliability figures")
    for name, values in _figures.items():
        terminalreporter.write_line(f"{name}: {json.dumps(values, sort_keys=True, default=str)}")
    scanner = secret_scan.SCANNER
    _figures["secret_scan"] = {
        "log_lines_scanned": scanner.lines,
        "service_files_scanned": scanner.files,
        "secrets_known": len(scanner.secrets),
        "findings": len(scanner.findings),
    }
    terminalreporter.write_line(f"secret_scan: {json.dumps(_figures['secret_scan'], sort_keys=True)}")
    write_figures(FIGURES, _figures)


def write_figures(path: Path, figures: dict[str, dict[str, Any]]) -> None:
    """Replace the figures file with this run's figures, and only them.

    Never merged into what an earlier run left: a figure of a test that did not run this time (deselected,
    renamed, or an older version of it) must not pass for one this run measured.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(figures, indent=2, sort_keys=True, default=str), encoding="utf-8")
    tmp.replace(path)


def wait_until(condition: Callable[[], bool], *, seconds: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``seconds`` (a bound, not a sleep)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(interval)


def queue_counts(runtime: Runtime) -> dict[str, int]:
    counts: dict[str, int] = runtime.queue.counts()  # type: ignore[attr-defined]
    return counts


def in_flight(runtime: Runtime) -> int:
    broker = runtime.__dict__.get("test_broker")
    if broker is not None:  # Service Bus: what the AMQP broker still holds (active, scheduled or locked)
        process, queue = broker
        return len(process.state(queue)["messages"])
    counts = queue_counts(runtime)
    return counts["active"] + counts["scheduled"] + counts["locked"]


def queued_properties(runtime: Runtime) -> list[dict[str, str]]:
    """Properties of the messages waiting in the queue (the embedded queue's file, or the AMQP broker's state:
    read, not received)."""
    broker = runtime.__dict__.get("test_broker")
    if broker is not None:
        process, queue = broker
        return [dict(m["properties"]) for m in process.state(queue)["messages"]]
    db = sqlite3.connect(str(runtime.settings.data_dir / "queue.sqlite3"))
    try:
        rows = db.execute("SELECT properties FROM inbox UNION ALL SELECT properties FROM messages").fetchall()
    finally:
        db.close()
    return [json.loads(r[0]) for r in rows]


@dataclass
class Harness:
    """One test's service (runtime, optionally the local host with worker threads) against the suite's DC."""

    info: DCInfo
    runtime: Runtime
    ldap: Any
    host: LocalHost | None = None
    worker: Worker | None = None
    functions: FunctionsWorkers | None = None  # the Functions host's invocations (backend "functions")
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.host is not None
        return self.host.url

    def post(self, body: Any, **query: str) -> Response:
        """In-process ingress (the same code the HTTP routes call)."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return Ingress(self.runtime).events(Request("POST", raw, AUTH, query))

    def post_http(self, body: Any, *, headers: dict[str, str] | None = None) -> httpx.Response | HostResponse:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        if self.functions is not None:  # the HTTP trigger of function_app.py, as the Functions host calls it
            return post_events(raw, headers or AUTH)
        return httpx.post(f"{self.url}/api/halo/events", content=raw, headers=headers or AUTH, timeout=30)

    def reconnect(self) -> None:
        with contextlib.suppress(Exception):  # the old connection may already be dead with the DC
            self.ldap.unbind()
        self.ldap = admin_connection(self.info)

    def accounts(self, user_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The AD accounts anchored to ``user_ids`` (missing ids are absent), read in few searches."""
        wanted = [str(u) for u in user_ids]
        found: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), 100):
            chunk = wanted[start : start + 100]
            # The example mapping's namespaced anchor, or the bare id of accounts a test made the old way.
            clauses = "".join(
                f"(employeeID=halo:{escape_filter_chars(u)})(employeeID={escape_filter_chars(u)})" for u in chunk
            )
            self.ldap.search(self.info.base_dn, f"(|{clauses})", ldap3.SUBTREE, attributes=[ldap3.ALL_ATTRIBUTES])
            for entry in self.ldap.response:
                if entry.get("type") != "searchResEntry":
                    continue
                attributes = {
                    k: (v[0] if isinstance(v, list) and len(v) == 1 and k.lower() != "memberof" else v)
                    for k, v in entry["attributes"].items()
                }
                attributes["dn"] = entry["dn"]
                user_id = int(str(attributes["employeeID"]).removeprefix("halo:"))
                assert user_id not in found, f"two accounts carry employeeID={user_id}"
                found[user_id] = attributes
        return found

    def account(self, user_id: int) -> dict[str, Any] | None:
        return self.accounts([user_id]).get(user_id)

    def audit(self, user_id: int | None = None) -> list[AuditEntry]:
        return self.runtime.store.audit(user_id=user_id, limit=1_000_000)

    def backend_figures(self) -> dict[str, Any]:
        """What the Functions host simulator settled (backend "functions"; nothing for the others)."""
        if self.functions is None:
            return {}
        assert self.functions.settled["completed"] > 0, "no invocation of function_app.work ran"
        return {
            "invocations_completed": self.functions.settled["completed"],
            "invocations_abandoned": self.functions.settled["abandoned"],
            "host_receive_errors": len(self.functions.errors),
        }

    def stop_host(self) -> None:
        if self.host is not None:
            self.host.stop()
            self.host = None
        if self.functions is not None:
            from lifecycle import azure_host

            self.functions.stop()
            self.functions = None
            azure_host.use_runtime(None)  # closes the worker the invocations shared


@pytest.fixture
def harness(
    request: pytest.FixtureRequest, directory: DCInfo, example_mapping: Mapping, tmp_path: Path
) -> Iterator[Callable[..., Harness]]:
    """Build a harness: ``harness(workers=4, mapping=..., backend="embedded"|"servicebus"|"functions",
    **settings)``; ``workers=0`` starts no host. ``servicebus`` puts the queue on a fresh queue of the AMQP
    broker (tests/standins/amqp_broker), reached by the real SDK as in Azure, consumed by ``lifecycle serve``'s
    workers. ``functions`` runs as Azure does: the same broker queue, Table storage on Azurite (tables of the
    test's own prefix), deliveries posted to ``function_app.halo_events`` and ``workers`` concurrent
    invocations of ``function_app.work`` by the Functions host simulator (tests/reliability/functions_backend.py)."""
    made: list[Harness] = []

    def build(
        *,
        workers: int = 0,
        mapping: Mapping | None = None,
        backend: str = "embedded",
        lock_seconds: float = 60.0,
        **overrides: Any,
    ) -> Harness:
        values: dict[str, Any] = {"retry_base_seconds": 0.2, "retry_cap_seconds": 2.0, **overrides}
        broker: Any = None
        if backend in ("servicebus", "functions"):
            broker = request.getfixturevalue("amqp_broker")
            queue = f"lifecycle-work-{uuid.uuid4().hex[:8]}"
            # As infra/modules/servicebus.bicep declares it: sessions, duplicate detection, max deliveries.
            broker.create_queue(queue, max_delivery_count=10, duplicate_window_seconds=600.0, lock_seconds=lock_seconds)
            values |= {
                "queue_backend": "servicebus",
                "servicebus_connection_string": broker.connection_string,
                "servicebus_queue": queue,
            }
        tables: Any = None
        if backend == "functions":
            from azure.data.tables import TableServiceClient

            connection_string = request.getfixturevalue("azurite").connection_string
            values |= {"store_backend": "table", "table_connection_string": connection_string}
            tables = TableServiceClient.from_connection_string(connection_string)
        data = tmp_path / f"service-{len(made)}"
        runtime = Runtime(dc_settings(directory, data, **values), mapping=mapping or example_mapping)
        if broker is not None:
            runtime.__dict__["test_broker"] = (broker, queue)
        if tables is not None:
            use_tables(runtime, tables, table_prefix())
        made_harness = Harness(directory, runtime, admin_connection(directory))
        if workers and backend == "functions":
            from lifecycle import azure_host

            azure_host.use_runtime(runtime, worker=Worker(runtime))
            made_harness.functions = FunctionsWorkers(broker.connection_string, queue, workers).start()
        elif workers:
            made_harness.host = LocalHost(runtime, host="127.0.0.1", port=0, workers=workers)
            made_harness.host.start()
        else:
            made_harness.worker = Worker(runtime)
        made.append(made_harness)
        return made_harness

    yield build
    for h in made:
        h.stop_host()
        if h.worker is not None:
            h.worker.close()
        with contextlib.suppress(Exception):
            h.ldap.unbind()
        h.runtime.close()


JOINER_LINE = 'joiner = ["create_user", "modify_properties", "move_ou", "sync_groups"]'


def mapping_file_with_reset(folder: Path) -> Path:
    """The example mapping whose joiner also resets the password (a once-only step), as a file."""
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    assert JOINER_LINE in text, "the example mapping's joiner line changed; update the reliability suite"
    path = folder / "mapping-reset.toml"
    path.write_text(
        text.replace(JOINER_LINE, JOINER_LINE.replace('"sync_groups"]', '"sync_groups", "reset_password"]')),
        encoding="utf-8",
    )
    return path


def seed() -> int:
    """The suite's random seed: LIFECYCLE_RELIABILITY_SEED, else a fixed one, so a failure can be rerun."""
    return int(os.environ.get("LIFECYCLE_RELIABILITY_SEED", "20261130"))


def password_writes(ldap: Any, dn: str) -> int:
    """How many times the password of ``dn`` was written, from its replPropertyMetaData (MS-DRSR)."""
    ldap.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["replPropertyMetaData"])
    blob = ldap.response[0]["raw_attributes"]["replPropertyMetaData"][0]
    count = struct.unpack_from("<I", blob, 8)[0]
    for index in range(count):
        attid, version = struct.unpack_from("<II", blob, 16 + index * 48)
        if attid == UNICODE_PWD:
            return int(version)
    return 0
