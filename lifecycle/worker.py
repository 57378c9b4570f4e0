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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from lifecycle import deadline, readiness
from lifecycle.actions import action_info
from lifecycle.adoption import propose_link
from lifecycle.errors import (
    AdoptionNeeded,
    ConfigurationError,
    OutcomeUnknown,
    Permanent,
    PolicyRefused,
    Retryable,
    Unfinished,
)
from lifecycle.fingerprints import applied_fingerprint
from lifecycle.guard import APPROVED_BY_PROPERTY, MassChangeGuard
from lifecycle.leases import LeaseKeeper, renewal_interval
from lifecycle.mapping.planner import plan
from lifecycle.observability import log, log_context, record_stale_skip
from lifecycle.ordering import PersonGates, stale_reason
from lifecycle.people import correlation_pairs, normalise_user
from lifecycle.queue import ORIGINAL_MESSAGE_ID, LockLostError, ReceivedMessage, message_for
from lifecycle.rejected import REJECTED_ITEM_PROPERTY, redrive
from lifecycle.state import AuditEntry, Change, Outcome, PendingAction, PersonRecord
from lifecycle.targets import ExtensionTarget, StepContext, StepResult, build_target
from lifecycle.work import Step, WorkItem

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime
    from lifecycle.targets.ad import Account, ADTarget

# Message property: epoch seconds of the first enqueue, kept by queues whose backoff re-sends a copy.
FIRST_ENQUEUED_AT = "first_enqueued_at"
# Pending work of ticket requests (their dated phases) is keyed with this prefix.
REQUEST_PENDING = "request:"
# A claimed step whose worker died is taken over after this long.
STEP_LEASE_SECONDS = 120.0

ItemOutcome = Literal["completed", "skipped", "refused", "retry", "dead_lettered", "held"]


@dataclass
class _ItemState:
    """What the steps of one work item share: AD accounts read so far, and facts recorded by steps."""

    accounts: dict[str, Account | None] = field(default_factory=dict)
    loaded: set[str] = field(default_factory=set)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Connections on which a dry run "created" the account (so later steps have none to read).
    dry_created: set[str] = field(default_factory=set)
    # Connections whose account was created by this item: known only from what was written (no objectSid,
    # objectGUID), so an extension step that asks for it gets it read back from the directory.
    created: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class ProcessResult:
    outcome: ItemOutcome
    reason: str = ""


class Worker:
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

    # Targets -----------------------------------------------------------------------------------------------
    def _ad(self, name: str) -> ADTarget:
        targets: dict[str, ADTarget] = self._local.__dict__.setdefault("ad", {})
        if name not in targets:
            from lifecycle.protection import Policy
            from lifecycle.targets.ad import ADTarget

            connection = self.settings.ad_connection(name)
            targets[name] = ADTarget(
                name,
                connection,
                policy=Policy.from_safety(self.runtime.mapping.safety, connection.base_dn),
                dry_run=self.settings.dry_run,
                password_sink=self._password_sink(name),
                photo_loader=self._photo_loader(),
            )
        return targets[name]

    def _password_sink(self, name: str) -> Callable[[str, str], None] | None:
        """Where a generated password goes (LIFECYCLE_PASSWORD_DELIVERY); None: nowhere, it is never kept."""
        if self.settings.password_delivery == "graph_mail":  # noqa: S105 - a channel name
            from lifecycle.targets.graph import password_mailer

            return password_mailer(self.settings, lambda: self._ad(name))
        return None

    def _photo_loader(self) -> Callable[[dict[str, Any]], bytes | None]:
        from lifecycle.photos import PhotoLoader

        return PhotoLoader(
            max_bytes=self.settings.photo_max_bytes,
            allowed_hosts=tuple(self.settings.photo_allowed_hosts),
            ca_file=self.settings.graph_ca_file,
        )

    def close(self) -> None:
        for target in self._local.__dict__.get("ad", {}).values():
            target.close()
        for extension in self._local.__dict__.get("extensions", {}).values():
            extension.close()

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
        keeper = LeaseKeeper(renewal_interval(STEP_LEASE_SECONDS, message.locked_until, time.time()))
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

    @contextmanager
    def _step_lease(self, item: WorkItem, step: Step) -> Iterator[None]:
        """Renew the journal lease of a step this worker claimed until the block ends (the block ends before
        the claim is finished, released or ended, so no renewal outlives it)."""
        store = self.runtime.store
        lease = STEP_LEASE_SECONDS

        def renew() -> bool:
            return store.claim_step(item.work_id, step.key, self.owner, lease).status == "acquired"

        name = f"the lease of step {step.key} of {item.work_id}"
        keeper: LeaseKeeper | None = self._local.__dict__.get("keeper")
        if keeper is None:  # run() called directly, not from a message: a keeper for this step alone
            with LeaseKeeper(lease / 3) as own, own.hold(name, renew):
                yield
        else:
            with keeper.hold(name, renew):
                yield

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

        state = _ItemState()
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

    def _run_step(
        self, item: WorkItem, step: Step, state: _ItemState, requested_by: dict[str, Any]
    ) -> tuple[Outcome, str | None]:
        store = self.runtime.store
        dry_run = self.settings.dry_run
        # Any step with after_days (delete_user, archive/delete_home_folder) is staged, not run now.
        if int(step.params.get("after_days", 0) or 0) > 0 and item.lifecycle != "staged":
            return self._stage_deletion(item, step, requested_by), None
        message = ""
        once_only = action_info(step.action).once_only
        # A once-only step begun with a readable marker keeps its claim if it fails (see _begin_once_only).
        keep_claim = False
        resume: dict[str, Any] | None = None
        if not dry_run:
            claim = store.claim_step(item.work_id, step.key, self.owner, STEP_LEASE_SECONDS)
            if claim.status == "done":
                # Done by an earlier delivery: its effect stands; later steps re-read the account.
                state.loaded.discard(step.target)
                return "unchanged", (claim.result or {}).get("dn")
            if claim.status == "busy":
                raise Retryable(f"step {step.key} is being run by another worker", retry_after=STEP_LEASE_SECONDS / 4)
            resume = (claim.note or {}).get("resume")
            if once_only and resume is not None:
                # An earlier attempt began the step and stopped at its deadline with what to resume from (a
                # script's status URL): it continues from there, never starting the step again.
                keep_claim = True
            elif once_only:
                try:
                    with self._step_lease(item, step):
                        resumed, keep_claim = self._begin_once_only(item, step, state, claim.note, requested_by)
                except Retryable:
                    if claim.note is None:  # nothing began: let any worker try again
                        store.release_step(item.work_id, step.key, self.owner)
                    raise
                if resumed is not None:
                    return resumed
            elif claim.taken_over:
                message = "an earlier attempt was interrupted (its worker stopped); run again"
            if not once_only and claim.note and "failed_attempt" in claim.note:
                message = f"an earlier attempt failed, perhaps after acting ({claim.note['failed_attempt']}); run again"
        try:
            with nullcontext() if dry_run else self._step_lease(item, step):
                result = self._run_target(item, step, state, requested_by, resume)
        except AdoptionNeeded:
            if not dry_run:
                # Waits for an operator's link decision: the step runs when the approved work comes back.
                store.release_step(item.work_id, step.key, self.owner)
            raise
        except PolicyRefused:
            if not dry_run:
                store.finish_step(item.work_id, step.key, self.owner, {"outcome": "refused"})
            raise
        except OutcomeUnknown:
            raise  # the step may have taken effect: keep the claim so nothing runs it again unreviewed
        except Unfinished as exc:
            if not dry_run:
                # Keep the claim with what to resume from, and end the lease so the next attempt (any worker)
                # takes it over at once.
                store.note_step(item.work_id, step.key, self.owner, {"resume": exc.progress})
                store.claim_step(item.work_id, step.key, self.owner, 0.0)
            raise
        except Retryable as exc:
            if not dry_run and not keep_claim and not once_only and exc.retry_after is None:
                # The write may have landed before the connection died (a DC going down mid-operation, a 503
                # after a committed request). Leave a note and end the lease at once: the next attempt, by
                # any worker, says in the audit that an "unchanged" is this attempt's change standing. (A
                # Retryable with retry_after is a deliberate "later": throttled, or waiting for provisioning.)
                store.note_step(item.work_id, step.key, self.owner, {"failed_attempt": str(exc)[:300]})
                store.claim_step(item.work_id, step.key, self.owner, 0.0)
            elif not dry_run and not keep_claim:
                store.release_step(item.work_id, step.key, self.owner)
            raise
        except BaseException:
            # A once-only step that began keeps its claim and its note: the next attempt compares markers
            # instead of running it blindly (a timeout may have hidden a write the DC did make).
            if not dry_run and not keep_claim:
                store.release_step(item.work_id, step.key, self.owner)
            raise
        if message and result.outcome == "unchanged":
            message += ": nothing was left to change, so the earlier attempt's change stands"
        # The audit record first, then the journal: a worker that dies between the two leaves the step to be
        # run again (an ensure: it changes nothing the second time), never a change missing from the trail.
        self._audit(
            item,
            step.key,
            step.action,
            f"{step.system}:{step.target}",
            result.outcome,
            requested_by,
            dn=result.dn,
            changes=result.changes,
            message="; ".join(m for m in (message, result.message) if m),
        )
        if not dry_run:
            store.finish_step(
                item.work_id, step.key, self.owner, {"outcome": result.outcome, "dn": result.dn, **result.data}
            )
        return result.outcome, result.dn

    def _run_target(
        self, item: WorkItem, step: Step, state: _ItemState, requested_by: dict[str, Any], resume: Any
    ) -> StepResult:
        """Run ``step`` on its target (the blocking call a step lease covers)."""
        if step.system == "ad":
            return self._run_ad_step(item, step, state)
        if step.target in state.created:
            state.created.discard(step.target)
            state.loaded.discard(step.target)  # read back lazily, only if the step asks for it
        context = StepContext(
            item=item,
            step=step,
            dry_run=self.settings.dry_run,
            ad_account=lambda: self._account(item, step.target, state),
            facts=state.facts,
            requested_by=requested_by,
            resume=resume,
        )
        self._check_protected_before(item, step, state)
        result = self._extension(step.system, step.target).run(context)
        state.facts[step.key] = result.data
        return result

    def _begin_once_only(
        self,
        item: WorkItem,
        step: Step,
        state: _ItemState,
        note: dict[str, Any] | None,
        requested_by: dict[str, Any],
    ) -> tuple[tuple[Outcome, str | None] | None, bool]:
        """Before a once-only step (password reset, script): decide from its journal note whether to run it.

        Each attempt first notes a *marker* the target reads (for a password reset, the version of the
        password in AD's replication metadata). An attempt that finds a note from an earlier, unfinished
        one compares markers: changed means that attempt took effect (recorded as done, not repeated);
        unchanged means it did not (run now). When the target cannot tell, ``OutcomeUnknown`` leaves the
        decision to an operator. No note means no attempt began: run now.

        Returns the outcome when the step is settled without running (None when the caller runs it), and
        whether a failure of the run must keep the claim: with a readable marker the next attempt can tell
        what happened, so even a timeout that may hide a write is safe to retry; without one the target's
        own ``Retryable`` (nothing was done) or ``OutcomeUnknown`` (something may have been) decides.
        """
        store = self.runtime.store
        marker = self._once_only_marker(item, step, state)
        if note is not None and "marker" in note:
            before = note["marker"]
            if before is None or marker is None:
                raise OutcomeUnknown(
                    f"step {step.key} ({step.action}) was interrupted after it started and runs at most once: "
                    f"it may have run. Check its effect, then `lifecycle journal release {item.work_id} "
                    f"{step.key}` (add --done if it ran) and replay this item"
                )
            if before != marker:
                dn = self._step_dn(item, step, state)
                self._audit(
                    item,
                    step.key,
                    step.action,
                    f"{step.system}:{step.target}",
                    "unchanged",
                    requested_by,
                    dn=dn,
                    message=f"an interrupted earlier attempt had taken effect ({before} -> {marker}); not repeated",
                )
                store.finish_step(item.work_id, step.key, self.owner, {"outcome": "changed", "dn": dn})
                return ("unchanged", dn), False
        store.note_step(item.work_id, step.key, self.owner, {"marker": marker})
        return None, marker is not None

    def _once_only_marker(self, item: WorkItem, step: Step, state: _ItemState) -> str | None:
        if step.system == "ad":
            return self._ad(step.target).once_only_marker(step, self._account(item, step.target, state))
        target = self._extension(step.system, step.target)
        read: Callable[[Step], str | None] | None = getattr(target, "once_only_marker", None)
        return read(step) if read is not None else None

    def _step_dn(self, item: WorkItem, step: Step, state: _ItemState) -> str | None:
        if step.system != "ad":
            return None
        account = self._account(item, step.target, state)
        return account.dn if account is not None else None

    def _account(self, item: WorkItem, connection: str, state: _ItemState) -> Account | None:
        """The person's AD account on ``connection``, read once per work item and kept current by AD steps."""
        if connection not in state.loaded:
            from lifecycle.targets.ad import Anchor

            account = self._ad(connection).find(Anchor.for_user(item.anchor, item.anchor_prefix, item.event.user_id))
            if account is not None:
                # Which of its groups are privileged, for the protection check every target applies.
                self._ad(connection).annotate_protection(account)
            state.accounts[connection] = account
            state.loaded.add(connection)
        return state.accounts.get(connection)

    def _check_protected_before(self, item: WorkItem, step: Step, state: _ItemState) -> None:
        """The protection check of ``lifecycle.protection`` before any non-AD step (Graph, home folders, scripts,
        write-back), when the item has an AD account to decide on: one rule for every target, whatever order
        the mapping lists the steps in. A cloud-only item has no AD account to ask."""
        if not any(s.system == "ad" for s in item.steps):
            return
        account = self._account(item, step.target, state)
        if account is not None:
            self._ad(step.target).check_protected(account)

    def _run_ad_step(self, item: WorkItem, step: Step, state: _ItemState) -> StepResult:
        from lifecycle.targets.ad import Anchor

        target = self._ad(step.target)
        anchor = Anchor.for_user(item.anchor, item.anchor_prefix, item.event.user_id)
        # create_user does its own look-up by the anchor; every other step reads the account once per item.
        account = None
        correlate: list[tuple[str, str]] = []
        if step.action != "create_user" or step.target in state.loaded:
            account = self._account(item, step.target, state)
        else:
            # The same correlation as the reconcile (mail, UPN, login): an existing account is never doubled.
            correlate = correlation_pairs(self.settings.halo_reconcile_fallbacks, item.event)
        if account is None and step.target in state.dry_created:
            return _after_dry_run_create(step)
        result, account = target.execute(step, anchor, account, correlate)
        if step.action == "create_user" and result.outcome == "dry_run" and account is None:
            state.dry_created.add(step.target)
        state.accounts[step.target] = account
        state.loaded.add(step.target)
        if step.action == "create_user" and result.outcome == "changed":
            state.created.add(step.target)
        return result

    def _extension(self, system: str, name: str) -> ExtensionTarget:
        targets: dict[tuple[str, str], ExtensionTarget] = self._local.__dict__.setdefault("extensions", {})
        key = (system, name)
        if key not in targets:
            targets[key] = build_target(system, name, self.runtime)
        return targets[key]

    def _stage_deletion(self, item: WorkItem, step: Step, requested_by: dict[str, Any]) -> Outcome:
        days = int(step.params["after_days"])
        due = datetime.fromtimestamp(self._clock(), UTC) + timedelta(days=days)
        staged = WorkItem(
            work_id=f"{item.work_id}:{step.key}",
            lifecycle="staged",
            event=item.event,
            steps=[
                Step(
                    key=step.key,
                    action=step.action,
                    system=step.system,
                    target=step.target,
                    params={**step.params, "after_days": 0},
                )
            ],
            planned_for_status="left",
            anchor=item.anchor,
            anchor_prefix=item.anchor_prefix,
            mapping_digest=item.mapping_digest,
        )
        description = (
            f"delete the account {days} days after the leaver"
            if step.action == "delete_user"
            else f"{step.action} {days} days after the leaver"
        )
        if not self.settings.dry_run:
            self.runtime.store.add_pending(
                PendingAction(
                    user_id=item.event.user_id,
                    key=step.key,
                    due_at=due,
                    work_item=staged.model_dump_json(),
                    created_at=datetime.fromtimestamp(self._clock(), UTC),
                    description=description,
                )
            )
        outcome: Outcome = "dry_run" if self.settings.dry_run else "changed"
        self._audit(
            item,
            step.key,
            step.action,
            step.target,
            outcome,
            requested_by,
            message=f"staged: {description}, due {due.isoformat()} unless rehired",
        )
        return outcome

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

    def _audit(
        self,
        item: WorkItem,
        step: str,
        action: str,
        target: str,
        outcome: Outcome,
        requested_by: dict[str, Any],
        *,
        dn: str | None = None,
        changes: Any = (),
        message: str = "",
    ) -> None:
        self.runtime.store.append_audit(
            AuditEntry(
                at=datetime.fromtimestamp(self._clock(), UTC),
                work_id=item.work_id,
                user_id=item.event.user_id,
                step=step,
                action=action,
                target=target,
                outcome=outcome,
                dn=dn,
                changes=tuple(changes),
                requested_by=requested_by,
                message=message,
            )
        )

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


def _after_dry_run_create(step: Step) -> StepResult:
    """A dry run's report of a step that would follow the creation of an account that does not exist yet."""
    changes: list[Change] = []
    if step.action in ("sync_groups", "add_to_groups"):
        groups = step.params.get("desired") or step.params.get("groups") or []
        changes = [Change("memberOf", None, group) for group in groups]
    elif step.action == "reset_password":
        changes = [Change("unicodePwd", None, "(reset)")]
    return StepResult(
        "dry_run", changes=changes, message="would run on the account create_user makes (it does not exist yet)"
    )
