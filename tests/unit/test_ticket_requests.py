"""The ticket loop's pure parts (approval reading, dates, time zones, digests) and its HTTP route."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from lifecycle.errors import Permanent
from lifecycle.ingress import Request
from lifecycle.mapping.schema import Requests, parse_mapping
from lifecycle.requests.http import TicketRoutes
from lifecycle.requests.planning import approval_state, build_plan, parse_date, person_zone, ticket_context
from lifecycle.requests.store import EmbeddedRequestStore, RequestRecord, VersionConflict
from lifecycle.runtime import Runtime
from lifecycle.work import WorkItem
from tests.conftest import ROOT, make_settings

REQUESTS = Requests.model_validate(
    {
        "types": [{"name": "t", "kind": "joiner", "when": {"tickettype_name": "New Starter"}}],
        "approved_statuses": [21],
        "rejected_statuses": [22],
        "time_zone": "Europe/London",
        "site_time_zones": {"New York": "America/New_York"},
        "client_time_zones": {"Contoso": "Europe/Berlin"},
    }
)
POSTED = datetime(2026, 12, 7, 12, 0, 30, 500000, tzinfo=UTC)
AUTH = {"Authorization": "Basic " + base64.b64encode(b"halo:basic-secret-value").decode()}


def state(ticket: dict[str, Any], seen_unapproved: bool = False) -> str:
    return approval_state(ticket, posted_at=POSTED, seen_unapproved=seen_unapproved, requests=REQUESTS)[0]


def test_an_approval_dated_before_the_plan_was_posted_does_not_approve_it() -> None:
    old = {"approvers": [{"name": "M", "result": 1, "dateapproved": "2026-12-07T12:00:30"}], "approval_status": 1}
    assert state(old) == "pending"
    fresh = {"approvers": [{"name": "M", "result": 1, "dateapproved": "2026-12-07T12:00:31"}], "approval_status": 1}
    assert state(fresh) == "approved"


def test_an_approval_waits_for_every_approver_unless_halo_says_the_process_is_approved() -> None:
    approvers = [
        {"name": "A", "result": 1, "dateapproved": "2026-12-07T13:00:00"},
        {"name": "B", "result": 0},
    ]
    assert state({"approvers": approvers, "approval_status": 0}) == "pending"
    assert state({"approvers": approvers, "approval_status": 1}) == "approved"


def test_a_ticket_level_approval_counts_only_after_the_ticket_was_seen_without_it() -> None:
    ticket = {"status_id": 21}
    assert state(ticket, seen_unapproved=False) == "pending"
    assert state(ticket, seen_unapproved=True) == "approved"
    assert state({"approval_status": 1}, seen_unapproved=True) == "approved"


@pytest.mark.parametrize(
    "ticket",
    [
        {"approvers": [{"name": "M", "result": 2, "dateapproved": "2026-01-01T00:00:00"}]},
        {"faultapprovalfailed": True},
        {"approval_status": 2},
        {"status_id": 22},
    ],
)
def test_any_rejection_rejects_whenever_it_was_given(ticket: dict[str, Any]) -> None:
    assert state(ticket, seen_unapproved=True) == "rejected"


def test_dates_are_read_as_dates_or_date_times_and_anything_else_is_refused_with_the_value() -> None:
    zone = ZoneInfo("America/New_York")
    assert parse_date("2026-12-18", zone, "last day").isoformat() == "2026-12-18"
    assert parse_date("2026-12-18T00:00:00", zone, "last day").isoformat() == "2026-12-18"
    # A date-time in UTC that is the day before midnight in the zone is the zone's date.
    assert parse_date("2026-12-19T03:00:00Z", zone, "last day").isoformat() == "2026-12-18"
    with pytest.raises(Permanent, match="'18/12/2026' is not a date"):
        parse_date("18/12/2026", zone, "last day")


def test_a_date_custom_field_reads_its_raw_value_not_the_locale_display() -> None:
    field = {"name": "last_day", "type": 4, "value": "2026-12-18T00:00:00", "display": "18/12/2026"}
    ticket = {"customfields": [field]}
    assert ticket_context(ticket)["cf.last_day"] == "2026-12-18T00:00:00"
    assert ticket_context(ticket, {"cf.last_day": "2026-12-20", "site_name": ""})["cf.last_day"] == "2026-12-20"


def test_the_time_zone_comes_from_the_site_then_the_client_then_halo_then_the_default() -> None:
    assert person_zone(REQUESTS, {"site_name": "new york"}, {}).key == "America/New_York"
    assert person_zone(REQUESTS, {}, {"client_name": "Contoso", "site_name": "HQ"}).key == "Europe/Berlin"
    assert person_zone(REQUESTS, {}, {"site_timezone": "Asia/Tokyo"}).key == "Asia/Tokyo"
    assert person_zone(REQUESTS, {}, {"site_timezone": "GMT Standard Time"}).key == "Europe/London"


def mapping_with_requests() -> Any:
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    extra = """
[requests]
time_zone = "Europe/London"
[[requests.types]]
name = "new-starter"
kind = "joiner"
when = { tickettype_name = "New Starter" }
person = { firstname = "{cf.first}", surname = "{cf.last}", site_name = "{site_name}" }
start_date = "{cf.start}"
"""
    return parse_mapping(text + extra, "test")


def test_the_plan_digest_is_the_same_for_the_same_ticket_and_changes_with_its_data() -> None:
    mapping = mapping_with_requests()
    assert mapping.requests is not None
    kind = mapping.requests.types[0]

    def digest(**custom: str) -> str:
        fields = {"first": "Ada", "last": "Byron", "start": "2026-12-17", **custom}
        ticket = {
            "id": 5,
            "site_name": "Main",
            "customfields": [{"name": k, "value": v, "display": v} for k, v in fields.items()],
        }
        now = datetime(2026, 12, 7, 12, tzinfo=UTC)
        made = build_plan(
            kind, mapping, request_id="ticket-5", ticket=ticket, context=ticket_context(ticket),
            user_id=77, user={"id": 77}, status="unknown", now=now,
        )  # fmt: skip
        assert [p.name for p in made.phases] == ["create", "enable"]
        return made.digest

    assert digest() == digest()
    assert digest(start="2026-12-18") != digest()
    assert digest(last="Lovelace") != digest()


def test_the_mapping_refuses_an_unknown_time_zone_and_dates_on_the_wrong_kind() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        Requests.model_validate({"types": REQUESTS.model_dump()["types"], "time_zone": "Mars/Olympus"})
    with pytest.raises(ValueError, match="last_day is for leaver requests"):
        Requests.model_validate({"types": [{"name": "x", "kind": "joiner", "when": {"a": "b"}, "last_day": "{cf.x}"}]})


def test_a_leaver_or_mover_request_must_say_whom_it_concerns_the_tickets_user_only_explicitly() -> None:
    """Issue 16: the ticket's user (often the manager who raised it) was a leaver's subject by default."""
    for kind in ("leaver", "mover"):
        with pytest.raises(ValueError, match=f'a {kind} request must say which Halo user it concerns: user = "{{cf'):
            Requests.model_validate({"types": [{"name": "x", "kind": kind, "when": {"a": "b"}}]})
        explicit = {"name": "x", "kind": kind, "when": {"a": "b"}, "user": "{user_id}"}
        assert Requests.model_validate({"types": [explicit]}).types[0].user == "{user_id}"
    assert Requests.model_validate({"types": [{"name": "j", "kind": "joiner", "when": {"a": "b"}}]})


def test_the_subject_is_an_id_or_an_e_mail_address_and_anything_else_says_what_to_fill_in() -> None:
    from lifecycle.requests.planning import SubjectUnclear, concerned_user

    kind = Requests.model_validate(
        {"types": [{"name": "leaver", "kind": "leaver", "when": {"a": "b"}, "user": "{cf.leaving_user}"}]}
    ).types[0]

    def subject(value: str) -> int | str | None:
        ticket = {"customfields": [{"name": "leaving_user", "type": 0, "value": value, "display": value}]}
        return concerned_user(kind, ticket_context(ticket))

    assert subject("42") == 42 and subject(" Lee.Leaving@Corp.Example.Test ") == "lee.leaving@corp.example.test"
    for value, problem in (("", "leaving_user is empty"), ("Lee Leaving", "neither a Halo user id nor an e-mail")):
        with pytest.raises(SubjectUnclear, match=problem) as caught:
            subject(value)
        assert "fill the ticket's custom field leaving_user with the Halo user id or the e-mail" in caught.value.fill


def test_the_request_store_writes_only_over_the_version_it_read(tmp_path: Path) -> None:
    store = EmbeddedRequestStore(tmp_path / "r.sqlite3")
    first = store.put(RequestRecord("ticket-1", 1, "received"), expected_version=0)
    assert first.version == 1
    with pytest.raises(VersionConflict):
        store.put(RequestRecord("ticket-1", 1, "received"), expected_version=0)
    store.put(first, expected_version=1)
    with pytest.raises(VersionConflict):
        store.put(first, expected_version=1)
    assert [r.request_id for r in store.list(statuses=frozenset({"received"}))] == ["ticket-1"]
    store.close()


# The route -----------------------------------------------------------------------------------------------------
@pytest.fixture
def routes(tmp_path: Path) -> Iterator[TicketRoutes]:
    runtime = Runtime(make_settings(tmp_path))
    yield TicketRoutes(runtime)
    runtime.close()


def post(routes: TicketRoutes, body: Any, headers: dict[str, str] | None = None) -> Any:
    raw = json.dumps(body).encode()
    return routes.tickets(Request("POST", raw, {**AUTH, "Content-Type": "application/json", **(headers or {})}))


def test_a_runbook_body_is_queued_and_answered_with_flat_json(routes: TicketRoutes) -> None:
    response = post(routes, {"ticket_id": "123", "fields": {"cf.department": "Sales", "site_name": ""}})
    assert response.status == 202
    answer = response.json()
    assert (answer["request_id"], answer["status"]) == ("ticket-123", "received")
    message = routes.runtime.queue.receive(timeout=0)
    assert message is not None and message.session_id == "-123"
    item = WorkItem.from_bytes(message.body)
    assert item.lifecycle == "ticket" and item.ticket == {"ticket_id": 123, "fields": {"cf.department": "Sales"}}
    status = routes.request_status(Request("GET", b"", AUTH), "ticket-123")
    assert status.status == 200 and status.json()["status"] == "received"


def test_a_bad_runbook_body_is_a_422_naming_the_field(routes: TicketRoutes) -> None:
    response = post(routes, {"ticket_id": 0})
    assert response.status == 422 and response.json()["field"] == "ticket_id"
    assert routes.runtime.queue.receive(timeout=0) is None


def test_a_bad_delivery_in_a_batch_never_fails_the_others(routes: TicketRoutes) -> None:
    batch = [
        {"id": "d1", "event": "Ticket Updated", "object_id": 5},
        {"id": "d2", "event": "Ticket Updated"},
        {"id": "d3", "event": "Ticket Updated", "ticket": {"id": 6, "summary": "New starter"}},
        "not an object",
    ]
    response = post(routes, batch)
    assert response.status == 202
    answer = response.json()
    assert [a["ticket_id"] for a in answer["accepted"]] == [5, 6]
    assert [r["index"] for r in answer["rejected"]] == [1, 3]
    again = post(routes, batch[:1])
    assert again.json()["duplicates"] == [{"work_id": "halo-d1", "ticket_id": 5, "request_id": "ticket-5"}]
    # The rejected elements are kept as dead letters, with their reason and raw JSON (lifecycle dlq list).
    from lifecycle.rejected import REJECTED_ITEM_PROPERTY
    from lifecycle.worker import Worker

    queue = routes.runtime.queue
    worker = Worker(routes.runtime)
    while (message := queue.receive(timeout=0)) is not None:
        if message.properties.get(REJECTED_ITEM_PROPERTY):
            assert worker.process_message(message).outcome == "dead_lettered"
        else:
            queue.complete(message)
    worker.close()
    reasons = sorted(d.description for d in queue.dead_letters())
    assert len(reasons) == 2
    assert reasons[0].startswith("element 1 of a ticket webhook delivery: [1]: no ticket id")
    assert reasons[1].startswith("element 3 of a ticket webhook delivery: [3]: each delivery must be a JSON object")


def test_the_ticket_routes_need_the_webhook_credentials(routes: TicketRoutes) -> None:
    response = post(routes, {"ticket_id": 1}, {"Authorization": "Basic bm9wZTpub3Bl"})
    assert response.status == 401 and response.content_type == "application/problem+json"
    assert routes.request_status(Request("GET", b"", {}), "ticket-1").status == 401
    assert routes.request_status(Request("GET", b"", AUTH), "ticket-999").status == 404


def test_the_requests_commands_list_show_and_refuse_an_unknown_request_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lifecycle.cli import main
    from lifecycle.settings import get_settings

    monkeypatch.setenv("LIFECYCLE_MAPPING_FILE", str(ROOT / "mapping.example.toml"))
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        store = EmbeddedRequestStore(tmp_path / "data" / "requests.sqlite3")
        record = RequestRecord("ticket-7", 7, "awaiting_approval", "plan posted", type_name="leaver")
        store.put(record, expected_version=0)
        store.close()
        assert main(["requests", "list", "--status", "awaiting_approval"]) == 0
        assert "ticket-7  awaiting_approval" in capsys.readouterr().out
        assert main(["requests", "show", "7", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["status"] == "awaiting_approval"
        assert main(["requests", "show", "8"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no request ticket-8" in err
    finally:
        get_settings.cache_clear()


def test_the_commented_requests_example_of_mapping_example_parses_when_uncommented() -> None:
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    block = text[text.index("# [requests]") :].splitlines()
    uncommented = "\n".join(line[2:] if line.startswith("# ") else "" for line in block)
    mapping = parse_mapping(text + "\n" + uncommented, "mapping.example.toml, uncommented")
    assert mapping.requests is not None and [t.kind for t in mapping.requests.types] == ["joiner", "leaver"]


def test_the_timer_spreads_its_ticket_reads_over_runs_to_spare_halos_shared_budget(tmp_path: Path) -> None:
    from lifecycle.requests.service import POLL_BUCKET_SECONDS, TicketRequests

    runtime = Runtime(make_settings(tmp_path))
    try:
        for ticket_id in range(1, 13):
            record = RequestRecord(f"ticket-{ticket_id}", ticket_id, "awaiting_approval")
            runtime.requests.put(record, expected_version=0)
        runtime.requests.put(RequestRecord("ticket-99", 99, "scheduled"), expected_version=0)
        base = 1_800_000_000 // POLL_BUCKET_SECONDS * POLL_BUCKET_SECONDS
        now = [float(base)]
        reads = []
        for run in range(12):
            now[0] = float(base + run * POLL_BUCKET_SECONDS)
            reads.append(TicketRequests(runtime, clock=lambda: now[0]).poll())
        # Each awaiting request is read every third run, the scheduled one once in twelve: 12 * 4 + 1 reads.
        assert sum(reads) == 49 and max(reads) <= 5
    finally:
        runtime.close()
