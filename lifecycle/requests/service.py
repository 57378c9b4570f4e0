"""The ticket loop's moving parts: read the ticket, make the person, post the plan, wait for approval, run the
phases, post the results. Called by the worker (a "ticket" work item, and after each phase's work item), by
the timer (``poll``) and by operators (``cancel``).

Every Halo write (the joiner's Halo user, each note, each status change) happens at most once per request and
purpose: ``lifecycle.requests.writes``; whom a request concerns (the person named, or created once for a joiner):
``lifecycle.requests.subjects``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from lifecycle.errors import ConfigurationError, Permanent, Retryable
from lifecycle.halo.tickets import HaloTicket
from lifecycle.mapping.schema import RequestType
from lifecycle.observability import log
from lifecycle.queue import message_for
from lifecycle.requests import notes
from lifecycle.requests.planning import (
    Phase,
    RequestPlan,
    SubjectUnclear,
    approval_state,
    build_plan,
    level_approved,
    match_type,
    ticket_context,
)
from lifecycle.requests.store import (
    OPEN_STATUSES,
    TERMINAL_STATUSES,
    RequestRecord,
    RequestStatus,
    request_id_for,
    update,
)
from lifecycle.requests.subjects import RequestSubjects
from lifecycle.requests.writes import PENDING_PREFIX
from lifecycle.state import PendingAction
from lifecycle.work import LifecycleEvent, WorkItem

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime

# The timer's ticket reads are deduplicated per this many seconds (a slow queue never piles them up).
POLL_BUCKET_SECONDS = 300
_RESULT_OUTCOMES = {"completed": "completed", "dead_lettered": "failed", "refused": "failed", "held": "held"}


def ticket_work_item(
    ticket_id: int,
    *,
    work_id: str,
    now: datetime,
    source: str = "ticket",
    fields: Mapping[str, Any] | None = None,
    delivery_id: str | None = None,
    halo_event: str | None = None,
    agent_id: int | None = None,
) -> WorkItem:
    """The queue message that makes a worker read a ticket and advance its request.

    Its session is the negative ticket id: one ticket's triggers run in order, and never in a person's session.
    """
    event = LifecycleEvent(
        kind="updated",
        user_id=-int(ticket_id),
        occurred_at=now,
        source=source,  # type: ignore[arg-type]
        delivery_id=delivery_id,
        halo_event=halo_event,
        agent_id=agent_id,
    )
    return WorkItem(
        work_id=work_id,
        lifecycle="ticket",
        event=event,
        steps=[],
        request_id=request_id_for(ticket_id),
        ticket={"ticket_id": int(ticket_id), "fields": dict(fields or {})},
    )


def _derive_status(phases: Mapping[str, Mapping[str, Any]]) -> RequestStatus:
    outcomes = [str(p.get("outcome")) for p in phases.values()]
    if "failed" in outcomes:
        return "failed"
    if "held" in outcomes:
        return "held"
    if outcomes and all(o in ("completed", "skipped") for o in outcomes):
        return "completed"
    if "scheduled" in outcomes:
        return "scheduled"
    if "cancelled" in outcomes and "queued" not in outcomes:
        return "cancelled"
    return "running"


class TicketRequests(RequestSubjects):
    """The ticket loop for one runtime."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        clock: Callable[[], float] = time.time,
        owner: str = "requests",
        preview: bool = False,
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self._clock = clock
        self.owner = owner
        # Preview (``?dry_run=true``): read and plan, write nothing anywhere; the plan is left in ``previewed``.
        self.preview = preview
        self.previewed: tuple[RequestType, RequestPlan, int] | None = None

    # Reading a ticket --------------------------------------------------------------------------------------
    def advance(self, ticket_id: int, fields: Mapping[str, Any] | None = None) -> RequestRecord | None:
        """Read the ticket and move its request on: plan, re-plan, approval, rejection, scheduling."""
        mapping = self.runtime.mapping
        request_id = request_id_for(ticket_id)
        if mapping.requests is None:
            message = "the mapping has no [requests] section: ticket requests are off"
            if self.preview:
                return None
            return self._save(request_id, lambda r: self._mark(r, ticket_id, "ignored", message))
        halo = self._halo()
        raw = halo.fetch_ticket(ticket_id)
        if raw is None:
            raise Permanent(f"Halo has no ticket {ticket_id} (deleted, or the API agent may not see it)")
        try:
            ticket = HaloTicket.model_validate(raw).model_dump(mode="json")
        except ValidationError as exc:
            first = exc.errors()[0]
            raise Permanent(f"ticket {ticket_id}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        context = ticket_context(ticket, fields)
        record = self.store.get(request_id)
        if record is not None and record.status in TERMINAL_STATUSES:
            return record
        kind = next((t for t in mapping.requests.types if record and t.name == record.type_name), None)
        kind = kind or match_type(mapping.requests, context)
        if kind is None:
            message = (
                f"ticket type {ticket.get('tickettype_name') or ticket.get('tickettype_id')!r} matches no "
                "[[requests.types]] of the mapping"
            )
            if not self.preview and (record is None or record.status in ("received", "ignored")):
                return self._save(request_id, lambda r: self._mark(r, ticket_id, "ignored", message))
            return record
        try:
            user_id, user, created = self._person(request_id, kind, ticket, context, record)
        except SubjectUnclear as exc:
            return self._subject_unclear(record, kind, ticket_id, exc)
        person = self.runtime.store.get_person(user_id)
        now = self._now()
        request_plan = build_plan(
            kind,
            mapping,
            request_id=request_id,
            ticket=ticket,
            context=context,
            user_id=user_id,
            user=user,
            status=person.status if person is not None else "unknown",
            now=now,
            plan_context=self.runtime.plan_context,
        )
        if self.preview:
            self.previewed = (kind, request_plan, user_id)
            return record
        if self.settings.dry_run:
            # Dry run: nothing is written to Halo (no user, no note, no status) and nothing runs.
            message = f"dry run: plan {request_plan.digest} would be posted to the ticket; nothing was written"
            log.info("request %s: %s", request_id, message)
            return self._save(request_id, lambda r: self._mark(r, ticket_id, r.status if r else "received", message))
        # The ticket is linked to the joiner (once per request); a ticket whose user is someone else keeps them.
        kept = self.link_ticket(request_id, ticket, user_id) if kind.kind == "joiner" else ""
        record = self.store.get(request_id)
        status = record.status if record is not None else "received"
        approved_before = status not in ("received", "ignored", "awaiting_approval")
        changed = (
            request_plan.inputs_digest != record.inputs_digest
            if approved_before and record is not None
            else record is None or request_plan.digest != record.plan_digest
        )
        if changed:
            return self._post_plan(record, kind, ticket, request_plan, user_id, created, kept)
        assert record is not None
        if status != "awaiting_approval":
            return record
        assert record.posted_at is not None
        state, by = approval_state(
            ticket,
            posted_at=datetime.fromisoformat(record.posted_at),
            seen_unapproved=record.seen_unapproved,
            requests=mapping.requests,
        )
        if state == "pending":
            if not record.seen_unapproved and not level_approved(ticket, mapping.requests):
                return self._save(request_id, lambda r: replace(r, seen_unapproved=True) if r else r)
            return record
        if state == "rejected":
            return self._reject(record, by)
        return self._execute(record, request_plan, by)

    @staticmethod
    def _mark(record: RequestRecord | None, ticket_id: int, status: RequestStatus, message: str) -> RequestRecord:
        base = record or RequestRecord(request_id_for(ticket_id), ticket_id, status)
        return replace(base, status=status, message=message)

    def _post_plan(
        self,
        record: RequestRecord | None,
        kind: RequestType,
        ticket: Mapping[str, Any],
        request_plan: RequestPlan,
        user_id: int,
        created: bool,
        kept: str = "",
    ) -> RequestRecord:
        ticket_id = int(ticket["id"])
        request_id = request_id_for(ticket_id)
        if record is not None and record.status in ("scheduled", "running", "failed", "held"):
            self._cancel_pending(record)
        name = next((str(p.item.event.user.get("name")) for p in request_plan.phases if p.item.event.user), "")
        who = f"{name or 'Halo user'} (Halo user {user_id}{', created for this request' if created else ''})"
        note = notes.plan_note(
            request_id,
            ticket_id=ticket_id,
            type_name=kind.name,
            kind=kind.kind,
            person=who,
            phases=request_plan.phases,
            digest=request_plan.digest,
            approval=kind.approval,
            password_channel=self._channel(),
            replaces=record.plan_digest if record is not None else "",
            remarks=(kept,) if kept else (),
        )
        now = self._now()
        assert self.runtime.mapping.requests is not None
        unapproved = not level_approved(ticket, self.runtime.mapping.requests)
        self.post_note(request_id, ticket_id, note)
        # Approvals count only if given after this note, as Halo dates both: Halo's stamp on the note, when it
        # can be read back, else the service's clock (Halo's approval API has no "restart": docs/halo-setup.md).
        noted = self.note_time(request_id, ticket_id, note.key) if kind.approval else None
        posted_at = noted or now

        def change(current: RequestRecord | None) -> RequestRecord:
            base = current or RequestRecord(request_id, ticket_id, "received")
            return replace(
                base,
                status="awaiting_approval",
                message=f"plan {request_plan.digest} posted to the ticket; waiting for Halo's approval",
                type_name=kind.name,
                kind=kind.kind,
                halo_user_id=user_id,
                plan_digest=request_plan.digest,
                inputs_digest=request_plan.inputs_digest,
                plan=tuple(p.to_json() for p in request_plan.phases),
                posted_at=posted_at.isoformat(),
                seen_unapproved=unapproved,
                phases={},
            )

        saved = self._save(request_id, change)
        if not kind.approval:
            return self._execute(saved, request_plan, "no approval needed (mapping)")
        self.set_status(request_id, ticket_id, "awaiting_approval", f"awaiting:{request_plan.digest}")
        return saved

    def _reject(self, record: RequestRecord, by: str) -> RequestRecord:
        self.post_note(
            record.request_id,
            record.ticket_id,
            notes.rejected_note(record.request_id, digest=record.plan_digest, by=by),
        )
        self.set_status(record.request_id, record.ticket_id, "rejected", f"rejected:{record.plan_digest}")
        message = f"plan {record.plan_digest} was rejected ({by}); nothing was done"
        return self._save(record.request_id, lambda r: replace(r, status="rejected", message=message) if r else r)

    def _execute(self, record: RequestRecord, request_plan: RequestPlan, by: str) -> RequestRecord:
        """Run exactly the approved plan: phases due now are queued, later ones become pending work."""
        now = self._now()
        store = self.runtime.store
        states: dict[str, dict[str, Any]] = {}
        due_now: list[WorkItem] = []
        for phase in request_plan.phases:
            if phase.due_at is None or phase.due_at <= now:
                item = _at(phase.item, now)
                due_now.append(item)
                states[phase.name] = {"outcome": "queued", "work_id": item.work_id}
            else:
                item = _at(phase.item, phase.due_at)
                store.add_pending(
                    PendingAction(
                        user_id=item.event.user_id,
                        key=f"{PENDING_PREFIX}{record.request_id}:{phase.name}",
                        due_at=phase.due_at,
                        work_item=item.model_dump_json(),
                        created_at=now,
                        description=f"ticket {record.ticket_id}: {phase.label}",
                    )
                )
                states[phase.name] = {
                    "outcome": "scheduled",
                    "work_id": item.work_id,
                    "due_at": phase.due_at.isoformat(),
                }
        if due_now:
            self.runtime.queue.send([message_for(item) for item in due_now])
        self.post_note(
            record.request_id,
            record.ticket_id,
            notes.approved_note(record.request_id, digest=request_plan.digest, by=by, phases=request_plan.phases),
        )

        def change(current: RequestRecord | None) -> RequestRecord | None:
            if current is None:
                return None
            # A phase the worker already reported on keeps its outcome (it may have run before this save).
            merged = {
                **states,
                **{k: v for k, v in current.phases.items() if v.get("outcome") not in ("queued", "scheduled")},
            }
            status = _derive_status(merged)
            return replace(current, status=status, message=f"approved ({by}): {notes.summary(merged)}", phases=merged)

        saved = self._save(record.request_id, change)
        self.set_status(record.request_id, record.ticket_id, saved.status, f"{saved.status}:{request_plan.digest}")
        return saved

    def _cancel_pending(self, record: RequestRecord) -> None:
        store = self.runtime.store
        for pending in store.pending(user_id=record.halo_user_id) if record.halo_user_id else []:
            if pending.key.startswith(f"{PENDING_PREFIX}{record.request_id}:"):
                store.remove_pending(pending.user_id, pending.key)

    # Results -----------------------------------------------------------------------------------------------
    def report(self, item: WorkItem, outcome: str, reason: str) -> None:
        """A phase's work item finished, failed or was held: record it and post the note (once)."""
        if item.request_id is None or item.phase is None:
            return
        result = _RESULT_OUTCOMES.get(outcome, "skipped" if outcome == "skipped" else "")
        if not result:
            return  # a retry: the item comes back

        def change(current: RequestRecord | None) -> RequestRecord | None:
            if current is None:
                return None
            phases = {
                **current.phases,
                item.phase or "": {"outcome": result, "reason": reason, "work_id": item.work_id},
            }
            status = _derive_status(phases)
            return replace(current, phases=phases, status=status, message=f"{notes.summary(phases)}", notes_owed=True)

        record = update(self.store, item.request_id, change)
        if record is not None:
            self.post_owed(record)

    def phase_cancelled(self, item: WorkItem, *, by: str) -> None:
        """An operator dropped a dated phase (``lifecycle pending --cancel``, the console): record and note it."""
        if item.request_id is None or item.phase is None:
            return
        reason = f"cancelled by {by} before its date; it will not run"

        def change(current: RequestRecord | None) -> RequestRecord | None:
            if current is None:
                return None
            phases = {
                **current.phases,
                item.phase or "": {"outcome": "cancelled", "reason": reason, "work_id": item.work_id},
            }
            return replace(current, phases=phases, status=_derive_status(phases), notes_owed=True)

        record = update(self.store, item.request_id, change)
        if record is not None:
            self.post_owed(record)

    def post_owed(self, record: RequestRecord) -> None:
        """Post the result notes (and status changes) a record owes; on failure the timer tries again."""
        try:
            phases = {p["name"]: Phase.from_json(p) for p in record.plan}
            for name, state in record.phases.items():
                outcome = str(state.get("outcome"))
                if outcome not in ("completed", "failed", "held", "skipped", "cancelled") or name not in phases:
                    continue
                reason = str(state.get("reason") or "")
                key = f"result:{name}:{outcome}"
                if outcome in ("failed", "held", "skipped", "cancelled"):
                    key += ":" + hashlib.sha256(f"{state.get('work_id')}|{reason}".encode()).hexdigest()[:8]
                entries = self.runtime.store.audit(work_id=str(state.get("work_id")))
                note = notes.result_note(
                    record.request_id,
                    key=key,
                    phase=phases[name],
                    outcome=outcome,
                    reason=reason,
                    entries=entries,
                    channel=self._channel(),
                    replay_hint=(
                        "When it is fixed, an operator replays the work (lifecycle dlq replay --user "
                        f"{record.halo_user_id}); the result is posted here."
                    ),
                )
                self.post_note(record.request_id, record.ticket_id, note)
                status = {"skipped": "failed", "cancelled": "cancelled"}.get(outcome, outcome)
                self.set_status(record.request_id, record.ticket_id, status, key)
        except (Retryable, Permanent, ConfigurationError) as exc:
            log.warning("request %s: a result note could not be posted yet: %s", record.request_id, exc)
            return
        self._save(
            record.request_id, lambda r: replace(r, notes_owed=False) if r and r.version == record.version else r
        )

    # Timer and operators -----------------------------------------------------------------------------------
    def poll(self) -> int:
        """The safety net: re-read open and scheduled tickets (queued) and post notes still owed.

        Halo's API budget is shared with every other integration of the tenant (300 requests per 5 minutes on
        hosted Halo), so the reads are spread: a request awaiting approval is read every third run (15 minutes
        with the 5-minute timer), a scheduled one (whose dates may change) every twelfth, each in the run its
        ticket id picks. Webhooks and runbook calls stay the prompt path.
        """
        now = self._now()
        bucket = int(now.timestamp()) // POLL_BUCKET_SECONDS
        every = {"received": 1, "awaiting_approval": 3, "scheduled": 12}
        items = [
            ticket_work_item(r.ticket_id, work_id=f"poll-{r.request_id}-{bucket}", now=now, source="schedule")
            for r in self.store.list(statuses=OPEN_STATUSES | {"scheduled"})
            if bucket % every.get(r.status, 1) == r.ticket_id % every.get(r.status, 1)
        ]
        if items:
            self.runtime.queue.send([message_for(item) for item in items])
        for record in self.store.list(notes_owed=True):
            self.post_owed(record)
        return len(items)

    def cancel(self, request_id: str, *, by: str) -> RequestRecord:
        """Cancel a request: its pending phases are dropped, and the ticket says so."""
        record = self.store.get(request_id)
        if record is None:
            raise LookupError(f"no request {request_id}")
        if record.status in TERMINAL_STATUSES:
            return record
        self._cancel_pending(record)
        text = f"Cancelled by {by}: nothing more runs for this request"
        note = notes.Note(
            f"cancelled:{record.version}", text + "\n\n" + notes.marker(request_id, "cancelled"), f"<p>{text}</p>"
        )
        try:
            self.post_note(request_id, record.ticket_id, note)
        except (Retryable, Permanent, ConfigurationError) as exc:
            log.warning("request %s cancelled, but the note could not be posted: %s", request_id, exc)
        return self._save(request_id, lambda r: replace(r, status="cancelled", message=text) if r else r)


def _at(item: WorkItem, moment: datetime) -> WorkItem:
    """The phase's work item as an event of ``moment`` (so it is not stale against what ran before it)."""
    return item.model_copy(update={"event": item.event.model_copy(update={"occurred_at": moment})})
