"""Tolerant bodies over HTTP against the real DC: a bad element is kept and replayable, the rest applied."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lifecycle.local.samba import DCInfo
from lifecycle.local.server import LocalHost
from lifecycle.mapping.schema import Mapping
from lifecycle.runtime import Runtime
from tests.integration.conftest import World, dc_settings, delivery, new_user
from tests.integration.test_local_service import wait_until

pytestmark = pytest.mark.integration
HEADERS = {
    "Authorization": "Basic " + base64.b64encode(b"halo:basic-secret-value").decode(),
    "Content-Type": "application/json",
}


@pytest.fixture
def serve(directory: DCInfo, example_mapping: Mapping, tmp_path: Path) -> Iterator[Any]:
    started: list[LocalHost] = []

    def start(**overrides: Any) -> LocalHost:
        settings = dc_settings(
            directory, tmp_path / "service", retry_base_seconds=0.05, retry_cap_seconds=0.2, **overrides
        )
        host = LocalHost(Runtime(settings, mapping=example_mapping), host="127.0.0.1", port=0, workers=2)
        host.start()
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop()
        host.runtime.close()


def stop(host: LocalHost) -> None:
    host.stop()
    host.runtime.close()


def post(host: LocalHost, body: Any) -> httpx.Response:
    return httpx.post(f"{host.url}/api/halo/events", content=json.dumps(body).encode(), headers=HEADERS, timeout=30)


def test_a_batch_of_five_with_one_bad_element_applies_four_and_keeps_one_replayable(
    serve: Any, world: World
) -> None:
    host = serve()
    users = [new_user("Batch", f"Member{i}") for i in range(5)]
    batch = [delivery("created", u) for u in users]
    batch[2]["event"] = "User Archived"  # a Halo event name nobody mapped yet
    response = post(host, batch)
    assert response.status_code == 202, response.text
    body = response.json()
    assert len(body["accepted"]) == 4
    assert body["rejected"] == [{"index": 2, "user_id": users[2]["id"], "problem": body["rejected"][0]["problem"]}]
    assert "User Archived" in body["rejected"][0]["problem"]
    applied = [u for i, u in enumerate(users) if i != 2]
    wait_until(lambda: all(world.account(u["id"]) is not None for u in applied), what="the four joiners")
    wait_until(lambda: len(host.runtime.queue.dead_letters()) == 1, what="the rejected element's dead letter")
    assert world.account(users[2]["id"]) is None
    [dead] = host.runtime.queue.dead_letters()
    assert dead.session_id == str(users[2]["id"]) and "User Archived" in dead.description
    assert json.loads(dead.body)["item"] == batch[2]  # the raw element, as Halo sent it
    stop(host)

    # The operator maps the event name, restarts, and replays the dead letter: the person is created.
    fixed = serve(halo_event_map={"user created": "created", "user archived": "created"})
    fixed.runtime.queue.replay(dead.sequence_number)
    wait_until(lambda: world.account(users[2]["id"]) is not None, what="the replayed joiner")
    assert fixed.runtime.queue.dead_letters() == []


def test_a_runbook_body_with_blank_optional_fields_and_a_padded_event_is_applied(serve: Any, world: World) -> None:
    host = serve()
    user = new_user("Blank", "Fields", title="", department="", site_id="", inactive="")
    runbook = {"event": " Created ", "user_id": str(user["id"]), "timestamp": "", "agent_id": "", "user": user}
    response = post(host, runbook)
    assert response.status_code == 202, response.text
    wait_until(lambda: world.account(user["id"]) is not None, what="the runbook's joiner")
    account = world.account(user["id"])
    assert account is not None and "title" not in account and "department" not in account
