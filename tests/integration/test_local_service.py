"""The local service over real HTTP: webhooks in, AD changes out, through an outage of the DC."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from lifecycle.halo.auth import sign_body
from lifecycle.local.samba import SambaDC
from lifecycle.local.server import LocalHost
from tests.integration.conftest import World, delivery, new_user

pytestmark = pytest.mark.integration
BASIC = "Basic " + base64.b64encode(b"halo:basic-secret-value").decode()


def wait_until(condition: Callable[[], bool], *, seconds: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``seconds`` (bounded, no fixed sleeps)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def service(world: World) -> Iterator[LocalHost]:
    host = LocalHost(world.runtime, host="127.0.0.1", port=0, workers=2)
    host.start()
    yield host
    host.stop()


def post(service: LocalHost, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    raw = json.dumps(body).encode()
    return httpx.post(
        f"{service.url}/api/halo/events",
        content=raw,
        headers=headers or {"Authorization": BASIC, "Content-Type": "application/json"},
        timeout=10,
    )


def test_a_signed_webhook_over_http_creates_the_account(world: World, service: LocalHost) -> None:
    user = new_user("Hattie", "Http")
    # A signed body carries Halo's timestamp and is accepted only near it.
    at = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    raw = json.dumps(delivery("created", user, at=at)).encode()
    response = httpx.post(
        f"{service.url}/api/halo/events",
        content=raw,
        headers={"Token": sign_body("hmac-secret-value", raw), "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    wait_until(lambda: world.account(user["id"]) is not None, what="the account to appear")
    assert httpx.get(f"{service.url}/api/health", timeout=10).json()["status"] == "ok"


def test_http_errors_are_problem_documents(service: LocalHost) -> None:
    response = httpx.post(
        f"{service.url}/api/halo/events", content=b"{}", timeout=10, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert httpx.get(f"{service.url}/nowhere", timeout=10).status_code == 404
    # A declared length over the limit (16 MiB by default) is answered from the header, the body never read.
    host, port = service.url.removeprefix("http://").split(":")
    limit = service.runtime.settings.max_body_bytes
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(
            f"POST /api/halo/events HTTP/1.1\r\nHost: x\r\nAuthorization: {BASIC}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n\r\n{{".encode()
        )
        assert raw.recv(4096).split(b" ", 2)[1] == b"413"


def test_with_the_dc_stopped_mid_run_work_waits_and_completes_when_it_returns(
    dc: SambaDC, world: World, service: LocalHost
) -> None:
    early = [new_user("Before", f"Outage{i}") for i in range(3)]
    late = [new_user("During", f"Outage{i}") for i in range(5)]
    for user in early:
        assert post(service, delivery("created", user)).status_code == 202
    wait_until(lambda: all(world.account(u["id"]) is not None for u in early), what="the first joiners")
    world.ldap.unbind()

    dc.stop()
    try:
        for user in late:
            assert post(service, delivery("created", user)).status_code == 202
        # The worker met the dead DC and is backing off: the items wait in the queue, none dead-lettered.
        wait_until(lambda: any("retry_attempt" in m for m in _scheduled_properties(world)), what="a backoff")
        assert world.runtime.queue.dead_letters() == []
    finally:
        dc.start()
    from tests.integration.conftest import admin_connection

    world.ldap = admin_connection(world.info)
    wait_until(lambda: all(world.account(u["id"]) is not None for u in late), seconds=90, what="recovery")
    assert world.runtime.queue.dead_letters() == []
    for user in early + late:
        creates = [e for e in world.audit(user["id"]) if e.action == "create_user" and e.outcome == "changed"]
        assert len(creates) == 1


def _scheduled_properties(world: World) -> list[str]:
    """Property names of messages waiting in the embedded queue (read straight from its database)."""
    import sqlite3

    db = sqlite3.connect(str(world.runtime.settings.data_dir / "queue.sqlite3"))
    try:
        rows = db.execute("SELECT properties FROM inbox UNION ALL SELECT properties FROM messages").fetchall()
    finally:
        db.close()
    return [" ".join(json.loads(r[0])) for r in rows]
