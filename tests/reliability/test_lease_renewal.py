"""A step that outlives its lease while its worker still runs it: a slow DC must not get a password written twice.

Worker A receives an item whose one step resets a password, through a TCP proxy to the DC that holds every
byte (a DC that stopped answering but did not drop the connection). A claims the step and waits on the DC for
longer than the message lock and the step lease. Meanwhile worker B, with a direct line to the DC, tries to
take the same work: it must find the message still locked and the step still claimed, because A renews both
while it waits. When the DC answers again, A finishes the reset. AD's own replication metadata then counts
the password writes: one at creation, one by the joiner's reset, one by this item, never a fourth.

Without renewal, B receives the message once its lock lapses, takes the step over once its lease lapses,
and resets the password; A, released, resets it again: four writes, and the test fails.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import lifecycle.steps
from lifecycle.errors import Retryable
from lifecycle.mapping.schema import load_mapping
from lifecycle.queue import WorkQueue, message_for
from lifecycle.queue.embedded import EmbeddedQueue
from lifecycle.runtime import Runtime
from lifecycle.work import WorkItem
from lifecycle.worker import ProcessResult, Worker
from tests.integration.conftest import delivery, new_user
from tests.reliability.conftest import Harness, mapping_file_with_reset, password_writes, wait_until

pytestmark = [pytest.mark.integration]
LOCK_SECONDS, LEASE_SECONDS = 1.0, 1.5
RECEIVE_SECONDS = 1.0  # how long a receive waits for a message (it returns at once when one is there)


class HeldProxy:
    """A loopback TCP proxy to ``upstream`` whose traffic can be held (bytes wait in the proxy) and released."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.flowing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = [self._listener]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                thread = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self.flowing.wait()  # held: the bytes wait here, as on a DC that stopped answering
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.flowing.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=10)


@pytest.fixture
def held_proxy(harness: Callable[..., Harness]) -> Iterator[Callable[[tuple[str, int]], HeldProxy]]:
    made: list[HeldProxy] = []

    def build(upstream: tuple[str, int]) -> HeldProxy:
        made.append(HeldProxy(upstream))
        return made[-1]

    yield build
    for proxy in made:
        proxy.close()


def claim_of(data_dir: Path, work_id: str) -> tuple[str, float] | None:
    """(owner, lease_until) of the work item's claimed step in the journal, read as another process would."""
    db = sqlite3.connect(f"file:{data_dir / 'store.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute(
            "SELECT owner, lease_until FROM journal WHERE work_id=? AND status='in_progress'", (work_id,)
        ).fetchone()
    finally:
        db.close()
    return None if row is None else (str(row[0]), float(row[1]))


@pytest.mark.parametrize("backend", ["embedded", "servicebus"])
def test_a_password_reset_that_outlives_its_lease_on_a_slow_dc_is_not_run_by_a_second_worker(
    harness: Callable[..., Harness],
    held_proxy: Callable[[tuple[str, int]], HeldProxy],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
) -> None:
    monkeypatch.setattr(lifecycle.steps, "STEP_LEASE_SECONDS", LEASE_SECONDS)
    # On Service Bus the lock is the broker queue's lock duration (the Bicep's lockDuration), renewed by the SDK.
    service = harness(
        mapping=load_mapping(mapping_file_with_reset(tmp_path)), backend=backend, lock_seconds=LOCK_SECONDS
    )
    data_dir = service.runtime.settings.data_dir
    user = new_user("Slow", "Dc", department="Engineering")
    assert service.post(delivery("created", user)).status == 202
    queue_b: WorkQueue = (
        EmbeddedQueue(data_dir / "queue.sqlite3", lock_seconds=LOCK_SECONDS)
        if backend == "embedded"
        else service.runtime.queue
    )
    worker_b = service.worker
    assert worker_b is not None
    joined = queue_b.receive(RECEIVE_SECONDS)
    assert joined is not None
    assert worker_b.process_message(joined).outcome == "completed"
    account = service.account(user["id"])
    assert account is not None and password_writes(service.ldap, account["dn"]) == 2

    # The same person's password reset once more, as its own item (the joiner's reset step, re-keyed).
    joiner = WorkItem.from_bytes(joined.body)
    reset = next(s for s in joiner.steps if s.action == "reset_password")
    item = joiner.model_copy(
        update={"work_id": f"{joiner.work_id}-again", "steps": [reset], "planned_for_status": "active"}
    )
    assert queue_b.send([message_for(item)]) == [True]

    dc = urlsplit(service.info.url)
    proxy = held_proxy((str(dc.hostname), int(dc.port or 636)))
    # Worker A: the same store and queue, its DC behind the proxy (the certificate's name still checked).
    settings_a = service.runtime.settings.model_copy(
        update={"ad_url": f"ldaps://127.0.0.1:{proxy.port}", "ad_timeout_seconds": 60.0}
    )
    runtime_a = Runtime(settings_a, mapping=service.runtime.mapping)
    if backend == "embedded":
        runtime_a.__dict__["queue"] = EmbeddedQueue(data_dir / "queue.sqlite3", lock_seconds=LOCK_SECONDS)
    worker_a = Worker(runtime_a)
    received = runtime_a.queue.receive(RECEIVE_SECONDS)
    assert received is not None and received.locked_until is not None
    message, lock_until = received, received.locked_until.timestamp()
    outcome: list[ProcessResult] = []

    def run_a() -> None:
        try:
            outcome.append(worker_a.process_message(message))
        finally:
            worker_a.close()

    thread = threading.Thread(target=run_a, daemon=True)
    try:
        thread.start()
        # A claims the step, then waits on the DC (the proxy holds its first bytes).
        wait_until(lambda: claim_of(data_dir, item.work_id) is not None, seconds=30, what="worker A to claim")
        first = claim_of(data_dir, item.work_id)
        assert first is not None and first[0] == worker_a.owner
        lapsed_at = max(first[1], lock_until)
        wait_until(lambda: time.time() > lapsed_at + 0.2, seconds=30, what="the first lock and lease to lapse")
        assert thread.is_alive(), "worker A finished although the DC never answered"

        # B tries to take the work over: the message if its lock lapsed, else the step itself (as a second
        # delivery of the same item would).
        stolen = queue_b.receive(RECEIVE_SECONDS)
        refused: str | None = None
        try:
            if stolen is not None:
                worker_b.process_message(stolen)
            else:
                worker_b.run(item, {"source": "test"})
        except Retryable as exc:
            refused = str(exc)
        held = claim_of(data_dir, item.work_id)
    finally:
        proxy.flowing.set()  # the DC answers again
        thread.join(timeout=120)
        runtime_a.close()
        if backend == "embedded":
            queue_b.close()
    assert not thread.is_alive()
    # Creation, the joiner's reset, this item's reset: never a fourth.
    assert password_writes(service.ldap, account["dn"]) == 3
    # Because A kept both: B found the message locked and the step A's, its lease renewed.
    assert stolen is None, "the message lock lapsed while worker A was still running the item"
    assert refused is not None and "being run by another worker" in refused, refused
    assert held is not None and held[0] == worker_a.owner and held[1] > first[1]
    assert [r.outcome for r in outcome] == ["completed"]
    assert worker_b.run(item, {"source": "test"}).outcome == "completed"  # done already: nothing runs again
    assert password_writes(service.ldap, account["dn"]) == 3
    resets = [e for e in service.audit(user["id"]) if e.work_id == item.work_id and e.outcome == "changed"]
    assert len(resets) == 1, resets
