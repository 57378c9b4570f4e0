"""Every signing option of Halo's Webhook object, and signed bodies that bind everything that decides the work."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lifecycle.halo.auth import Algorithm, Encoding, sign_body
from lifecycle.ingress import PROBLEM_JSON, Ingress, Request, Response
from lifecycle.runtime import Runtime
from tests.conftest import load_event, make_settings

JSON = {"Content-Type": "application/json"}
ALGORITHMS: tuple[Algorithm, ...] = ("sha1", "sha256", "sha512")
ENCODINGS: tuple[Encoding, ...] = ("base64", "hex")
PREFIXES = ("", "sha256=", "HMAC ")
SECRET = "hmac-secret-value"


def now_iso(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + delta).replace(tzinfo=None).isoformat(timespec="seconds")


def fresh_delivery(**changes: Any) -> dict[str, Any]:
    body = load_event("webhook-user-created.json") | {"timestamp": now_iso()}
    return body | changes


def send(runtime: Runtime, raw: bytes, headers: dict[str, str], **query: str) -> Response:
    return Ingress(runtime).events(Request("POST", raw, {**JSON, **headers}, query))


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[Any]:
    made: list[Runtime] = []

    def make(**overrides: Any) -> Runtime:
        runtime = Runtime(make_settings(tmp_path / str(len(made)), **overrides))
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


def test_a_body_signed_with_each_option_is_accepted_only_with_matching_settings(make_runtime: Any) -> None:
    combos = list(itertools.product(ALGORITHMS, ENCODINGS, PREFIXES))
    raw = json.dumps(fresh_delivery()).encode()
    for algorithm, encoding, prefix in combos:
        runtime = make_runtime(
            webhook_basic_user="",
            webhook_hmac_header="X-Halo-Signature",
            webhook_hmac_algorithm=algorithm,
            webhook_hmac_encoding=encoding,
            webhook_hmac_prefix=prefix,
        )
        for other in combos:
            token = sign_body(SECRET, raw, algorithm=other[0], encoding=other[1], prefix=other[2])
            response = send(runtime, raw, {"X-Halo-Signature": token}, dry_run="true")
            expected = 200 if other == (algorithm, encoding, prefix) else 401
            assert response.status == expected, (algorithm, encoding, prefix, other, response.body)
        # The right signature in another header is no signature at all.
        token = sign_body(SECRET, raw, algorithm=algorithm, encoding=encoding, prefix=prefix)
        assert send(runtime, raw, {"Token": token}, dry_run="true").status == 401


def test_halos_spellings_and_a_space_after_the_prefix_are_understood(make_runtime: Any) -> None:
    runtime = make_runtime(
        webhook_basic_user="", webhook_hmac_algorithm="HMAC-SHA512", webhook_hmac_encoding="Hex",
        webhook_hmac_prefix="sha512=",
    )  # fmt: skip
    assert runtime.settings.webhook_hmac_algorithm == "sha512" and runtime.settings.webhook_hmac_encoding == "hex"
    raw = json.dumps(fresh_delivery()).encode()
    digest = sign_body(SECRET, raw, algorithm="sha512", encoding="hex")
    assert send(runtime, raw, {"Token": "sha512= " + digest.upper()}, dry_run="true").status == 200


def test_a_captured_signed_body_replayed_as_a_deletion_is_refused(make_runtime: Any) -> None:
    runtime = make_runtime(webhook_basic_user="")
    raw = json.dumps(fresh_delivery()).encode()
    token = sign_body(SECRET, raw)
    assert send(runtime, raw, {"Token": token}).status == 202
    replay = send(runtime, raw, {"Token": token}, event="deleted")
    assert replay.status == 403 and replay.content_type == PROBLEM_JSON
    assert "?event=" in replay.json()["detail"]
    assert replay.json()["type"].endswith("#event-not-bound")
    # Even a matching ?event= is refused with the shared secret: the kind must come from the signed body.
    assert send(runtime, raw, {"Token": token}, event="created").status == 403
    # ?dry_run= changes nothing and stays allowed.
    assert send(runtime, raw, {"Token": token}, dry_run="true").status == 200


def test_with_one_secret_per_kind_the_query_may_name_only_the_secrets_kind(make_runtime: Any) -> None:
    runtime = make_runtime(
        webhook_basic_user="", webhook_hmac_secret="",
        webhook_hmac_secrets={"created": "created-secret-value", "deleted": "deleted-secret-value"},
    )  # fmt: skip
    body = fresh_delivery(event="Something Halo calls it")
    raw = json.dumps(body).encode()
    created_token = sign_body("created-secret-value", raw)
    assert send(runtime, raw, {"Token": created_token}, event="deleted").status == 403
    accepted = send(runtime, raw, {"Token": created_token}, event="created")
    assert accepted.status == 202 and accepted.json()["accepted"][0]["event"] == "created"
    # Without ?event= the secret's kind decides; a body naming another kind is rejected, not turned into it.
    other = json.dumps(fresh_delivery(id="other-delivery", event="User Deleted")).encode()
    answer = send(runtime, other, {"Token": sign_body("created-secret-value", other)}).json()
    assert answer["accepted"] == [] and "created" in answer["rejected"][0]["problem"]
    deleted = send(runtime, other, {"Token": sign_body("deleted-secret-value", other)}).json()
    assert deleted["accepted"][0]["event"] == "deleted"


def test_signed_bodies_outside_the_time_window_or_without_a_timestamp_are_refused(make_runtime: Any) -> None:
    runtime = make_runtime(webhook_basic_user="")
    for body in (
        fresh_delivery(timestamp=now_iso(-timedelta(minutes=11))),
        fresh_delivery(timestamp=now_iso(timedelta(minutes=11))),
        {k: v for k, v in fresh_delivery().items() if k != "timestamp"},
    ):
        raw = json.dumps(body).encode()
        response = send(runtime, raw, {"Token": sign_body(SECRET, raw)})
        assert response.status == 401 and "timestamp" in response.json()["detail"], response.body
    assert runtime.queue.counts()["active"] == 0  # type: ignore[attr-defined]


def test_a_future_timestamp_is_refused_whatever_the_authentication(make_runtime: Any) -> None:
    runtime = make_runtime()
    basic = {"Authorization": "Basic " + base64.b64encode(b"halo:basic-secret-value").decode()}
    runbook = load_event("runbook-created.json") | {"timestamp": now_iso(timedelta(minutes=6))}
    response = send(runtime, json.dumps(runbook).encode(), basic)
    assert response.status == 422 and "ahead" in response.json()["detail"]
    webhook = fresh_delivery(timestamp=now_iso(timedelta(hours=3)))
    answer = send(runtime, json.dumps(webhook).encode(), basic).json()
    assert answer["accepted"] == [] and "ahead" in answer["rejected"][0]["problem"]


def test_a_signed_body_is_remembered_so_a_replay_inside_the_window_is_a_duplicate(make_runtime: Any) -> None:
    runtime = make_runtime(webhook_basic_user="")
    raw = json.dumps(fresh_delivery()).encode()
    token = sign_body(SECRET, raw)
    first = send(runtime, raw, {"Token": token}).json()
    # The queue forgot the message id (its own duplicate window is shorter than ours): the store remembers.
    runtime.queue.receive(timeout=0)
    runtime.queue._conn.execute("DELETE FROM sent_ids")  # type: ignore[attr-defined]
    again = send(runtime, raw, {"Token": token}).json()
    assert len(first["accepted"]) == 1 and again["accepted"] == [] and len(again["duplicates"]) == 1


def test_the_work_id_includes_the_event_kind(make_runtime: Any) -> None:
    runtime = make_runtime()
    basic = {"Authorization": "Basic " + base64.b64encode(b"halo:basic-secret-value").decode()}
    raw = json.dumps(fresh_delivery()).encode()
    created = send(runtime, raw, basic).json()["accepted"][0]["work_id"]
    updated = send(runtime, raw, basic, event="updated").json()["accepted"][0]["work_id"]
    assert created != updated and created.endswith("-created") and updated.endswith("-updated")


def test_basic_credentials_keep_the_query_event(make_runtime: Any) -> None:
    runtime = make_runtime()
    basic = {"Authorization": "Basic " + base64.b64encode(b"halo:basic-secret-value").decode()}
    raw = json.dumps(load_event("webhook-user-created.json") | {"event": "Other"}).encode()
    assert send(runtime, raw, basic, event="updated").json()["accepted"][0]["event"] == "updated"
