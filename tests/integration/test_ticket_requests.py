"""The Halo ticket loop end to end: HTTP, the queue and the worker, the real Samba DC and the Halo stand-in.

The clock of the worker (and so of the request loop, the pending work and the audit) is injected: dates are
fixed in December 2026, and "the start date comes" is the clock moving, never a sleep.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lifecycle.ingress import Request, Response
from lifecycle.local.samba import DCInfo
from lifecycle.mapping.planner import plan as plan_event
from lifecycle.mapping.schema import Mapping, parse_mapping
from lifecycle.queue import message_for
from lifecycle.requests.http import TicketRoutes
from lifecycle.requests.store import RequestRecord
from lifecycle.runtime import Runtime
from lifecycle.work import LifecycleEvent
from lifecycle.worker import ProcessResult, Worker
from tests.conftest import ROOT
from tests.integration.conftest import AUTH, World, admin_connection, dc_settings, delivery
from tests.integration.test_halo_api_with_ad import halo_client
from tests.standins.halo import HaloStandIn, UserSet

pytestmark = pytest.mark.integration
UF_ACCOUNTDISABLE = 2
_blocks = itertools.count(8_000_000, 100_000)
_names = itertools.count(1)

REQUESTS = """
[requests]
time_zone = "Europe/London"
site_time_zones = { "New York" = "America/New_York" }
approved_statuses = [21]
rejected_statuses = [22]

[[requests.types]]
name = "new-starter"
kind = "joiner"
when = { tickettype_name = "New Starter" }
person = { firstname = "{cf.first_name}", surname = "{cf.last_name}", department = "{cf.department}", site_name = "{site_name}", emailaddress = "{cf.personal_email}" }
start_date = "{cf.start_date}"
create_days_before = 3
enable_at = "08:00"

[[requests.types]]
name = "department-change"
kind = "mover"
when = { tickettype_name = "Department Change" }
approval = false
user = "{user_id}"
person = { department = "{cf.new_department}" }

[[requests.types]]
name = "leaver"
kind = "leaver"
when = { tickettype_name = "Leaver" }
user = "{cf.leaving_user}"
last_day = "{cf.last_day}"
"""  # noqa: E501 - one TOML line per table

ATLANTIS_RULE = """
[[ou.rules]]
when = { site_name = "Atlantis" }
ou = "OU=Atlantis<tag>,OU=Staff,OU=Halo,{base_dn}"
"""


def ticket_mapping(extra_ou_rule: str = "") -> Mapping:
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    if extra_ou_rule:
        text = text.replace("[[groups.rules]]", extra_ou_rule + "\n[[groups.rules]]", 1)
    return parse_mapping(text + REQUESTS, "mapping with requests")


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@dataclass
class TicketWorld(World):
    standin: HaloStandIn
    clock: list[float]

    def post_ticket(self, body: Any) -> Response:
        return TicketRoutes(self.runtime).tickets(Request("POST", json.dumps(body).encode(), AUTH))

    def webhook(self, ticket_id: int, event: str = "Ticket Status Changed") -> dict[str, Any]:
        """An "event information only" delivery for the ticket (ids and event name) [G838]."""
        body = {"id": f"d-{ticket_id}-{next(_names)}", "event": event, "object_id": ticket_id, "agent_id": 1}
        response = self.post_ticket(body)
        assert response.status == 202, response.body
        answer: dict[str, Any] = response.json()
        return answer

    def status(self, ticket_id: int) -> dict[str, Any]:
        response = TicketRoutes(self.runtime).request_status(Request("GET", b"", AUTH), f"ticket-{ticket_id}")
        assert response.status == 200, response.body
        answer: dict[str, Any] = response.json()
        return answer

    def record(self, ticket_id: int) -> RequestRecord:
        record = self.runtime.requests.get(f"ticket-{ticket_id}")
        assert record is not None
        return record

    def notes(self, ticket_id: int) -> list[str]:
        return [str(a["note"]) for a in self.standin.tickets.notes(ticket_id)]

    def move_clock(self, when: str) -> int:
        """Set the clock and release the pending work that is due by then (the timer's job)."""
        self.clock[0] = at(when)
        return self.worker.release_due()

    def tick(self, seconds: float = 60.0) -> None:
        """Time passes between what people do (Halo and the service share the clock)."""
        self.clock[0] += seconds

    def drain(self) -> list[ProcessResult]:
        self.tick()
        return super().drain()


@pytest.fixture
def standin() -> Iterator[HaloStandIn]:
    halo = HaloStandIn(UserSet(0, first_id=next(_blocks)), rate_limit=100_000, rate_window=1.0).start()
    yield halo
    halo.stop()


def make_world(
    directory: DCInfo, tmp_path: Path, standin: HaloStandIn, mapping: Mapping, **overrides: Any
) -> TicketWorld:
    settings = dc_settings(
        directory,
        tmp_path,
        retry_base_seconds=0.05,
        retry_cap_seconds=0.2,
        halo_api_url=standin.url,
        halo_client_id=standin.client_id,
        halo_client_secret=standin.client_secret,
        halo_ca_file=standin.ca_file,
        **{"halo_note_outcome": "Private Note", "halo_ticket_statuses": {"completed": 9}, **overrides},
    )
    runtime = Runtime(settings, mapping=mapping)
    runtime.__dict__["halo"] = halo_client(standin)
    clock = [at("2026-12-07T12:00:00")]
    worker = Worker(runtime, clock=lambda: clock[0])
    standin.tickets.clock = lambda: datetime.fromtimestamp(clock[0], UTC)
    return TicketWorld(directory, runtime, worker, admin_connection(directory), standin, clock)


@contextmanager
def own_world(
    directory: DCInfo, tmp_path: Path, standin: HaloStandIn, mapping: Mapping, **overrides: Any
) -> Iterator[TicketWorld]:
    made = make_world(directory, tmp_path, standin, mapping, **overrides)
    try:
        yield made
    finally:
        made.worker.close()
        made.ldap.unbind()
        made.runtime.close()


@pytest.fixture
def world(directory: DCInfo, tmp_path: Path, standin: HaloStandIn) -> Iterator[TicketWorld]:
    with own_world(directory, tmp_path, standin, ticket_mapping()) as made:
        yield made


def new_starter(
    world: TicketWorld, *, start: str | None = None, site: str = "Main", user_id: int = 1, **custom: str
) -> int:
    """A New Starter ticket raised by a manager (the ticket's user; ``user_id=0``: none), approval started."""
    surname = f"Starter{next(_names)}x"
    values = {"first_name": "Ada", "last_name": surname, "department": "Sales", **custom}
    if start:
        values["start_date"] = start
    fields = [
        {"id": 300 + i, "name": name, "type": 0, "value": value, "display": value}
        for i, (name, value) in enumerate(values.items())
    ]
    ticket = world.standin.tickets.add(
        tickettype_name="New Starter",
        summary=f"New starter {surname}",
        site_name=site,
        user_id=user_id,
        customfields=fields,
    )
    world.standin.tickets.start_approval(ticket["id"], ["Manager"])
    return int(ticket["id"])


# 1. The core flow ----------------------------------------------------------------------------------------------
def test_a_new_starter_not_in_halo_gets_a_halo_user_a_posted_plan_and_an_account_only_after_approval(
    world: TicketWorld,
) -> None:
    ticket_id = new_starter(world)
    answer = world.webhook(ticket_id, "New Ticket Logged")
    assert [a["request_id"] for a in answer["accepted"]] == [f"ticket-{ticket_id}"]
    assert [r.outcome for r in world.drain()] == ["completed"]

    record = world.record(ticket_id)
    assert record.status == "awaiting_approval" and record.halo_user_created
    user_id = record.halo_user_id
    assert user_id is not None
    halo_user = world.standin.users.get(user_id)
    assert halo_user is not None and halo_user["client_id"] == 12 and halo_user["site_id"] == 18
    assert world.standin.automations == []  # created with _dont_fire_automations
    [plan] = world.notes(ticket_id)
    assert f"Account plan {record.plan_digest}" in plan and "OU=Main,OU=Staff,OU=Halo" in plan
    assert "CN=Sales,OU=Groups" in plan and "Nothing is done before this plan is approved" in plan
    [posted] = world.standin.tickets.notes(ticket_id)
    assert posted["hiddenfromuser"] is True and posted["outcome"] == "Private Note"
    # The manager who raised the ticket stays its user, and the plan says so.
    assert world.standin.tickets.tickets[ticket_id]["user_id"] == 1 and world.standin.tickets.user_changes == []
    assert "The ticket's user stays Halo user 1" in plan and f"the new person is Halo user {user_id}" in plan
    assert world.account(user_id) is None  # nothing before approval

    # A runbook asking meanwhile changes nothing, and gets flat JSON.
    response = world.post_ticket({"ticket_id": ticket_id})
    assert response.status == 202 and response.json()["status"] == "awaiting_approval"
    world.drain()
    assert world.account(user_id) is None and len(world.notes(ticket_id)) == 1

    world.standin.tickets.decide(ticket_id, 1, 1)
    world.webhook(ticket_id)
    world.drain()
    account = world.account(user_id)
    assert account is not None and not int(account["userAccountControl"]) & UF_ACCOUNTDISABLE
    assert str(account["dn"]).startswith(f"CN=Ada {halo_user['surname']},OU=Main,OU=Staff,OU=Halo")
    notes = world.notes(ticket_id)
    assert len(notes) == 3 and notes[1].startswith(f"Plan {record.plan_digest} approved (Manager)")
    assert notes[2].startswith("Done: on approval") and "create_user on ad:default: changed" in notes[2]
    assert "reset it for the person before they first sign in" in notes[2]
    assert world.status(ticket_id)["status"] == "completed"
    assert (ticket_id, 9) in world.standin.tickets.status_changes

    # Replays of the deliveries, a runbook call and the timer post nothing twice.
    world.webhook(ticket_id)
    world.post_ticket({"ticket_id": ticket_id})
    from lifecycle.requests.service import TicketRequests

    TicketRequests(world.runtime, clock=lambda: world.clock[0]).poll()
    world.drain()
    assert len(world.notes(ticket_id)) == 3
    assert world.standin.tickets.status_changes.count((ticket_id, 9)) == 1


def test_a_rejected_request_changes_nothing_and_says_so(world: TicketWorld) -> None:
    ticket_id = new_starter(world)
    world.webhook(ticket_id, "New Ticket Logged")
    world.drain()
    world.standin.tickets.decide(ticket_id, 1, 2)
    world.webhook(ticket_id)
    world.drain()
    record = world.record(ticket_id)
    assert record.status == "rejected"
    assert record.halo_user_id is not None and world.account(record.halo_user_id) is None
    notes = world.notes(ticket_id)
    assert len(notes) == 2 and "was rejected (Manager): nothing was done" in notes[1]
    assert world.runtime.store.pending(user_id=record.halo_user_id) == []


def test_a_department_changed_after_the_plan_was_approved_needs_the_new_plan_approved_first(
    world: TicketWorld,
) -> None:
    ticket_id = new_starter(world)
    world.webhook(ticket_id, "New Ticket Logged")
    world.drain()
    first = world.record(ticket_id)
    # The approver approves, then someone edits the department before the service reads the ticket again.
    world.standin.tickets.decide(ticket_id, 1, 1)
    world.standin.tickets.change(ticket_id, custom={"department": "Engineering"})
    world.webhook(ticket_id)
    world.drain()
    second = world.record(ticket_id)
    assert second.status == "awaiting_approval" and second.plan_digest != first.plan_digest
    assert second.halo_user_id == first.halo_user_id
    assert first.halo_user_id is not None and world.account(first.halo_user_id) is None
    notes = world.notes(ticket_id)
    assert len(notes) == 2 and f"The ticket changed after plan {first.plan_digest}" in notes[1]
    assert "CN=Engineering,OU=Groups" in notes[1]

    # The old approval does not run the new plan; a new approval does.
    world.webhook(ticket_id)
    world.drain()
    assert world.account(first.halo_user_id) is None
    approved_again_runs_the_new_plan(world, ticket_id, first.halo_user_id)


def approved_again_runs_the_new_plan(world: TicketWorld, ticket_id: int, user_id: int) -> None:
    """Halo's approval restarted and given after the new plan's note: the new plan (Engineering) runs."""
    world.standin.tickets.start_approval(ticket_id, ["Manager"])
    world.webhook(ticket_id)
    world.drain()
    world.tick(5)
    world.standin.tickets.decide(ticket_id, 1, 1)
    world.webhook(ticket_id)
    world.drain()
    account = world.account(user_id)
    assert account is not None and account["department"] == "Engineering"
    assert world.record(ticket_id).status == "completed"


def test_after_a_re_plan_only_an_approval_halo_dates_after_the_new_note_counts_whatever_the_clock_skew(
    directory: DCInfo, tmp_path: Path, standin: HaloStandIn
) -> None:
    """Halo's clock runs 2 minutes ahead of the service's. The approval of the first plan, given before the
    ticket changed, is dated (by Halo) after the service's own time of the new plan: it ran the new plan
    unapproved. Now the new plan's note is dated by Halo too, the ticket goes back to the configured "awaiting
    approval" status (the API to restart Halo's approval is undocumented), and a new approval is needed."""
    statuses = {"awaiting_approval": 20, "completed": 9}
    with own_world(directory, tmp_path, standin, ticket_mapping(), halo_ticket_statuses=statuses) as world:
        world.standin.tickets.clock = lambda: datetime.fromtimestamp(world.clock[0] + 120, UTC)
        ticket_id = new_starter(world)
        world.webhook(ticket_id, "New Ticket Logged")
        world.drain()
        first = world.record(ticket_id)
        assert first.status == "awaiting_approval" and first.halo_user_id is not None
        world.tick(5)
        world.standin.tickets.decide(ticket_id, 1, 1)  # approves plan 1 (the ticket moves to 21, "Approved")
        world.standin.tickets.change(ticket_id, custom={"department": "Engineering"})
        world.webhook(ticket_id)
        world.drain()
        second = world.record(ticket_id)
        assert second.status == "awaiting_approval" and second.plan_digest != first.plan_digest
        notes = world.notes(ticket_id)
        assert "An approval given before this note does not count for it" in notes[1]
        assert world.standin.tickets.status_changes.count((ticket_id, 20)) == 2  # one per plan
        # The old approval, read after the new plan: nothing runs.
        world.webhook(ticket_id)
        world.drain()
        assert world.record(ticket_id).status == "awaiting_approval" and world.account(first.halo_user_id) is None
        # A new approval, after the new note: the new plan runs.
        approved_again_runs_the_new_plan(world, ticket_id, first.halo_user_id)


# 2. Future dates -----------------------------------------------------------------------------------------------
def test_a_future_start_date_creates_the_account_disabled_days_before_and_enables_it_on_the_day(
    world: TicketWorld,
) -> None:
    ticket_id = new_starter(world, start="2026-12-17")
    world.webhook(ticket_id, "New Ticket Logged")
    world.drain()
    record = world.record(ticket_id)
    user_id = record.halo_user_id
    assert user_id is not None
    [plan] = world.notes(ticket_id)
    assert "2026-12-14 08:00 Europe/London, 3 day(s) before the start date: the account is created disabled" in plan
    assert "2026-12-17 08:00 Europe/London, the start date 2026-12-17: the account is enabled" in plan
    world.standin.tickets.decide(ticket_id, 1, 1)
    world.webhook(ticket_id)
    world.drain()
    assert world.record(ticket_id).status == "scheduled" and world.account(user_id) is None
    pending = world.runtime.store.pending(user_id=user_id)
    assert [(p.key, p.due_at.isoformat()) for p in pending] == [
        (f"request:ticket-{ticket_id}:create", "2026-12-14T08:00:00+00:00"),
        (f"request:ticket-{ticket_id}:enable", "2026-12-17T08:00:00+00:00"),
    ]
    assert world.move_clock("2026-12-14T07:59:59") == 0

    assert world.move_clock("2026-12-14T08:00:00") == 1
    world.drain()
    account = world.account(user_id)
    assert account is not None and int(account["userAccountControl"]) & UF_ACCOUNTDISABLE
    assert world.notes(ticket_id)[-1].startswith("Done: 2026-12-14 08:00 Europe/London")
    assert world.record(ticket_id).status == "scheduled"

    # The person's own Halo events meanwhile (a mover) leave the scheduled start alone.
    halo_user = world.standin.users.get(user_id)
    assert halo_user is not None
    # (Planned here rather than posted: the ingress refuses a timestamp ahead of the real clock, and this
    # test's clock is days ahead of it.)
    world.clock[0] = at("2026-12-15T09:00:00")
    event = LifecycleEvent(
        kind="updated",
        user_id=user_id,
        occurred_at=datetime.fromtimestamp(world.clock[0], UTC),
        source="webhook",
        user={**halo_user, "title": "Analyst"},
    )
    runtime = world.runtime
    mover = plan_event(event, runtime.mapping, work_id=f"m-{user_id}", context=runtime.plan_context, status="active")
    world.runtime.queue.send([message_for(mover)])
    assert [r.outcome for r in world.drain()] == ["completed"]
    assert [p.key for p in world.runtime.store.pending(user_id=user_id)] == [f"request:ticket-{ticket_id}:enable"]
    assert world.move_clock("2026-12-17T08:00:00") == 1
    world.drain()
    account = world.account(user_id)
    assert account is not None and not int(account["userAccountControl"]) & UF_ACCOUNTDISABLE
    notes = world.notes(ticket_id)
    assert notes[-1].startswith("Done: 2026-12-17 08:00 Europe/London, the start date")
    assert len(notes) == 4 and world.record(ticket_id).status == "completed"


def test_a_start_date_moved_after_approval_is_planned_posted_and_approved_again(world: TicketWorld) -> None:
    ticket_id = new_starter(world, start="2026-12-17")
    world.webhook(ticket_id, "New Ticket Logged")
    world.drain()
    world.standin.tickets.decide(ticket_id, 1, 1)
    world.webhook(ticket_id)
    world.drain()
    user_id = world.record(ticket_id).halo_user_id
    world.standin.tickets.change(ticket_id, custom={"start_date": "2026-12-21"})
    world.webhook(ticket_id, "Ticket Updated")
    world.drain()
    record = world.record(ticket_id)
    assert record.status == "awaiting_approval"
    assert world.runtime.store.pending(user_id=user_id) == []  # the old dates are cancelled
    assert "2026-12-21 08:00 Europe/London, the start date" in world.notes(ticket_id)[-1]
    world.standin.tickets.start_approval(ticket_id, ["Manager"])
    world.webhook(ticket_id)
    world.drain()
    world.standin.tickets.decide(ticket_id, 1, 1)
    world.webhook(ticket_id)
    world.drain()
    assert [p.due_at.isoformat() for p in world.runtime.store.pending(user_id=user_id)] == [
        "2026-12-18T08:00:00+00:00",
        "2026-12-21T08:00:00+00:00",
    ]


def test_a_leaver_with_a_last_day_is_disabled_at_the_end_of_that_day_in_the_sites_time_zone(
    world: TicketWorld,
) -> None:
    added = world.standin.users.add({"name": "Lee Leaving", "firstname": "Lee", "surname": f"Leaving{next(_names)}"})
    leaving = world.standin.users.update(added["id"], {"site_name": "New York", "department": "Sales"})
    world.post(delivery("created", leaving))
    world.drain()
    assert world.account(leaving["id"]) is not None
    fields = [
        {"id": 401, "name": "leaving_user", "type": 0, "value": str(leaving["id"]), "display": str(leaving["id"])},
        {"id": 402, "name": "last_day", "type": 4, "value": "2026-12-18T00:00:00", "display": "18/12/2026"},
    ]
    ticket = world.standin.tickets.add(tickettype_name="Leaver", site_name="New York", user_id=1, customfields=fields)
    world.standin.tickets.start_approval(ticket["id"], ["HR"])
    world.webhook(ticket["id"], "New Ticket Logged")
    world.drain()
    assert "at the end of the last day 2026-12-18 (2026-12-19 00:00 America/New_York)" in world.notes(ticket["id"])[0]
    world.standin.tickets.decide(ticket["id"], 1, 1)
    world.webhook(ticket["id"])
    world.drain()
    # Midnight in New York is 05:00 UTC in December.
    assert world.move_clock("2026-12-19T04:59:59") == 0
    account = world.account(leaving["id"])
    assert account is not None and not int(account["userAccountControl"]) & UF_ACCOUNTDISABLE
    assert world.move_clock("2026-12-19T05:00:00") == 1
    world.drain()
    account = world.account(leaving["id"])
    assert account is not None and int(account["userAccountControl"]) & UF_ACCOUNTDISABLE
    assert str(account["dn"]).split(",", 1)[1].startswith("OU=Disabled,OU=Halo")
    assert world.notes(ticket["id"])[-1].startswith("Done: at the end of the last day 2026-12-18")
    assert world.record(ticket["id"]).status == "completed"


# 3. Failures --------------------------------------------------------------------------------------------------
def test_a_missing_ou_posts_the_reason_and_a_replay_after_the_fix_posts_the_success(
    directory: DCInfo, tmp_path: Path, standin: HaloStandIn
) -> None:
    tag = str(next(_names))
    mapping = ticket_mapping(ATLANTIS_RULE.replace("<tag>", tag))
    with own_world(directory, tmp_path, standin, mapping) as world:
        ticket_id = new_starter(world, site="Atlantis")
        world.webhook(ticket_id, "New Ticket Logged")
        world.drain()
        world.standin.tickets.decide(ticket_id, 1, 1)
        world.webhook(ticket_id)
        results = world.drain()
        assert [r.outcome for r in results] == ["completed", "dead_lettered"]
        record = world.record(ticket_id)
        assert record.status == "failed" and world.status(ticket_id)["status"] == "failed"
        failed = world.notes(ticket_id)[-1]
        assert failed.startswith("Failed: on approval")
        assert f"the OU OU=Atlantis{tag},OU=Staff,OU=Halo,{directory.base_dn} does not exist" in failed
        assert "an operator replays the work" in failed

        # The fix: the OU is created; the operator replays the dead letter.
        world.ldap.add(f"OU=Atlantis{tag},OU=Staff,OU=Halo,{directory.base_dn}", "organizationalUnit")
        [dead] = world.runtime.queue.dead_letters()
        world.runtime.queue.replay(dead.sequence_number)
        assert [r.outcome for r in world.drain()] == ["completed"]
        assert record.halo_user_id is not None and world.account(record.halo_user_id) is not None
        notes = world.notes(ticket_id)
        assert notes[-1].startswith("Done: on approval") and len(notes) == 4
        assert world.record(ticket_id).status == "completed"
        # A second replay (an accident) posts nothing more.
        world.webhook(ticket_id)
        world.drain()
        assert len(world.notes(ticket_id)) == 4


def test_a_cancelled_request_drops_its_dated_phases_and_says_so_on_the_ticket(world: TicketWorld) -> None:
    from lifecycle.requests.service import TicketRequests

    ticket_id = new_starter(world, start="2026-12-17")
    world.webhook(ticket_id, "New Ticket Logged")
    world.drain()
    world.standin.tickets.decide(ticket_id, 1, 1)
    world.webhook(ticket_id)
    world.drain()
    user_id = world.record(ticket_id).halo_user_id
    assert len(world.runtime.store.pending(user_id=user_id)) == 2
    record = TicketRequests(world.runtime, clock=lambda: world.clock[0]).cancel(f"ticket-{ticket_id}", by="ops")
    assert record.status == "cancelled" and world.runtime.store.pending(user_id=user_id) == []
    assert world.notes(ticket_id)[-1].startswith("Cancelled by ops: nothing more runs")
    assert world.move_clock("2026-12-18T00:00:00") == 0
    world.webhook(ticket_id)
    world.drain()
    assert user_id is not None and world.account(user_id) is None
    assert world.status(ticket_id)["status"] == "cancelled"


def test_a_result_note_halo_cannot_take_now_is_posted_by_the_timer_once_halo_is_back(world: TicketWorld) -> None:
    from lifecycle.requests.service import TicketRequests

    world.runtime.__dict__["halo"] = halo_client(world.standin, patience=0.3)
    ticket_id = new_starter(world)
    world.webhook(ticket_id, "New Ticket Logged")
    world.drain()
    world.standin.tickets.decide(ticket_id, 1, 1)
    world.webhook(ticket_id)
    ticket_trigger = world.runtime.queue.receive(timeout=0)
    assert ticket_trigger is not None and world.worker.process_message(ticket_trigger).outcome == "completed"
    phase = world.runtime.queue.receive(timeout=0)
    assert phase is not None
    world.standin.inject([(503, None)] * 100)
    assert world.worker.process_message(phase).outcome == "completed"  # the account is made; the note waits
    world.standin.clear_injections()
    record = world.record(ticket_id)
    assert record.status == "completed" and record.notes_owed and len(world.notes(ticket_id)) == 2
    assert record.halo_user_id is not None and world.account(record.halo_user_id) is not None

    timer = TicketRequests(world.runtime, clock=lambda: world.clock[0])
    timer.poll()
    timer.poll()
    notes = world.notes(ticket_id)
    assert len(notes) == 3 and notes[-1].startswith("Done: on approval")
    assert not world.record(ticket_id).notes_owed


def test_a_dry_run_writes_nothing_to_halo_and_runs_nothing(
    directory: DCInfo, tmp_path: Path, standin: HaloStandIn
) -> None:
    with own_world(directory, tmp_path, standin, ticket_mapping(), dry_run=True) as world:
        ticket_id = new_starter(world)
        world.webhook(ticket_id, "New Ticket Logged")
        assert [r.outcome for r in world.drain()] == ["completed"]
        record = world.record(ticket_id)
        assert record.message.startswith("dry run: plan ") and record.halo_user_id is None
        assert world.notes(ticket_id) == [] and world.standin.writes == []
        assert world.standin.tickets.status_changes == []


def test_the_local_host_serves_the_ticket_routes_over_http(world: TicketWorld) -> None:
    import httpx

    from lifecycle.local.server import LocalHost
    from tests.integration.test_local_service import wait_until

    ticket_id = new_starter(world)
    host = LocalHost(world.runtime, host="127.0.0.1", port=0, workers=1)
    host.start()
    try:
        body = json.dumps({"ticket_id": ticket_id}).encode()
        response = httpx.post(f"{host.url}/api/halo/tickets", content=body, headers=AUTH, timeout=10)
        assert response.status_code == 202 and response.json()["request_id"] == f"ticket-{ticket_id}"
        wait_until(lambda: len(world.notes(ticket_id)) == 1, seconds=30, what="the plan note")
        answer = httpx.get(f"{host.url}/api/halo/requests/ticket-{ticket_id}", headers=AUTH, timeout=10)
        assert answer.status_code == 200 and answer.json()["status"] == "awaiting_approval"
        missing = httpx.get(f"{host.url}/api/halo/requests/ticket-1", headers=AUTH, timeout=10)
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    finally:
        host.stop()


def test_a_phase_held_by_the_mass_change_guard_is_noted_and_its_release_is_noted_when_done(
    directory: DCInfo, tmp_path: Path, standin: HaloStandIn
) -> None:
    from lifecycle.guard import MassChangeGuard

    with own_world(directory, tmp_path, standin, ticket_mapping(), guard_max_joiners=1) as world:
        first, second = new_starter(world), new_starter(world)
        for ticket_id in (first, second):
            world.webhook(ticket_id, "New Ticket Logged")
        world.drain()
        for ticket_id in (first, second):
            world.standin.tickets.decide(ticket_id, 1, 1)
            world.webhook(ticket_id)
        world.drain()
        assert world.record(first).status == "completed"
        assert world.record(second).status == "held"
        held_note = world.notes(second)[-1]
        assert held_note.startswith("Held for an operator: on approval") and "lifecycle held list" in held_note
        [held] = world.runtime.store.held()
        MassChangeGuard(world.runtime.settings, world.runtime.store).approve(
            held.held_id, world.runtime.queue, by="ops", source="test"
        )
        world.drain()
        assert world.record(second).status == "completed"
        notes = world.notes(second)
        assert notes[-1].startswith("Done: on approval") and len(notes) == 4


def test_dry_run_on_the_ticket_route_answers_the_plan_and_writes_nothing(world: TicketWorld) -> None:
    ticket_id = new_starter(world, start="2026-12-17")
    raw = json.dumps({"ticket_id": ticket_id}).encode()
    response = TicketRoutes(world.runtime, clock=lambda: world.clock[0]).tickets(
        Request("POST", raw, AUTH, {"dry_run": "true"})
    )
    assert response.status == 200, response.body
    [planned] = response.json()["plans"]
    assert [p["name"] for p in planned["phases"]] == ["create", "enable"]
    assert "2026-12-14 08:00 Europe/London" in planned["note"] and "CN=Sales,OU=Groups" in planned["note"]
    assert world.runtime.queue.receive(timeout=0) is None
    assert world.notes(ticket_id) == [] and world.standin.writes == []
    assert world.runtime.requests.get(f"ticket-{ticket_id}") is None


def test_a_dated_phase_cancelled_as_pending_work_is_noted_on_the_ticket(world: TicketWorld) -> None:
    from lifecycle.operations import cancel_staged

    ticket_id = new_starter(world, start="2026-12-17")
    world.webhook(ticket_id, "New Ticket Logged")
    world.drain()
    world.standin.tickets.decide(ticket_id, 1, 1)
    world.webhook(ticket_id)
    world.drain()
    user_id = world.record(ticket_id).halo_user_id
    assert user_id is not None
    cancel_staged(world.runtime, user_id, f"request:ticket-{ticket_id}:enable", by="ops", source="cli")
    note = world.notes(ticket_id)[-1]
    assert note.startswith("Cancelled: 2026-12-17 08:00 Europe/London") and "cancelled by ops" in note
    assert world.record(ticket_id).status == "scheduled"  # the creation is still to come
    assert world.move_clock("2026-12-14T08:00:00") == 1
    world.drain()
    assert world.move_clock("2026-12-18T00:00:00") == 0
    account = world.account(user_id)
    assert account is not None and int(account["userAccountControl"]) & UF_ACCOUNTDISABLE
    assert world.record(ticket_id).status == "cancelled"


def test_a_mover_ticket_without_approval_runs_at_once_for_the_tickets_user(world: TicketWorld) -> None:
    added = world.standin.users.add({"name": "Mo Mover", "firstname": "Mo", "surname": f"Mover{next(_names)}"})
    mover = world.standin.users.update(added["id"], {"site_name": "Main", "department": "Sales"})
    world.post(delivery("created", mover))
    world.drain()
    field = {"id": 501, "name": "new_department", "type": 0, "value": "Engineering", "display": "Engineering"}
    ticket = world.standin.tickets.add(tickettype_name="Department Change", user_id=mover["id"], customfields=[field])
    world.webhook(ticket["id"], "New Ticket Logged")
    world.drain()
    account = world.account(mover["id"])
    assert account is not None and account["department"] == "Engineering"
    notes = world.notes(ticket["id"])
    assert "(mover)" in notes[0] and "Nothing is done before" not in notes[0]
    assert "no approval needed (mapping)" in notes[1] and notes[2].startswith("Done: at once")
    assert world.record(ticket["id"]).status == "completed"


def test_a_note_whose_answer_was_lost_is_found_on_the_ticket_and_not_posted_again(
    world: TicketWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lifecycle.errors import Retryable
    from lifecycle.halo.tickets import HaloTickets
    from lifecycle.requests.notes import Note, marker
    from lifecycle.requests.service import TicketRequests

    ticket_id = new_starter(world)
    original = HaloTickets.post_note
    lost: list[int] = []

    def post_then_lose_the_answer(self: HaloTickets, ticket: int, **kwargs: Any) -> int | None:
        action_id = original(self, ticket, **kwargs)
        if not lost:
            lost.append(1)
            raise Retryable("Halo API: POST /api/Actions timed out")  # Halo saved it; we never heard
        return action_id

    monkeypatch.setattr(HaloTickets, "post_note", post_then_lose_the_answer)
    key = "result:run:completed"
    note = Note(key, "Done\n\n" + marker(f"ticket-{ticket_id}", key), "<p>Done</p>")
    loop = TicketRequests(world.runtime, clock=lambda: world.clock[0])
    with pytest.raises(Retryable):
        loop.post_note(f"ticket-{ticket_id}", ticket_id, note)
    assert len(world.notes(ticket_id)) == 1
    # The retry (any worker) finds the note by its reference line instead of posting a second one.
    assert loop.post_note(f"ticket-{ticket_id}", ticket_id, note) is False
    assert loop.post_note(f"ticket-{ticket_id}", ticket_id, note) is False
    assert len(world.notes(ticket_id)) == 1


def test_a_new_starter_ticket_without_a_user_is_linked_to_the_created_person_once_across_a_retry(
    world: TicketWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lifecycle.errors import Retryable
    from lifecycle.halo.tickets import HaloTickets
    from lifecycle.requests.service import TicketRequests

    ticket_id = new_starter(world, user_id=0)
    original = HaloTickets.set_user
    lost: list[int] = []

    def set_then_lose_the_answer(self: HaloTickets, ticket: int, user: int) -> None:
        original(self, ticket, user)
        if not lost:
            lost.append(1)
            raise Retryable("Halo API: POST /api/Tickets timed out")  # Halo saved it; we never heard

    monkeypatch.setattr(HaloTickets, "set_user", set_then_lose_the_answer)
    loop = TicketRequests(world.runtime, clock=lambda: world.clock[0])
    with pytest.raises(Retryable):
        loop.advance(ticket_id)
    record = world.record(ticket_id)
    assert record.halo_user_created and record.halo_user_id
    user_id = record.halo_user_id
    # The retry finds the ticket linked and does not write again; replays and the timer do not either.
    loop.advance(ticket_id)
    world.webhook(ticket_id)
    world.drain()
    TicketRequests(world.runtime, clock=lambda: world.clock[0]).poll()
    assert world.standin.tickets.tickets[ticket_id]["user_id"] == user_id
    assert world.standin.tickets.user_changes == [(ticket_id, user_id)]
    [plan] = world.notes(ticket_id)
    assert "The ticket's user stays" not in plan and world.record(ticket_id).status == "awaiting_approval"


# 5. Whom a request concerns ------------------------------------------------------------------------------------
def test_a_leaver_ticket_raised_by_a_manager_never_concerns_the_manager_and_an_unclear_subject_is_refused(
    world: TicketWorld,
) -> None:
    """A leaver request's subject is the field the mapping names, by id or e-mail, never the ticket's user (the
    manager who raised it); an empty field or an e-mail address two users share is refused with a note saying
    what to fill in, and nothing is planned until the field names one person."""
    people = {}
    for role in ("Manager", "Leaver"):
        added = world.standin.users.add({"name": f"{role} P", "firstname": role, "surname": f"P{next(_names)}"})
        email = f"{role.lower()}.{added['id']}@corp.example.test"
        people[role] = world.standin.users.update(added["id"], {"site_name": "Main", "emailaddress": email})
        world.post(delivery("created", people[role]))
    for twin in range(2):  # two Halo users sharing one address (a shared mailbox imported twice)
        world.standin.users.add({"name": f"Shared {twin}", "emailaddress": "Team@corp.example.test"})
    world.drain()
    manager, leaver = people["Manager"], people["Leaver"]
    assert world.account(manager["id"]) is not None and world.account(leaver["id"]) is not None

    empty = {"id": 401, "name": "leaving_user", "type": 0, "value": "", "display": ""}
    ticket = world.standin.tickets.add(tickettype_name="Leaver", user_id=manager["id"], customfields=[empty])
    ticket_id = int(ticket["id"])
    world.standin.tickets.start_approval(ticket_id, ["HR"])
    world.webhook(ticket_id, "New Ticket Logged")
    assert [r.outcome for r in world.drain()] == ["completed"]
    [note] = world.notes(ticket_id)
    assert note.startswith("Nothing was planned: this request does not say whom it concerns")
    assert "fill the ticket's custom field leaving_user with the Halo user id or the e-mail address" in note
    record = world.record(ticket_id)
    assert record.status == "received" and not record.plan and "leaving_user is empty" in record.message
    assert world.status(ticket_id)["status"] == "received"
    # The same problem read again (the timer, a re-sent webhook) is not noted twice.
    world.webhook(ticket_id)
    world.drain()
    assert len(world.notes(ticket_id)) == 1

    world.standin.tickets.change(ticket_id, custom={"leaving_user": "team@corp.example.test"})
    world.webhook(ticket_id, "Ticket Updated")
    world.drain()
    notes = world.notes(ticket_id)
    assert len(notes) == 2 and "2 Halo users have the e-mail address team@corp.example.test" in notes[1]
    assert "fill it with the person's Halo user id instead" in notes[1] and not world.record(ticket_id).plan
    # HR approves meanwhile: nothing runs, for anybody.
    world.standin.tickets.decide(ticket_id, 1, 1)
    world.webhook(ticket_id)
    world.drain()
    for person in (manager, leaver):
        account = world.account(person["id"])
        assert account is not None and not int(account["userAccountControl"]) & UF_ACCOUNTDISABLE

    # The field names the leaver by e-mail (in another case): the plan concerns them, and needs a new approval.
    world.standin.tickets.change(ticket_id, custom={"leaving_user": leaver["emailaddress"].upper()})
    world.webhook(ticket_id, "Ticket Updated")
    world.drain()
    record = world.record(ticket_id)
    assert record.status == "awaiting_approval" and record.halo_user_id == leaver["id"]
    assert f"Halo user {leaver['id']}" in world.notes(ticket_id)[2]
    world.webhook(ticket_id)
    world.drain()
    assert world.record(ticket_id).status == "awaiting_approval"  # HR's approval predates this plan
    world.standin.tickets.start_approval(ticket_id, ["HR"])
    world.webhook(ticket_id)
    world.drain()
    world.standin.tickets.decide(ticket_id, 1, 1)
    world.webhook(ticket_id)
    world.drain()
    assert world.record(ticket_id).status == "completed"
    gone, kept = world.account(leaver["id"]), world.account(manager["id"])
    assert gone is not None and int(gone["userAccountControl"]) & UF_ACCOUNTDISABLE
    assert kept is not None and not int(kept["userAccountControl"]) & UF_ACCOUNTDISABLE
