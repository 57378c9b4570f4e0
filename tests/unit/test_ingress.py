"""The ingress answers every request class with the right status and enqueues nothing it rejects."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from lifecycle.ingress import PROBLEM_JSON, Ingress, Request, Response
from lifecycle.runtime import Runtime
from lifecycle.work import WorkItem
from tests.conftest import load_event, make_settings

AUTH = {"Authorization": "Basic " + base64.b64encode(b"halo:basic-secret-value").decode()}
JSON = {"Content-Type": "application/json"}


def post(runtime: Runtime, body: Any, *, headers: dict[str, str] | None = None, **query: str) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Ingress(runtime).events(Request("POST", raw, headers if headers is not None else {**AUTH, **JSON}, query))


def queued(runtime: Runtime) -> int:
    counts: dict[str, int] = runtime.queue.counts()  # type: ignore[attr-defined]
    return counts["active"] + counts["scheduled"] + counts["locked"]


def test_a_webhook_delivery_is_accepted_with_its_work_id(runtime: Runtime) -> None:
    response = post(runtime, load_event("webhook-user-created.json"))
    assert response.status == 202
    body = response.json()
    assert body["accepted"] == [
        {"work_id": "halo-5d0b1a9e-3f43-4f7e-9a57-0c9e2f6f1a01-created", "event": "created", "user_id": 26}
    ]
    assert body["duplicates"] == []
    message = runtime.queue.receive(timeout=0)
    assert message is not None and message.session_id == "26"
    assert message.message_id == "halo-5d0b1a9e-3f43-4f7e-9a57-0c9e2f6f1a01-created"
    item = WorkItem.from_bytes(message.body)
    assert item.lifecycle == "joiner" and item.event.user is not None and item.event.user["site_id"] == 18


def test_the_same_delivery_twice_is_reported_as_a_duplicate_and_enqueued_once(runtime: Runtime) -> None:
    post(runtime, load_event("webhook-user-created.json"))
    again = post(runtime, load_event("webhook-user-created.json")).json()
    assert again["accepted"] == [] and len(again["duplicates"]) == 1
    assert queued(runtime) == 1


def test_a_batch_carrying_the_same_delivery_twice_reports_one_accepted_and_one_duplicate(runtime: Runtime) -> None:
    # Halo may repeat a delivery inside one batch; the count must say what happened to each element.
    delivery = load_event("webhook-user-created.json")
    body = post(runtime, [delivery, dict(delivery)]).json()
    assert len(body["accepted"]) == 1 and len(body["duplicates"]) == 1
    assert queued(runtime) == 1


def test_a_runbook_body_and_the_event_query_parameter_set_the_kind(runtime: Runtime) -> None:
    body = load_event("runbook-created.json")
    assert post(runtime, body).json()["accepted"][0]["event"] == "created"
    webhook = load_event("webhook-user-created.json") | {"event": "Something Halo calls it", "id": "other-id"}
    assert post(runtime, webhook, event="updated").json()["accepted"][0]["event"] == "updated"


def test_a_batch_is_accepted_whole(runtime: Runtime) -> None:
    first = load_event("webhook-user-created.json")
    second = first | {"id": "second-delivery", "object_id": 27, "user": first["user"] | {"id": 27}}
    body = post(runtime, [first, second]).json()
    assert [a["user_id"] for a in body["accepted"]] == [26, 27]
    assert queued(runtime) == 2


def test_a_thin_delivery_is_accepted_for_the_worker_to_fetch(runtime: Runtime) -> None:
    assert post(runtime, load_event("webhook-thin.json")).status == 202
    message = runtime.queue.receive(timeout=0)
    assert message is not None and WorkItem.from_bytes(message.body).lifecycle == "fetch"


def problem_of(response: Response, status: int) -> dict[str, Any]:
    assert response.status == status
    assert response.content_type == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in response.body.decode()
    return body


@pytest.mark.parametrize(
    ("raw", "headers", "status", "mentions"),
    [
        (b"{not json", {**AUTH, **JSON}, 400, "not valid JSON"),
        (b'{"event": "created"}', {**JSON}, 401, "credentials"),
        (b'{"event": "created"}', {**AUTH, "Content-Type": "text/plain"}, 415, "application/json"),
        (b"[]", {**AUTH, **JSON}, 422, "no event"),
        (b'"text"', {**AUTH, **JSON}, 422, "object"),
        (b'{"event": "created", "user_id": "abc"}', {**AUTH, **JSON}, 422, "user_id"),
        (b'{"event": "created", "user_id": 5, "user": {"id": 6}}', {**AUTH, **JSON}, 422, "user.id"),
        (b'{"event": "Ticket Logged", "user_id": 5}', {**AUTH, **JSON}, 422, "LIFECYCLE_HALO_EVENT_MAP"),
        (b'{"event":"created","user_id":5,"user":{"id":5,"inactive":"maybe"}}', {**AUTH, **JSON}, 422, "inactive"),
        (b'{"pad": 1}', {**AUTH, **JSON}, 422, "neither"),
    ],
)
def test_bad_input_gets_a_problem_naming_the_cause_and_enqueues_nothing(
    runtime: Runtime, raw: bytes, headers: dict[str, str], status: int, mentions: str
) -> None:
    body = problem_of(post(runtime, raw, headers=headers), status)
    assert mentions in body["detail"]
    assert queued(runtime) == 0


def test_an_oversized_body_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    runtime = Runtime(make_settings(tmp_path, max_body_bytes=4096))
    big = b'{"pad": "' + b"x" * 4096 + b'"}'
    problem_of(post(runtime, big), 413)
    assert queued(runtime) == 0
    runtime.close()


def test_the_default_body_limit_is_16_mib(tmp_path: Path) -> None:
    assert make_settings(tmp_path).max_body_bytes == 16 * 1024 * 1024


def test_dry_run_answers_the_plan_and_enqueues_nothing(runtime: Runtime) -> None:
    response = post(runtime, load_event("webhook-user-created.json"), dry_run="true")
    assert response.status == 200
    plans = response.json()["plans"]
    assert plans[0]["lifecycle"] == "joiner"
    assert plans[0]["steps"][0]["params"]["names"]["candidates"][0]["samaccountname"] == "baskar.balaji"
    assert "basic-secret-value" not in response.body.decode()
    assert queued(runtime) == 0


def test_health_reports_the_queue_store_and_mapping(runtime: Runtime) -> None:
    response = Ingress(runtime).health()
    assert response.status == 200
    assert response.json()["checks"] == {"queue": True, "store": True, "mapping": True}
