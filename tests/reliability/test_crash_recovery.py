"""Crash recovery: ``lifecycle serve`` is killed with SIGKILL at random points while it runs 100 joiners.

The joiners (create, modify, move, sync groups, and a password reset, which runs at most once) are queued
first; then a worker process runs against the same data directory and DC and is killed whenever the audit
trail has grown by a random number of entries (seeded, and reported), then started again, until the queue
is empty. A kill can land anywhere: inside an LDAP write, between a write and its journal record, inside a
SQLite transaction. In the end every joiner is complete, none twice, and no password was set twice: AD's
own replication metadata counts the writes of each password (one at creation, one reset).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import load_mapping
from tests.conftest import ROOT
from tests.integration.conftest import delivery, new_user
from tests.reliability.conftest import (
    UF_ACCOUNTDISABLE,
    Harness,
    in_flight,
    mapping_file_with_reset,
    password_writes,
    record_figures,
    seed,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
JOINERS = 100
MAX_KILLS = 12
LOCK_SECONDS, LEASE_SECONDS = 4.0, 6.0


def service_env(info: DCInfo, data_dir: Path, mapping: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    env.update(
        {
            "LIFECYCLE_DATA_DIR": str(data_dir),
            "LIFECYCLE_MAPPING_FILE": str(mapping),
            "LIFECYCLE_AD_URL": info.url,
            "LIFECYCLE_AD_USER": info.admin_user,
            "LIFECYCLE_AD_PASSWORD": info.admin_password,
            "LIFECYCLE_AD_CA_FILE": str(info.ca_file),
            "LIFECYCLE_AD_TLS_SERVER_NAME": info.tls_server_name,
            "LIFECYCLE_AD_BASE_DN": info.base_dn,
            "LIFECYCLE_WEBHOOK_BASIC_USER": "halo",
            "LIFECYCLE_WEBHOOK_BASIC_PASSWORD": "basic-secret-value",
            "LIFECYCLE_RETRY_BASE_SECONDS": "0.2",
            "LIFECYCLE_RETRY_CAP_SECONDS": "2",
            "LIFECYCLE_GUARD_MAX_JOINERS": "0",  # 100 joiners at once on purpose
            "LIFECYCLE_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def sqlite_audit_rows(data_dir: Path) -> int:
    db = sqlite3.connect(f"file:{data_dir / 'store.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        return int(db.execute("SELECT COUNT(*) FROM audit").fetchone()[0])
    finally:
        db.close()


def sqlite_steps_left_running(data_dir: Path, pid: int, killed_at: float) -> list[tuple[str, str]]:
    """The (work_id, step) pairs the killed worker process ``pid`` was running: in progress in the journal,
    claimed by one of its threads (owner ``<pid>-<hex>``), their lease still running when it was killed (a
    lease ended at once is a step that backed off, not one interrupted)."""
    db = sqlite3.connect(f"file:{data_dir / 'store.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT work_id, step FROM journal WHERE status='in_progress' AND owner LIKE ? AND lease_until > ?",
            (f"{pid}-%", killed_at),
        ).fetchall()
    finally:
        db.close()
    return [(str(w), str(s)) for w, s in rows]


def table_steps_left_running(runtime: Any, pid: int, killed_at: float) -> list[tuple[str, str]]:
    """``sqlite_steps_left_running`` on Table storage: the journal table of the test's prefix on Azurite."""
    from azure.data.tables import TableServiceClient

    from lifecycle.state.table_io import decode_key

    connection_string = runtime.settings.table_connection_string.get_secret_value()
    table = TableServiceClient.from_connection_string(connection_string).get_table_client(
        f"{runtime.__dict__['test_table_prefix']}journal"
    )
    with table:
        return [
            (decode_key(e["PartitionKey"]), decode_key(e["RowKey"]))
            for e in table.query_entities("status eq 'in_progress'")
            if str(e.get("owner", "")).startswith(f"{pid}-") and float(e.get("lease_until", 0.0)) > killed_at
        ]


@pytest.mark.parametrize("backend", ["embedded", "servicebus", "functions"])
def test_joiners_survive_a_worker_killed_at_random_points_and_none_runs_twice(
    harness: Callable[..., Harness], tmp_path: Path, backend: str
) -> None:
    rng = random.Random(seed())
    mapping_file = mapping_file_with_reset(tmp_path)
    # On Service Bus the queue's lock duration is the broker queue's (as the Bicep's lockDuration sets it).
    service = harness(mapping=load_mapping(mapping_file), backend=backend, lock_seconds=LOCK_SECONDS)
    data_dir = service.runtime.settings.data_dir
    given = f"Crash{backend[0].upper()}"  # names unique per backend: the DC is shared by the whole session
    people = [new_user(given, f"Joiner{i}", department="Engineering" if i % 3 else "Sales") for i in range(JOINERS)]
    for start in range(0, JOINERS, 50):
        assert service.post([delivery("created", u) for u in people[start : start + 50]]).status == 202
    assert in_flight(service.runtime) == JOINERS

    env = service_env(service.info, data_dir, mapping_file)
    settings = service.runtime.settings
    if backend in ("servicebus", "functions"):
        env |= {
            "LIFECYCLE_QUEUE_BACKEND": "servicebus",
            "LIFECYCLE_SERVICEBUS_CONNECTION_STRING": settings.servicebus_connection_string.get_secret_value(),
            "LIFECYCLE_SERVICEBUS_QUEUE": settings.servicebus_queue,
        }
    if backend == "functions":
        env |= {
            "LIFECYCLE_STORE_BACKEND": "table",
            "LIFECYCLE_TABLE_CONNECTION_STRING": settings.table_connection_string.get_secret_value(),
            "RELIABILITY_TABLE_PREFIX": service.runtime.__dict__["test_table_prefix"],
        }

    def audit_rows() -> int:
        if backend == "functions":  # the audit table on Azurite
            return len(service.runtime.store.audit(limit=1_000_000))
        return sqlite_audit_rows(data_dir)

    def steps_left_running(pid: int, killed_at: float) -> list[tuple[str, str]]:
        if backend == "functions":
            return table_steps_left_running(service.runtime, pid, killed_at)
        return sqlite_steps_left_running(data_dir, pid, killed_at)

    command = [
        sys.executable,
        "-m",
        "tests.reliability.serve_short_leases",
        str(LOCK_SECONDS),
        str(LEASE_SECONDS),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--workers",
        "4",
    ]
    if backend == "functions":  # the Functions host simulator's process: 4 concurrent invocations of `work`
        command = [sys.executable, "-m", "tests.reliability.functions_host_process", str(LEASE_SECONDS), "4"]
    kills: list[dict[str, Any]] = []
    runs = 0
    while True:
        runs += 1
        log = (tmp_path / f"serve-{runs}.log").open("wb")
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            if len(kills) < MAX_KILLS:
                start_rows = audit_rows()
                target = start_rows + rng.randint(1, 40)
                wait_until(
                    lambda t=target: audit_rows() >= t or in_flight(service.runtime) == 0,  # type: ignore[misc]
                    seconds=180,
                    what="progress before the next kill",
                    interval=0.05 if backend == "functions" else 0.01,
                )
                if in_flight(service.runtime) > 0:
                    # A random moment past the trigger too, so that kills do not always land right after an
                    # audit write (fault injection, not synchronisation).
                    time.sleep(rng.uniform(0, 0.3))
                    # Then aimed at a step in flight: on a quiet machine the workers of the Service Bus run spend
                    # most of their time between items (receiving, settling), and a kill timed by the audit alone
                    # landed mid-step 4 times in 12. Polling the journal for a step this process is running is
                    # a condition, not a sleep; the step can still end before the kill, which the bound below
                    # counts from the journal after it.
                    wait_until(
                        lambda pid=process.pid: bool(steps_left_running(pid, time.time()))  # type: ignore[misc]
                        or in_flight(service.runtime) == 0,
                        seconds=60,
                        what="a step to be running",
                        interval=0.05 if backend == "functions" else 0.005,
                    )
                    killed_at = time.time()
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait(timeout=30)
                    kills.append(
                        {
                            "run": runs,
                            "after_audit_rows": audit_rows() - start_rows,
                            "steps_left_running": steps_left_running(process.pid, killed_at),
                        }
                    )
                    continue
            wait_until(lambda: in_flight(service.runtime) == 0, seconds=300, what="the queue to drain")
            break
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=30)
            log.close()

    runtime = service.runtime
    assert runtime.queue.dead_letters() == [], [d.description for d in runtime.queue.dead_letters()]
    accounts = service.accounts(u["id"] for u in people)
    assert set(accounts) == {u["id"] for u in people}
    resumed = 0
    for user in people:
        account = accounts[user["id"]]
        assert not int(account["userAccountControl"]) & UF_ACCOUNTDISABLE
        assert account["physicalDeliveryOfficeName"] == "Main" and account["department"] == user["department"]
        entries = service.audit(user["id"])
        # One account (``accounts`` checks the anchor is unique), created once: audited as a change, or,
        # when the creating worker died between the LDAP add and its audit record, found by the next attempt.
        creates = [e for e in entries if e.action == "create_user"]
        changed = [e for e in creates if e.outcome == "changed"]
        assert len(changed) == 1 or (not changed and any("interrupted" in e.message for e in creates)), creates
        resets = [e for e in entries if e.action == "reset_password"]
        done = [e for e in resets if e.outcome == "changed"]
        recognised = [e for e in resets if "had taken effect" in e.message]
        assert len(done) <= 1 and len(done) + len(recognised) >= 1, [(e.outcome, e.message) for e in resets]
        resumed += len(recognised)
        # Created with a password (write 1), reset once (write 2): never a third.
        assert password_writes(service.ldap, account["dn"]) == 2, account["dn"]
    everything = [e for u in people for e in service.audit(u["id"])]
    resumed_steps = sum(1 for e in everything if "interrupted" in e.message)
    # Every step a kill left running was finished by a later worker, and the audit says how: an ordinary step
    # as taken over ("interrupted"), a password reset as recognised done or run once.
    interrupted = [pair for k in kills for pair in k["steps_left_running"]]
    for work_id, step in interrupted:
        trail = [e for e in everything if e.work_id == work_id and e.step == step]
        if step.endswith("reset_password"):
            ran = sum(e.outcome == "changed" for e in trail)
            assert ran <= 1 and ran + sum("had taken effect" in e.message for e in trail) >= 1, trail
        else:
            assert any("interrupted" in e.message for e in trail), (work_id, step, [e.message for e in trail])
    # Lower bounds on what the run proves: a run whose kills all landed between items (or whose take-overs
    # and recognitions never happened) proves nothing about crash recovery, so it fails rather than passes.
    mid_step = sum(1 for k in kills if k["steps_left_running"])
    assert len(kills) == MAX_KILLS, f"the queue drained after {len(kills)} kills; the run is too short"
    assert mid_step >= MAX_KILLS // 2, f"only {mid_step} of {len(kills)} kills landed while a step was running"
    assert resumed_steps >= 1, "no step was taken over from a killed worker"
    assert resumed >= 1, "no interrupted password reset was recognised as done"
    record_figures(
        "crash_recovery" if backend == "embedded" else f"crash_recovery_{backend}",
        seed=seed(),
        joiners=JOINERS,
        steps_per_joiner=5,
        worker_processes_started=runs,
        sigkills=len(kills),
        kill_points_audit_rows_after_start=[k["after_audit_rows"] for k in kills],
        kills_while_a_step_ran=mid_step,
        steps_left_running_by_kills=len(interrupted),
        steps_taken_over_from_a_killed_worker=resumed_steps,
        interrupted_password_resets_recognised_as_done=resumed,
        dead_lettered=0,
        lock_seconds=LOCK_SECONDS,
        lease_seconds=LEASE_SECONDS,
    )
