"""Pure parts of the ticket loop: which request a ticket is, its person, its dated phases, its digest, and
what Halo's approval fields say. No I/O and no clock: ``now`` is passed in, so the plan posted to a ticket is
exactly what a later read of the same ticket plans again (same digest), and tests fix every date.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lifecycle.errors import ConfigurationError, Permanent
from lifecycle.mapping.planner import PersonStatus, PlanContext, flat_fields, matches, plan
from lifecycle.mapping.schema import Mapping, Requests, RequestType
from lifecycle.mapping.templates import MissingField, compile_template, render
from lifecycle.work import EventKind, LifecycleEvent, Step, WorkItem, canonical_json

ApprovalState = Literal["approved", "rejected", "pending"]
# Halo's approval result codes: 1 approve, 2 reject (POST /api/ticketapproval) [G2345]; others unconfirmed.
APPROVE, REJECT = 1, 2


def ticket_context(ticket: MappingABC[str, Any], fields: MappingABC[str, Any] | None = None) -> dict[str, str | None]:
    """The ticket's fields as conditions and templates read them; a runbook's ``fields`` win.

    A date custom field (type 4, django-psa's map [DJ-utils]) reads its raw ``value`` (ISO), not its
    ``display``, which is in the agent's locale ("18/12/2026": day or month first cannot be told).
    """
    context = flat_fields(ticket)
    dates = [
        {**c, "display": None}
        for c in ticket.get("customfields") or []
        if isinstance(c, dict) and str(c.get("type")) == "4" and isinstance(c.get("value"), str) and c["value"]
    ]
    context.update(flat_fields({"customfields": dates}))
    for name, value in (fields or {}).items():
        if value is None or value == "":
            continue  # Halo renders an unset runbook variable as "": absent, never a value
        context[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return context


def match_type(requests: Requests, context: MappingABC[str, str | None]) -> RequestType | None:
    """The first ``[[requests.types]]`` entry whose conditions the ticket meets."""
    for kind in requests.types:
        if matches(kind.when, context):
            return kind
    return None


def _optional(source: str | None, context: MappingABC[str, str | None]) -> str | None:
    if not source:
        return None
    try:
        rendered = render(source, context).strip()
    except MissingField:
        return None
    return rendered or None


def person_fields(kind: RequestType, context: MappingABC[str, str | None]) -> dict[str, str]:
    """The person's Halo fields rendered from the ticket; a template reading an absent field is left out."""
    rendered = {name: _optional(source, context) for name, source in kind.person.items()}
    return {name: value for name, value in rendered.items() if value is not None}


class SubjectUnclear(Permanent):
    """The ticket does not say, unambiguously, which Halo user a request concerns: nothing is planned, and a
    note on the ticket says what to fill in (``fill``)."""

    def __init__(self, message: str, fill: str) -> None:
        super().__init__(message)
        self.fill = fill


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _field_hint(source: str) -> str:
    """Where the agent fills the subject in, in their words (``cf.leaving_user`` -> custom field leaving_user)."""
    names = sorted(compile_template(source).fields)
    if names == ["user_id"]:
        return "the ticket's user"
    custom = [n.removeprefix("cf.") for n in names if n.startswith("cf.")]
    if custom:
        return "the ticket's custom field " + " / ".join(custom)
    return "the ticket's field " + " / ".join(names) if names else repr(source)


def concerned_user(kind: RequestType, context: MappingABC[str, str | None]) -> int | str | None:
    """The Halo user the request concerns: an id, an e-mail address to look up, or None (a joiner to create).

    Raises ``SubjectUnclear`` when a leaver's or mover's ticket does not name exactly one person: the field is
    empty, or holds neither a Halo user id nor an e-mail address.
    """
    source = kind.user
    if source is None:
        if kind.kind == "joiner":
            return None
        # The schema requires it; a hand-built RequestType without one never falls back to the ticket's user.
        raise ConfigurationError(f"request {kind.name}: a {kind.kind} request needs user = <template>")
    text = _optional(source, context)
    where = _field_hint(source)
    fill = f"fill {where} with the Halo user id or the e-mail address of the person who {_verb(kind)}"
    if text is None:
        if kind.kind == "joiner":
            return None
        raise SubjectUnclear(f"request {kind.name}: the ticket does not say whom it concerns ({where} is empty)", fill)
    if _EMAIL.match(text):
        return text.lower()
    try:
        value = int(float(text))
    except ValueError:
        raise SubjectUnclear(
            f"request {kind.name}: {where} holds {text!r}, which is neither a Halo user id nor an e-mail address",
            fill,
        ) from None
    if value <= 0:
        raise SubjectUnclear(f"request {kind.name}: {where} holds {value}, which is not a Halo user id", fill)
    return value


def _verb(kind: RequestType) -> str:
    return {"leaver": "leaves", "mover": "moves"}.get(kind.kind, "starts")


def parse_date(text: str, zone: ZoneInfo, what: str) -> date:
    """A ticket's date: ``YYYY-MM-DD``, or a date-time (an offset is read in the person's zone first).

    Halo's format for date custom fields is unconfirmed: a date-time at midnight UTC and a plain date are both
    seen in clients, so both are read, and anything else is refused with the value shown.
    """
    value = text.strip()
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Permanent(f"the {what} {value!r} is not a date (use YYYY-MM-DD)") from None
    if moment.tzinfo is not None and (moment.hour, moment.minute) != (0, 0):
        moment = moment.astimezone(zone)
    return moment.date()


def person_zone(requests: Requests, person: MappingABC[str, Any], ticket: MappingABC[str, Any]) -> ZoneInfo:
    """The person's time zone: the mapping's by site, then by client, then the ticket's site zone, then default."""
    site = str(person.get("site_name") or ticket.get("site_name") or "").strip().lower()
    client = str(person.get("client_name") or ticket.get("client_name") or "").strip().lower()
    for table, key in ((requests.site_time_zones, site), (requests.client_time_zones, client)):
        for name, zone in table.items():
            if key and name.strip().lower() == key:
                return ZoneInfo(zone)
    halo_zone = ticket.get("site_timezone")
    if isinstance(halo_zone, str) and halo_zone.strip():
        try:
            return ZoneInfo(halo_zone.strip())
        except (ZoneInfoNotFoundError, ValueError):
            pass  # Halo may give a Windows zone name ("GMT Standard Time"): the mapping's default decides
    return ZoneInfo(requests.time_zone)


@dataclass(frozen=True)
class Phase:
    """A part of the plan that runs at one time: on approval (``due_at`` None) or at its date."""

    name: str
    label: str
    due_at: datetime | None
    item: WorkItem

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "due_at": self.due_at.isoformat() if self.due_at else None,
            "item": self.item.model_dump(mode="json"),
        }

    @classmethod
    def from_json(cls, data: MappingABC[str, Any]) -> Phase:
        due = data.get("due_at")
        return cls(
            data["name"],
            data["label"],
            datetime.fromisoformat(due) if due else None,
            WorkItem.model_validate(data["item"]),
        )


@dataclass(frozen=True)
class RequestPlan:
    phases: tuple[Phase, ...]
    digest: str
    inputs_digest: str
    zone: str


def _local(day: date, clock: str, zone: ZoneInfo) -> datetime:
    hour, minute = (int(p) for p in clock.split(":"))
    return datetime.combine(day, time(hour, minute), tzinfo=zone).astimezone(UTC)


def _when(moment: datetime, zone: ZoneInfo) -> str:
    return f"{moment.astimezone(zone):%Y-%m-%d %H:%M} {zone.key}"


def build_plan(
    kind: RequestType,
    mapping: Mapping,
    *,
    request_id: str,
    ticket: MappingABC[str, Any],
    context: MappingABC[str, str | None],
    user_id: int,
    user: MappingABC[str, Any],
    status: PersonStatus,
    now: datetime,
    plan_context: PlanContext | None = None,
) -> RequestPlan:
    """The request's phases, each a work item the worker runs exactly as posted.

    Args:
        kind: the matched request type.
        mapping: the whole mapping (step lists, naming, OUs, groups).
        request_id: the request's id (work ids derive from it and the plan's digest).
        ticket: the ticket as Halo returned it.
        context: the ticket's fields (``ticket_context``).
        user_id: the Halo user the request concerns (created for a joiner).
        user: that user's fields as Halo holds them, before the ticket's person fields are applied.
        status: what the service last applied for the person (a joiner who left before is a rehire).
        now: the time of planning; a date already past runs on approval.
        plan_context: base DNs of the connections.
    """
    assert mapping.requests is not None
    person = {**user, **person_fields(kind, context), "id": user_id}
    zone = person_zone(mapping.requests, person, ticket)
    event_kind: EventKind = "created" if kind.kind == "joiner" else "updated"
    if kind.kind == "leaver":
        person["inactive"] = True
    event = LifecycleEvent(
        kind=event_kind,
        user_id=user_id,
        occurred_at=now,
        source="ticket",
        halo_event=f"ticket {ticket.get('id')}",
        user=person,
    )
    base = plan(event, mapping, work_id="", context=plan_context, status=status)
    phases: list[Phase] = []
    at_once = "on approval" if kind.approval else "at once"
    start_text = _optional(kind.start_date, context)
    last_text = _optional(kind.last_day, context)
    if kind.kind == "joiner" and start_text:
        start = parse_date(start_text, zone, "start date")
        enable_at = _local(start, kind.enable_at, zone)
        if enable_at > now:
            create_at = _local(start - timedelta(days=kind.create_days_before), kind.enable_at, zone)
            steps = [
                Step.model_validate({**s.model_dump(), "params": {**s.params, "enabled": False}})
                if s.action == "create_user"
                else s
                for s in base.steps
                if s.action != "enable_user"
            ]
            target = next((s.target for s in base.steps if s.system == "ad"), mapping.routing.default)
            create_label = (
                f"{_when(create_at, zone)}, {kind.create_days_before} day(s) before the start date: the account is "
                "created disabled"
            )
            phases.append(
                Phase(
                    "create",
                    create_label if create_at > now else f"{at_once}: the account is created disabled",
                    create_at if create_at > now else None,
                    base.model_copy(update={"steps": steps}),
                )
            )
            enable = Step(key="01-enable_user", action="enable_user", target=target)
            phases.append(
                Phase(
                    "enable",
                    f"{_when(enable_at, zone)}, the start date {start.isoformat()}: the account is enabled",
                    enable_at,
                    base.model_copy(update={"steps": [enable]}),
                )
            )
    if kind.kind == "leaver" and last_text:
        last = parse_date(last_text, zone, "last day")
        end = _local(last + timedelta(days=1), "00:00", zone)
        if end > now:
            label = f"at the end of the last day {last.isoformat()} ({_when(end, zone)})"
            phases.append(Phase("run", label, end, base))
    if not phases:
        phases.append(Phase("run", at_once, None, base))
    material = [
        {
            "name": p.name,
            "due_at": p.due_at.isoformat() if p.due_at else None,
            "lifecycle": p.item.lifecycle,
            "user_id": user_id,
            "anchor": p.item.anchor,
            "steps": [s.model_dump(mode="json") for s in p.item.steps],
        }
        for p in phases
    ]
    digest = hashlib.sha256(canonical_json(material).encode("utf-8")).hexdigest()[:16]
    inputs = {
        "type": kind.name,
        "user_id": user_id,
        "person": person_fields(kind, context),
        "start": start_text,
        "last": last_text,
        "zone": zone.key,
    }
    inputs_digest = hashlib.sha256(canonical_json(inputs).encode("utf-8")).hexdigest()[:16]
    final = tuple(
        Phase(
            p.name,
            p.label,
            p.due_at,
            p.item.model_copy(
                update={
                    "work_id": f"{request_id}-{p.name}-{digest[:10]}",
                    "request_id": request_id,
                    "phase": p.name,
                }
            ),
        )
        for p in phases
    )
    return RequestPlan(final, digest, inputs_digest, zone.key)


def halo_time(value: Any) -> datetime | None:
    """A date-time as Halo writes it (UTC, without an offset), or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    # Halo sends UTC date-times without an offset.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _result(entry: MappingABC[str, Any]) -> int | None:
    value = entry.get("result")
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def level_approved(ticket: MappingABC[str, Any], requests: Requests) -> bool:
    """Whether the ticket as a whole reads approved (its approval status, or a status the mapping names)."""
    return _result({"result": ticket.get("approval_status")}) == APPROVE or (
        ticket.get("status_id") is not None and int(ticket["status_id"]) in requests.approved_statuses
    )


def approval_state(
    ticket: MappingABC[str, Any], *, posted_at: datetime, seen_unapproved: bool, requests: Requests
) -> tuple[ApprovalState, str]:
    """What Halo's approval says about the plan posted at ``posted_at``, and who decided.

    Halo documents no "approval finished" event and only the result codes 1 (approve) and 2 (reject), so
    the decision is read from what the ticket carries [halo-tickets.md §3]:

    - an approver's approval counts for this plan only if it is dated after the plan was posted (to the
      second: Halo's dates carry no fraction); ``posted_at`` is the plan note's own time as Halo stamped it
      when it could be read back, so both dates come from Halo's clock (a skew between Halo and the service
      never lets an approval of an older plan run a newer one);
    - a ticket-level "approved" (``approval_status`` 1, or a status listed in ``approved_statuses``) counts
      only if the ticket was read without it after the plan was posted;
    - any rejection rejects (an approver's, ``faultapprovalfailed``, ``approval_status`` 2, a status in
      ``rejected_statuses``): a rejected request never runs.
    """
    approvers = [a for a in (ticket.get("approvers") or []) if isinstance(a, dict)]
    for entry in approvers:
        if _result(entry) == REJECT:
            return "rejected", str(entry.get("name") or entry.get("agent_name") or "an approver")
    if ticket.get("faultapprovalfailed") is True or _result({"result": ticket.get("approval_status")}) == REJECT:
        return "rejected", "Halo's approval process"
    status = ticket.get("status_id")
    if status is not None and int(status) in requests.rejected_statuses:
        return "rejected", f"the ticket's status ({ticket.get('status_name') or status})"
    fresh = [
        a
        for a in approvers
        if _result(a) == APPROVE
        and (when := halo_time(a.get("dateapproved"))) is not None
        and when > posted_at.replace(microsecond=0)
    ]
    undecided = [a for a in approvers if _result(a) not in (APPROVE, REJECT)]
    if fresh and (not undecided or _result({"result": ticket.get("approval_status")}) == APPROVE):
        return "approved", ", ".join(sorted({str(a.get("name") or "an approver") for a in fresh}))
    if seen_unapproved and level_approved(ticket, requests):
        return "approved", f"Halo's approval process (ticket status {ticket.get('status_name') or status})"
    return "pending", ""
