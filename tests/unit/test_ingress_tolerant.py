"""Tolerant bodies: once authenticated, one bad element never fails another, and nothing is lost."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from lifecycle.ingress import Ingress, Request, Response
from lifecycle.rejected import REJECTED_ITEM_PROPERTY
from lifecycle.runtime import Runtime
from lifecycle.work import WorkItem
from lifecycle.worker import Worker
from tests.conftest import load_event, make_settings

HEADERS = {
    "Authorization": "Basic " + base64.b64encode(b"halo:basic-secret-value").decode(),
    "Content-Type": "application/json",
}


def post(runtime: Runtime, body: Any, **query: str) -> Response:
    return Ingress(runtime).events(Request("POST", json.dumps(body).encode(), HEADERS, query))


def delivery(user_id: int, **changes: Any) -> dict[str, Any]:
    base = load_event("webhook-user-created.json")
    return base | {"id": f"d-{user_id}", "object_id": user_id, "user": base["user"] | {"id": user_id}} | changes


def drain(runtime: Runtime) -> list[str]:
    worker, outcomes = Worker(runtime), list[str]()
    while (message := runtime.queue.receive(timeout=0)) is not None:
        if message.properties.get(REJECTED_ITEM_PROPERTY):
            outcomes.append(worker.process_message(message).outcome)
        else:
            outcomes.append("work:" + WorkItem.from_bytes(message.body).work_id)
            runtime.queue.complete(message)
    return outcomes


def test_a_batch_with_one_bad_element_accepts_the_rest_and_keeps_the_bad_one(runtime: Runtime) -> None:
    batch = [delivery(31), delivery(32), delivery(33, event="Ticket Logged"), delivery(34)]
    response = post(runtime, batch)
    assert response.status == 202
    body = response.json()
    assert [a["user_id"] for a in body["accepted"]] == [31, 32, 34]
    [rejected] = body["rejected"]
    assert rejected["index"] == 2 and rejected["user_id"] == 33 and "Ticket Logged" in rejected["problem"]
    assert drain(runtime).count("dead_lettered") == 1
    [dead] = runtime.queue.dead_letters()
    assert dead.session_id == "33" and "Ticket Logged" in dead.description
    assert json.loads(dead.body)["item"]["event"] == "Ticket Logged"  # the raw element is kept


def test_a_rejected_element_replayed_after_the_fix_becomes_work(tmp_path: Path) -> None:
    runtime = Runtime(make_settings(tmp_path / "before"))
    post(runtime, [delivery(41), delivery(42, event="Ticket Logged")])
    drain(runtime)
    runtime.close()
    # The operator maps the event name and replays: the same queue and store, new settings.
    fixed = Runtime(
        make_settings(tmp_path / "before", halo_event_map={"user created": "created", "ticket logged": "created"})
    )
    [dead] = fixed.queue.dead_letters()
    fixed.queue.replay(dead.sequence_number)
    assert drain(fixed) == ["completed", "work:halo-d-42-created"]
    assert fixed.queue.dead_letters() == []
    fixed.close()


def test_a_single_webhook_delivery_with_an_unknown_event_is_202_with_its_rejection(runtime: Runtime) -> None:
    response = post(runtime, delivery(51, event="Ticket Logged"))
    assert response.status == 202 and response.json()["rejected"][0]["index"] == 0


def test_unreadable_fields_are_absent_for_that_element_and_audited(runtime: Runtime) -> None:
    element = delivery(61)
    element["user"] = element["user"] | {"site_id": "Main", "client_id": "", "department": ""}
    body = post(runtime, element).json()
    [accepted] = body["accepted"]
    assert any("site_id" in note for note in accepted["ignored_fields"])
    message = runtime.queue.receive(timeout=0)
    assert message is not None
    user = WorkItem.from_bytes(message.body).event.user
    assert user is not None and "site_id" not in user and "client_id" not in user
    assert user["department"] == ""  # Halo's own empty text in a webhook stays (clear_when_empty decides)
    [entry] = runtime.store.audit(work_id=accepted["work_id"])
    assert entry.step == "ingress" and "site_id" in entry.message and "'Main'" in entry.message


def test_a_runbook_body_with_blank_variables_and_a_padded_event_is_accepted(runtime: Runtime) -> None:
    runbook = load_event("runbook-created.json") | {"event": " Created ", "user_id": "26", "timestamp": ""}
    runbook["user"] = runbook["user"] | {"site_id": "", "inactive": "", "department": "", "id": "26"}
    response = post(runtime, runbook)
    assert response.status == 202, response.body
    message = runtime.queue.receive(timeout=0)
    assert message is not None
    event = WorkItem.from_bytes(message.body).event
    assert event.kind == "created" and event.user_id == 26 and event.user is not None
    # An unset runbook variable is absent: it never clears anything.
    assert not {"site_id", "inactive", "department"} & event.user.keys()


def test_only_user_id_event_and_inactive_reject_an_element(runtime: Runtime) -> None:
    batch = [
        delivery(71, user=delivery(71)["user"] | {"inactive": "perhaps"}),
        delivery(72, object_id="x", user=None),
        delivery(73, event=None),
        delivery(74, user=delivery(74)["user"] | {"isserviceaccount": "no idea", "customfields": "n/a"}),
        delivery(75, object_id=" 75 ", user=None, agent_id="three"),
    ]
    body = post(runtime, batch).json()
    assert [r["index"] for r in body["rejected"]] == [0, 1, 2]
    assert [a["user_id"] for a in body["accepted"]] == [74, 75]


def test_the_replay_preview_of_a_rejected_element_parses_it_under_todays_settings(tmp_path: Path) -> None:
    from lifecycle.operations import preview_replay

    runtime = Runtime(make_settings(tmp_path))
    post(runtime, delivery(81, event="Ticket Logged"))
    drain(runtime)
    [dead] = runtime.queue.dead_letters()
    before = preview_replay(runtime, dead)
    assert before.item is None and "Ticket Logged" in before.problem
    runtime.close()
    fixed = Runtime(make_settings(tmp_path, halo_event_map={"ticket logged": "updated"}))
    after = preview_replay(fixed, dead)
    assert after.problem == "" and after.item is not None and after.item.event.kind == "updated"
    fixed.close()


def test_two_equal_elements_in_one_batch_are_one_accepted_and_one_duplicate(runtime: Runtime) -> None:
    # Found by tests/reliability/test_ingress_fuzzing.py: both were reported duplicates while one was queued.
    body = post(runtime, [{"object_id": 91}, {"object_id": 91}], event="updated").json()
    assert len(body["accepted"]) == 1 and len(body["duplicates"]) == 1
    assert drain(runtime) == [f"work:{body['accepted'][0]['work_id']}"]


def test_an_element_nested_too_deeply_is_rejected_not_a_server_error(runtime: Runtime) -> None:
    deep: Any = "x"
    for _ in range(900):
        deep = {"k": deep}
    raw = b'[{"object_id": 95}, {"object_id": 96, "user": ' + json.dumps(deep).encode() + b"}]"
    response = Ingress(runtime).events(Request("POST", raw, HEADERS, {"event": "updated"}))
    assert response.status in (202, 400), response.body  # 400 when the decoder itself gives up first
    if response.status == 202:
        assert len(response.json()["accepted"]) == 1 and len(response.json()["rejected"]) == 1
        assert drain(runtime).count("dead_lettered") == 1
