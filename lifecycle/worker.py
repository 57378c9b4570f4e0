"""The worker: runs one work item's steps against the targets, exactly once in effect.

For each step: journal claim -> ensure on the target -> journal done + audit. Failures are classified:
``Retryable`` backs off (the message comes back later without using up a delivery), ``Permanent`` is
dead-lettered with a reason a person can read, ``PolicyRefused`` is audited and the item completed (replaying
it would be refused again), ``ConfigurationError`` (a set-up problem: no fault of the item) reschedules it
with a long delay and reports the cause to the health route. The same code runs under Azure Functions, the
on-premises ``lifecycle worker`` and the local host.

Order per person (person gates) and the stale-event rule: ``lifecycle.ordering``.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from lifecycle import deadline, readiness
from lifecycle import steps as step_module
from lifecycle.adoption import propose_link
from lifecycle.errors import (
    AdoptionNeeded,
    ConfigurationError,
    Permanent,
    PolicyRefused,
    Retryable,
)
from lifecycle.fingerprints import applied_fingerprint
from lifecycle.guard import APPROVED_BY_PROPERTY, MassChangeGuard
from lifecycle.leases import LeaseKeeper, renewal_interval
from lifecycle.mapping.planner import plan
from lifecycle.observability import log, log_context, record_stale_skip
from lifecycle.ordering import PersonGates, stale_reason
from lifecycle.people import normalise_user
from lifecycle.queue import FIRST_ENQUEUED_AT, ORIGINAL_MESSAGE_ID, LockLostError, ReceivedMessage, message_for
from lifecycle.rejected import REJECTED_ITEM_PROPERTY, redrive
from lifecycle.state import Outcome, PersonRecord
from lifecycle.steps import ItemState, StepRunner
from lifecycle.work import WorkItem

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime

# Pending work of ticket requests (their dated phases) is keyed with this prefix.
REQUEST_PENDING = "request:"
ItemOutcome = Literal["completed", "skipped", "refused", "retry", "dead_lettered", "held"]


@dataclass(frozen=True)
class ProcessResult:
    outcome: ItemOutcome
    reason: str = ""


class Worker(StepRunner):
    """Processes work items. Thread-safe: each thread gets its own target connections."""

    def __init__(self, runtime: Runtime, *, clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self._clock = clock
        self._local = threading.local()
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    @cached_property
    def _gates(self) -> PersonGates:
        # Through a lambda, so a test that moves the worker's clock moves the gates' too.
        return PersonGates(self.runtime, clock=lambda: self._clock())  # noqa: PLW0108

    @cached_property
    def guard(self) -> MassChangeGuard:
        """The mass-change guard, on the shared store (built on first use, like the store itself)."""
        # Through a lambda, so a test that moves the worker's clock moves the guard's too.
        return MassChangeGuard(self.settings, self.runtime.store, clock=lambda: self._clock())  # noqa: PLW0108

    # Messages ----------------------------------------------------------------------------------------------
    def process_message(self, message: ReceivedMessage) -> ProcessResult:
        """Run a received message's work item and settle the message on the queue, within one invocation's
        deadline (``lifecycle.deadline``)."""
        try:
            with deadline.invocation():
                return self._process(message)
        except LockLostError:
            # The lock expired while we worked and someone else holds the message now: they settle it, and
            # the journal makes their run of the same steps a no-op.
            log.warning(
                "lost the lock on a message; leaving it to its new holder", extra={"message_id": message.message_id}
            )
            return ProcessResult("retry", "lock lost")

    def _process(self, message: ReceivedMessage) -> ProcessResult:
        queue = self.runtime.queue
        if message.properties.get(REJECTED_ITEM_PROPERTY):
            # A webhook element the ingress could not read: dead-lettered, or enqueued once it reads (replay).
            return ProcessResult(*redrive(self.runtime, message))
        try:
            item = WorkItem.from_bytes(message.body)
        except ValidationError as exc:
            reason = f"the message is not a valid work item: {exc.errors()[0]['msg']}"
            queue.dead_letter(message, "InvalidWorkItem", reason)
            log.error("dead-lettered an unreadable message", extra={"message_id": message.message_id})
            return ProcessResult("dead_lettered", reason)
        requested_by = {
            "source": "replay" if ORIGINAL_MESSAGE_ID in message.properties else item.event.source,
            "delivery_id": item.event.delivery_id,
            "agent_id": item.event.agent_id,
            "message_id": message.message_id,
            "delivery_count": message.delivery_count,
        }
        if APPROVED_BY_PROPERTY in message.properties:
            # Released by an operator from the mass-change guard's hold.
            requested_by["approved_by"] = message.properties[APPROVED_BY_PROPERTY]
        with log_context(work_id=item.work_id, user_id=item.event.user_id, message_id=message.message_id):
            try:
                waiting = self._gates.wait(message, item)
                if waiting is not None:
                    return ProcessResult("retry", waiting)
                with self._keeping(message, item):
                    result = self.run(item, requested_by)
            except ConfigurationError as exc:
                return self._wait_for_set_up(message, item, exc)
            except Retryable as exc:
                return self._back_off(message, item, exc)
            except Permanent as exc:
                self._audit(item, "-", "-", "-", "dead_lettered", requested_by, message=str(exc))
                queue.dead_letter(message, type(exc).__name__, str(exc))
                log.error("dead-lettered: %s", exc)
                self._report(item, ProcessResult("dead_lettered", str(exc)))
                self._gates.leave(message, item)
                return ProcessResult("dead_lettered", str(exc))
            except Exception:
                # A bug, not a verdict on the data: give the message back; the queue dead-letters it after
                # max deliveries, so nothing is lost and the traceback is in the log.
                log.exception("unexpected error; the message is abandoned and will be redelivered")
                queue.abandon(message)
                return ProcessResult("retry", "unexpected error")
            self._report(item, result)
            queue.complete(message)
            readiness.clear("worker")
            self._gates.leave(message, item)
            return result

    @contextmanager
    def _keeping(self, message: ReceivedMessage, item: WorkItem) -> Iterator[None]:
        """While the item runs, renew the message's lock, the person's gate and (``_step_lease``) each step's
        lease, so that a slow DC does not hand the item to a second worker (``lifecycle.leases``)."""
        queue = self.runtime.queue
        # Read from the module at each use, so one setting (a test's shorter lease) holds for steps and messages.
        keeper = LeaseKeeper(renewal_interval(step_module.STEP_LEASE_SECONDS, message.locked_until, time.time()))
        with (
            keeper,
            keeper.hold(f"the lock of message {message.message_id}", lambda: queue.renew_lock(message)),
            keeper.hold(f"the gate of user {item.event.user_id}", lambda: self._gates.renew(message, item)),
        ):
            self._local.keeper = keeper
            try:
                yield
            finally:
                self._local.keeper = None

    def _ticket(self, item: WorkItem) -> ProcessResult:
        """A ticket trigger: read the ticket and advance its request (plan, approval, scheduling)."""
        from lifecycle.requests.service import TicketRequests

        trigger = item.ticket or {}
        record = TicketRequests(self.runtime, clock=self._clock, owner=self.owner).advance(
            int(trigger["ticket_id"]), trigger.get("fields")
        )
        return ProcessResult("completed", record.status if record is not None else "")

    def _report(self, item: WorkItem, result: ProcessResult) -> None:
        """The outcome of a ticket request's phase goes back to its ticket (a failure here never fails the item:
        the note is owed, and the timer posts it)."""
        if item.request_id is None or item.lifecycle == "ticket":
            return
        from lifecycle.requests.service import TicketRequests

        try:
            TicketRequests(self.runtime, clock=self._clock, owner=self.owner).report(
                item, result.outcome, result.reason
            )
        except Exception:
            log.exception("could not record the result of request %s", item.request_id)

    # Set-up problems ---------------------------------------------------------------------------------------
    def _wait_for_set_up(self, message: ReceivedMessage, item: WorkItem, exc: ConfigurationError) -> ProcessResult:
        """A set-up problem is no fault of the item: it waits (long), the cause goes to the log and the health
        route, and no delivery is used up (abandoning would burn all of them in seconds)."""
        delay = self.settings.setup_retry_seconds
        reason = f"set-up problem: {exc}"
        log.error("%s; the message waits %.0f s (nothing is lost)", reason, delay)
        readiness.report("worker", str(exc))
        self._gates.close(message, item, delay)
        self.runtime.queue.retry_later(message, delay, reason)
        return ProcessResult("retry", reason)

    def _back_off(self, message: ReceivedMessage, item: WorkItem, exc: Retryable) -> ProcessResult:
        queue = self.runtime.queue
        # A queue that backs off by re-sending a copy (Service Bus) carries the first enqueue time along.
        first_enqueued = float(message.properties.get(FIRST_ENQUEUED_AT, message.enqueued_at.timestamp()))
        age = self._clock() - first_enqueued
        if age > self.settings.retry_max_seconds:
            reason = f"still failing after {age / 3600:.1f} h of retries: {exc}"
            queue.dead_letter(message, "TransientFailuresExhausted", reason)
            log.error("dead-lettered after retries: %s", exc)
            self._gates.leave(message, item)
            return ProcessResult("dead_lettered", reason)
        attempt = int(message.properties.get("retry_attempt", "0"))
        delay = exc.retry_after
        if delay is None:
            # Exponential backoff with jitter, capped: a DC outage does not turn into a retry storm.
            delay = min(self.settings.retry_cap_seconds, self.settings.retry_base_seconds * 2**attempt)
            delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security
        self._gates.close(message, item, delay)
        queue.retry_later(message, delay, str(exc))
        log.warning("transient failure, retrying in %.1f s: %s", delay, exc, extra={"attempt": attempt + 1})
        return ProcessResult("retry", str(exc))

    # Work items --------------------------------------------------------------------------------------------
    def run(self, item: WorkItem, requested_by: dict[str, Any]) -> ProcessResult:
        """Run every step of ``item``; raises Retryable or Permanent for the caller to settle."""
        if item.lifecycle == "ticket":
            return self._ticket(item)
        store = self.runtime.store
        received = item
        event = item.event
        person = store.get_person(event.user_id)
        stale = stale_reason(item, person)
        if stale is not None:
            self._audit(item, "-", "-", "-", "skipped", requested_by, message=stale)
            record_stale_skip(item.lifecycle)
            log.info("skipped a stale event: %s", stale)
            return ProcessResult("skipped", stale)
        if event.is_thin:
            halo = self.runtime.halo
            if halo is None:
                raise Permanent(
                    "the event carries no user object and fetching users from Halo's API is not configured "
                    "(send the full user, or configure the Halo API)"
                )
            user = halo.fetch_user(event.user_id)
            if user is None and event.kind == "deleted":
                # Halo removes the user before it tells us: the id is all there is, and all the deleted steps need.
                user = {"id": event.user_id}
            if user is None:
                raise Permanent(f"Halo has no user {event.user_id} (deleted before the event was processed?)")
            event = event.model_copy(update={"user": normalise_user(user)})
            # The fetched fields decide the lifecycle and the steps, exactly as if the webhook had carried them.
            known = person.status if person is not None else "unknown"
            context = self.runtime.plan_context
            item = plan(event, self.runtime.mapping, work_id=item.work_id, context=context, status=known)
        status = person.status if person is not None else "unknown"
        mapping = self.runtime.mapping
        # A ticket request's work runs exactly as it was approved: never re-planned here.
        replan = item.request_id is None and item.lifecycle != "staged"
        if replan and (item.planned_for_status != status or item.mapping_digest != mapping.digest):
            # What the person's state or the mapping is now decides the steps (a rehire after a leaver; a
            # mapping fixed before a replay).
            item = plan(event, mapping, work_id=item.work_id, context=self.runtime.plan_context, status=status)
        if replan:
            # An event that cannot route the person (a thin deletion) is planned for the connection they are tied
            # to, never the default: it says nothing of a move (lifecycle.tenancy).
            from lifecycle import tenancy

            item = tenancy.plan_by_tie(store, mapping, item, self.runtime.plan_context)
        if item.lifecycle == "staged" and (person is None or person.status != "left"):
            message = "staged work cancelled: the person is no longer a leaver"
            self._audit(item, "-", "-", "-", "skipped", requested_by, message=message)
            return ProcessResult("skipped", message)
        if item.lifecycle == "out_of_scope":
            # The mapping's [scope] excludes this person: nothing is read or changed anywhere, and the audit
            # names the condition that failed.
            self._audit(item, "-", "scope", "-", "out_of_scope", requested_by, message=item.note)
            log.info("out of scope: %s", item.note)
            return ProcessResult("skipped", item.note)
        # A person stays with the connection (AD domain, tenant) first used for them: a move is held first.
        moved = self._check_connection(item, received, requested_by)
        if moved is not None:
            return moved
        # The mass-change guard decides before any step runs: a held item has changed nothing.
        verdict = self.guard.check(item, person, received)
        if verdict.action != "run":
            held = verdict.action == "held"
            outcome: Outcome = "held" if held else "rejected"
            self._audit(item, "-", "mass_change_guard", "-", outcome, requested_by, message=verdict.message)
            return ProcessResult("held" if held else "skipped", verdict.message)
        if verdict.dry_run_note:
            self._audit(item, "-", "mass_change_guard", "-", "dry_run", requested_by, message=verdict.dry_run_note)

        state = ItemState()
        dn = person.dn if person is not None else None
        for step in item.steps:
            with log_context(step=step.key):
                try:
                    _, step_dn = self._run_step(item, step, state, requested_by)
                except PolicyRefused as exc:
                    self._audit(item, step.key, step.action, step.target, "refused", requested_by, message=str(exc))
                    log.warning("refused: %s", exc)
                    if isinstance(exc, AdoptionNeeded) and not self.settings.dry_run:
                        propose_link(self.runtime.store, received, step.target, exc, self._clock())
                    return ProcessResult("refused", str(exc))
                dn = step_dn or dn
        if item.lifecycle in ("rehire", "joiner", "mover"):
            # A rehire cancels staged deletions; a ticket request's dated phases stay (its own steps are here).
            cancelled = [p for p in store.pending(user_id=event.user_id) if not p.key.startswith(REQUEST_PENDING)]
            for pending in cancelled:
                store.remove_pending(pending.user_id, pending.key)
                self._audit(
                    item,
                    pending.key,
                    "cancel_pending",
                    "-",
                    "changed",
                    requested_by,
                    message=f"cancelled staged work due {pending.due_at.isoformat()}: {pending.description}",
                )
        if not self.settings.dry_run:
            last = person.last_event_at if person is not None else event.occurred_at
            store.put_person(
                PersonRecord(
                    user_id=event.user_id,
                    status="left" if item.lifecycle in ("leaver", "deleted", "staged") else "active",
                    last_event_at=max(last, event.occurred_at),
                    last_work_id=item.work_id,
                    dn=dn,
                    # What was applied, for reconciliation to compare Halo with (write-back included).
                    fingerprint=applied_fingerprint(mapping, event.user, state.facts),
                )
            )
        return ProcessResult("completed")

    def _check_connection(
        self, item: WorkItem, received: WorkItem, requested_by: dict[str, Any]
    ) -> ProcessResult | None:
        """None when the item may run; else held (it moves a person to another connection) or skipped."""
        from lifecycle import tenancy

        now = datetime.fromtimestamp(self._clock(), UTC)
        verdict = tenancy.admit(self.runtime.store, self.settings, item, received, now=now)
        if verdict is None:
            return None
        action, outcome, message = verdict
        self._audit(item, "-", "connection", tenancy.connection_of(item) or "-", outcome, requested_by, message=message)
        return None if action == "run" else ProcessResult(action, message)

    def release_due(self, *, budget_seconds: float | None = None) -> int:
        """Enqueue staged and future-dated work whose time has come; returns how many items were sent.

        Each release is audited (``release_pending``, what ``lifecycle pending --released`` lists) before its
        entry is removed: a run that stops in between sends the same message id again next time, which
        duplicate detection or the journal absorbs. Stops when ``budget_seconds`` (default: what is left of
        the invocation) run out; the rest is released by the next run.
        """
        store = self.runtime.store
        now = datetime.fromtimestamp(self._clock(), UTC)
        sent = 0
        with deadline.invocation(budget_seconds):
            due = store.pending(due_before=now)
            for pending in due:
                if deadline.remaining() <= 0:
                    log.warning("released %d of %d due item(s) in this run's time; the rest next run", sent, len(due))
                    break
                item = WorkItem.model_validate_json(pending.work_item)
                self.runtime.queue.send([message_for(item)])
                self._audit(
                    item,
                    pending.key,
                    "release_pending",
                    "-",
                    "changed",
                    {"source": "schedule"},
                    message=f"released {pending.description or pending.key} (due {pending.due_at.isoformat()})",
                )
                store.remove_pending(pending.user_id, pending.key)
                sent += 1
        return sent

    # Loop --------------------------------------------------------------------------------------------------
    def run_forever(self, stop: threading.Event, *, poll_seconds: float = 1.0) -> None:
        """Receive and process until ``stop`` is set (the local host runs one per worker thread)."""
        queue = self.runtime.queue
        try:
            while not stop.is_set():
                message = queue.receive(timeout=poll_seconds)
                if message is not None:
                    self.process_message(message)
        finally:
            self.close()
