"""Reconciliation: page through Halo's users and emit events for the drift webhooks missed.

Webhooks can be thin, lost, or switched off by Halo after failures. Reconciliation closes the gap: it streams
every Halo user (one page in memory at a time) and compares each with what was last applied for that person
(the fingerprint in the person record, written by the worker after each work item):

- **Known person, fingerprint differs**: an ``updated`` event; the planner makes it a mover, a leaver
  (``inactive``) or a rehire, exactly as for a webhook, and it goes through the same queue.
- **Unknown person** (first run on an existing directory, or a lost create): correlated before anything is
  created. An account carrying the anchor inside the managed containers (one paged search of the anchor
  attribute per run, held as a set of ids) is *matched*: the person is recorded and reported, no joiner is
  sent. One found by the configured fallbacks (mail, UPN, sAMAccountName: fields Halo users can edit) is a
  *link proposal* (lifecycle.adoption): nothing is stamped or sent until an operator approves it. Only an
  active user with no account gets a ``created`` event (a joiner). Users outside the mapping's scope are
  reported ``out_of_scope`` and nothing more.
- **Mode**: ``LIFECYCLE_RECONCILE_MODE=report`` (the default) audits and lists all of the above and sends
  nothing; ``apply`` sends it. Link proposals (existing accounts matched by mail, UPN, login) are recorded in
  both modes: they wait for an operator anyway.
- **Managed person missing from Halo** (reported by default; sent only with ``LIFECYCLE_HALO_MISSING_USERS`` =
  leaver or deleted, and only when the listing was complete and Halo confirms the user is gone): an event, sent
  through ``send_leavers`` and held by the worker's mass-change guard when they come in a burst.
- **Cloud-only mapping** (no AD step): the accounts are the Entra users carrying the anchor, listed with each
  connection's own tenant (``CloudDirectory``); link proposals (AD accounts) are skipped, said in the notes.

Work ids derive from the user id, the work last applied and the fingerprint, so a second run before the first
run's work is processed sends duplicates the queue drops; after it is processed the fingerprints match and
nothing is sent, and a value that changes back later is new work (the journal has not seen its id).

The fingerprint covers only the Halo fields the mapping reads, so a change to any other field (including the
ones write-back fills) is not drift. It carries Halo's ``ulastupdate`` when the user has one: Halo's list
items are partial, and an unchanged ``ulastupdate`` spares fetching the full user to compare.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from lifecycle import reconcile_cursor
from lifecycle.errors import AdoptionNeeded, ConfigurationError, LifecycleError, Permanent, PolicyRefused
from lifecycle.fingerprints import UNKNOWN_DIGEST, fingerprint, is_complete, user_id_of
from lifecycle.mapping.planner import matches, plan, scope_list_params, scope_verdict, template_context
from lifecycle.mapping.templates import compile_template
from lifecycle.observability import log
from lifecycle.people import ATTRIBUTE_NAME, normalise_user, render_fallback
from lifecycle.queue import message_for
from lifecycle.reconcile_directory import CloudDirectory, Directory
from lifecycle.reconcile_report import REPORT_DETAIL_LIMIT, Decision, Outcome, ReconcileReport
from lifecycle.state import AuditEntry, Change, PersonRecord
from lifecycle.work import EventKind, LifecycleEvent, WorkItem

if TYPE_CHECKING:
    from lifecycle.halo.client import HaloClient, UserListing
    from lifecycle.runtime import Runtime

# Work items per queue send.
_SEND_CHUNK = 50
_LEAVER_LIFECYCLES = frozenset({"leaver", "deleted"})

_DECISIONS: dict[str, Decision] = {
    "joiner": "joiner",
    "mover": "mover",
    "leaver": "leaver",
    "rehire": "rehire",
    "deleted": "deleted",
}


def reconcile_work_id(user_id: int, kind: str, identity: str) -> str:
    """Deterministic: the same drift (``identity``: from which applied state to which fingerprint) found twice
    before it is processed is one piece of work."""
    material = f"reconcile:{user_id}:{kind}:{identity}"
    return "rc-" + hashlib.sha256(material.encode("utf-8")).hexdigest()[:40]


# Sending -----------------------------------------------------------------------------------------------------
def send_items(runtime: Runtime, items: Sequence[WorkItem]) -> list[bool]:
    """Enqueue work items (joiners, movers, rehires); for each, True if new, False if a duplicate."""
    fresh: list[bool] = []
    for start in range(0, len(items), _SEND_CHUNK):
        fresh += runtime.queue.send(
            [message_for(item, source="reconcile") for item in items[start : start + _SEND_CHUNK]]
        )
    return fresh


def send_leavers(runtime: Runtime, items: Sequence[WorkItem]) -> list[bool]:
    """Enqueue leaver and deleted work found by reconciliation (inactive in Halo, or missing from it).

    The one door for destructive reconciliation work, so a guard can wrap it; the worker's mass-change guard
    (lifecycle.guard) also checks every such item before any step runs, so a burst is held for approval.
    """
    return send_items(runtime, items)


# The run -----------------------------------------------------------------------------------------------------
class _Run:
    def __init__(
        self,
        runtime: Runtime,
        client: HaloClient,
        *,
        dry_run: bool,
        mode: Literal["report", "apply"] = "apply",
        on_progress: Callable[[UserListing], None] | None,
        on_outcome: Callable[[Outcome], None] | None,
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.client = client
        self.mapping = runtime.mapping
        self.store = runtime.store
        self.dry_run = dry_run
        self.on_progress = on_progress
        self.on_outcome = on_outcome
        self.report = ReconcileReport(dry_run=dry_run, mode=mode)
        # Report mode: audit and list the drift, send and record nothing (dry-run does not even audit).
        self.report_only = mode == "report" and not dry_run
        from lifecycle.config_check import uses_ad

        # A cloud-only mapping (no AD step): its people's accounts are the Entra users carrying the anchor.
        self.cloud = not uses_ad(self.mapping)
        self.directory: Directory | CloudDirectory = (
            CloudDirectory(runtime) if self.cloud else Directory(runtime, dry_run=dry_run)
        )
        self.run_id = datetime.now(UTC).strftime("reconcile-%Y%m%dT%H%M%SZ")
        self._pending: list[tuple[WorkItem, Outcome]] = []
        self.fallbacks = self._fallbacks()
        if self.cloud:
            self.report.notes.append(CloudDirectory.note(skipped_fallbacks=bool(self.fallbacks)))
            self.fallbacks = []
        from lifecycle.halo.client import HaloAccessDenied

        self._fatal = HaloAccessDenied

    def _fallbacks(self) -> list[tuple[str, str]]:
        pairs = []
        for attribute, template in self.settings.halo_reconcile_fallbacks.items():
            if not ATTRIBUTE_NAME.match(attribute):
                raise ConfigurationError(
                    f"LIFECYCLE_HALO_RECONCILE_FALLBACKS: {attribute!r} is not an AD attribute name"
                )
            compile_template(template)
            pairs.append((attribute, template))
        return pairs

    # Outcomes ----------------------------------------------------------------------------------------------
    def _record(self, outcome: Outcome) -> None:
        report = self.report
        report.decisions[outcome.decision] += 1
        if outcome.decision in ("matched", "link_proposed", "conflict"):
            if len(report.matches) < REPORT_DETAIL_LIMIT:
                report.matches.append(outcome)
        elif outcome.decision == "error":
            if len(report.errors) < REPORT_DETAIL_LIMIT:
                report.errors.append(f"user {outcome.user_id}: {outcome.detail}")
        elif outcome.decision not in ("unchanged", "skipped_inactive", "vanished") and (
            len(report.changes) < REPORT_DETAIL_LIMIT
        ):
            report.changes.append(outcome)
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def _emit(self, event: LifecycleEvent, identity: str, status: Literal["active", "left", "unknown"]) -> None:
        work_id = reconcile_work_id(event.user_id, event.kind, identity)
        try:
            item = plan(event, self.mapping, work_id=work_id, context=self.runtime.plan_context, status=status)
        except (ConfigurationError, ValidationError) as exc:
            self._record(Outcome(event.user_id, "error", f"cannot plan: {exc}"))
            return
        if item.lifecycle == "out_of_scope":
            # Nothing to send: the report lists it and the audit says which condition failed.
            self._record(Outcome(event.user_id, "out_of_scope", item.note))
            self._audit(event.user_id, "out_of_scope", item.note, step="scope", action="scope")
            return
        decision = _DECISIONS.get(item.lifecycle, "mover")
        steps = ", ".join(step.action for step in item.steps)
        outcome = Outcome(event.user_id, decision, steps, work_id)
        if self.dry_run:
            self._record(outcome)
            return
        if self.report_only:
            # LIFECYCLE_RECONCILE_MODE=report: the drift is audited and listed; nothing is sent or changed.
            self._record(outcome)
            self._audit(
                event.user_id,
                "skipped",
                f"drift ({decision}: {steps}); report mode: not sent",
                step="drift",
                action="reconcile",
            )
            return
        self._pending.append((item, outcome))
        if len(self._pending) >= _SEND_CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        leavers = [(i, o) for i, o in pending if i.lifecycle in _LEAVER_LIFECYCLES]
        others = [(i, o) for i, o in pending if i.lifecycle not in _LEAVER_LIFECYCLES]
        for group, send in ((others, send_items), (leavers, send_leavers)):
            if not group:
                continue
            fresh = send(self.runtime, [i for i, _ in group])
            for (_, outcome), is_new in zip(group, fresh, strict=True):
                if is_new:
                    self.report.enqueued += 1
                else:
                    self.report.duplicates += 1
                self._record(Outcome(outcome.user_id, outcome.decision, outcome.detail, outcome.work_id, is_new))

    def _event(self, kind: EventKind, user: dict[str, Any], read_at: datetime) -> LifecycleEvent:
        return LifecycleEvent(kind=kind, user_id=int(user["id"]), occurred_at=read_at, source="reconcile", user=user)

    def _full(self, user_id: int) -> dict[str, Any] | None:
        from lifecycle.halo.client import BATCH_PATIENCE_SECONDS

        self.report.fetched += 1
        user = self.client.fetch_user(user_id, patience=BATCH_PATIENCE_SECONDS)
        return normalise_user(user) if user is not None else None

    # One user ----------------------------------------------------------------------------------------------
    def user(self, listed: dict[str, Any], read_at: datetime) -> None:
        user_id = user_id_of(listed)
        if user_id is None:
            return
        try:
            person = self.store.get_person(user_id)
            if person is not None:
                self._known(listed, user_id, person, read_at)
            else:
                self._unknown(listed, user_id, read_at)
        except self._fatal:
            raise  # Halo refuses the credentials or the permission: no other user will fare better
        except (Permanent, PolicyRefused) as exc:
            self._record(Outcome(user_id, "error", str(exc)))

    def _known(self, listed: dict[str, Any], user_id: int, person: PersonRecord, read_at: datetime) -> None:
        stored_digest, _, stored_stamp = person.fingerprint.partition("@")
        listed = normalise_user(listed)
        full: dict[str, Any] | None
        if is_complete(self.mapping, listed):
            full = listed
        else:
            stamp = listed.get("ulastupdate")
            if stored_stamp and isinstance(stamp, str) and stamp == stored_stamp:
                self._record(Outcome(user_id, "unchanged"))
                return
            full = self._full(user_id)
            if full is None:
                self._record(Outcome(user_id, "vanished", "deleted in Halo during the run"))
                return
        current = fingerprint(self.mapping, full)
        if stored_digest and current.partition("@")[0] == stored_digest:
            self._record(Outcome(user_id, "unchanged"))
            return
        # The work id names the state it moves from too: the same drift found again after it was applied (a
        # value changed back and forth) is new work, not a step the journal already marked done.
        self._emit(self._event("updated", full, read_at), f"{person.last_work_id}>{current}", person.status)

    def _unknown(self, listed: dict[str, Any], user_id: int, read_at: datetime) -> None:
        if listed.get("inactive") is True:
            # Nothing to create for someone who already left; nothing recorded, so a reactivation is a joiner.
            self._record(Outcome(user_id, "skipped_inactive"))
            return
        listed = normalise_user(listed)
        if self._out_of_scope(listed, user_id):
            return  # decided on the list item alone: no request, no directory read
        complete = is_complete(self.mapping, listed)
        stamp = listed.get("ulastupdate")
        if not complete and isinstance(stamp, str) and stamp and self._routable(listed):
            # An anchored account is matched from the list item alone: what was applied is not known, but
            # Halo's stamp is, so the next run compares in full only when the user changed (no request now).
            connection = self._connection(listed)
            if user_id in self.directory.anchored(connection):
                self._matched(user_id, f"{UNKNOWN_DIGEST}@{stamp}", read_at, connection)
                return
        full = listed if complete else self._full(user_id)
        if full is None:
            self._record(Outcome(user_id, "vanished", "deleted in Halo during the run"))
            return
        if full.get("inactive") is True:
            self._record(Outcome(user_id, "skipped_inactive"))
            return
        if self._out_of_scope(full, user_id, decided=True):
            return
        connection = self._connection(full)
        current = fingerprint(self.mapping, full)
        if user_id in self.directory.anchored(connection):
            self._matched(user_id, current, read_at, connection)
            return
        for attribute, template in self.fallbacks:
            value = render_fallback(template, full, user_id)
            if not value:
                continue
            assert isinstance(self.directory, Directory)  # no fallbacks for a cloud-only mapping
            try:
                account = self.directory.find(connection, attribute, value)
            except Permanent:
                detail = f"{attribute}={value} is on several accounts: not linked, no joiner sent"
                self._record(Outcome(user_id, "conflict", detail))
                self._audit(user_id, "refused", detail)
                return
            if account is None:
                continue
            other = account.first(self.mapping.anchor)
            if other not in (None, "", str(user_id)):
                detail = f"{account.dn} matches {attribute}={value} but carries {self.mapping.anchor}={other}"
                self._record(Outcome(user_id, "conflict", detail + ": not linked, no joiner sent"))
                self._audit(user_id, "refused", detail, dn=account.dn)
                return
            assert isinstance(self.directory, Directory)  # no fallbacks for a cloud-only mapping
            try:
                self.directory.target(connection).check_protected(account)
            except PolicyRefused as exc:
                self._record(Outcome(user_id, "conflict", f"{exc}: not linked, no joiner sent"))
                self._audit(user_id, "refused", str(exc), dn=account.dn)
                return
            # Mail, UPN and login are editable in Halo by far less trusted people than an AD administrator: a
            # match by them is proposed, never linked, until an operator approves (lifecycle.adoption).
            self._propose(
                self._event("created", full, read_at), f"new>{current}", connection, account.dn, attribute, value
            )
            return
        self._emit(self._event("created", full, read_at), f"new>{current}", "unknown")

    def _propose(
        self, event: LifecycleEvent, identity: str, connection: str, dn: str, attribute: str, value: str
    ) -> None:
        """Record a link proposal carrying the joiner that runs once an operator approves it."""
        from lifecycle.adoption import link_id_for, propose_link

        work_id = reconcile_work_id(event.user_id, event.kind, identity)
        detail = f"{dn} matches {attribute}={value}: waiting for `lifecycle link approve {link_id_for(work_id)}`"
        if not self.dry_run:
            item = plan(event, self.mapping, work_id=work_id, context=self.runtime.plan_context, status="unknown")
            found = AdoptionNeeded(
                f"an existing account, {dn}, matches {attribute}={value}", dn=dn, attribute=attribute, value=value
            )
            propose_link(self.store, item, connection, found, datetime.now(UTC).timestamp())
            self._audit(event.user_id, "held", detail, dn=dn)
        self._record(Outcome(event.user_id, "link_proposed", detail))

    def _out_of_scope(self, user: dict[str, Any], user_id: int, *, decided: bool = False) -> bool:
        """Record and audit a user the scope excludes; True if it does. With ``decided``, a field the scope
        reads that the full user lacks excludes too (nobody is created on a guess)."""
        event = self._event("updated", user, datetime.now(UTC))
        verdict = scope_verdict(self.mapping.scope, user, template_context(event, ""))
        if verdict.verdict == "in" or (verdict.verdict == "undecided" and not decided):
            return False
        self._record(Outcome(user_id, "out_of_scope", verdict.reason))
        self._audit(user_id, "out_of_scope", verdict.reason, step="scope", action="scope")
        return True

    def _matched(self, user_id: int, fingerprint_value: str, read_at: datetime, connection: str) -> None:
        self._remember(user_id, fingerprint_value, read_at, None)
        self._record(Outcome(user_id, "matched", f"{self.mapping.anchor}={user_id} on connection {connection}"))
        self._audit(user_id, "unchanged", f"matched by {self.mapping.anchor}; no joiner sent")

    def _routable(self, user: dict[str, Any]) -> bool:
        """Whether ``user`` carries every field the routing rules read (so its connection is known)."""
        return all(name in user for rule in self.mapping.routing.rules for name in rule.when)

    def _connection(self, user: dict[str, Any]) -> str:
        event = self._event("updated", user, datetime.now(UTC))
        context = template_context(event, "")
        for rule in self.mapping.routing.rules:
            if matches(rule.when, context):
                return rule.connection
        return self.mapping.routing.default

    def _remember(self, user_id: int, fingerprint_value: str, read_at: datetime, dn: str | None) -> None:
        if self.dry_run or self.report_only:
            return
        self.store.put_person(
            PersonRecord(
                user_id=user_id,
                status="active",
                last_event_at=read_at,
                last_work_id=self.run_id,
                dn=dn,
                fingerprint=fingerprint_value,
            )
        )

    def _audit(
        self,
        user_id: int,
        outcome: Any,
        message: str,
        *,
        dn: str | None = None,
        changes: Sequence[Change] = (),
        step: str = "correlate",
        action: str = "correlate",
    ) -> None:
        if self.dry_run:
            return
        self.store.append_audit(
            AuditEntry(
                at=datetime.now(UTC),
                work_id=self.run_id,
                user_id=user_id,
                step=step,
                action=action,
                target=("graph" if self.cloud else "ad") if action == "correlate" else "-",
                outcome=outcome,
                dn=dn,
                changes=tuple(changes),
                requested_by={"source": "reconcile"},
                message=message,
            )
        )

    # Missing users -----------------------------------------------------------------------------------------
    def missing(self, seen: set[int]) -> None:
        mode = self.settings.halo_missing_users
        if self.cloud:
            # The connections people are routed to (each its own tenant), not AD's.
            routing = self.mapping.routing
            connections = sorted({routing.default, *(rule.connection for rule in routing.rules)})
        else:
            connections = ["default", *self.settings.ad_connections]
        for connection in connections:
            for user_id in sorted(self.directory.anchored(connection) - seen):
                person = self.store.get_person(user_id)
                if person is None or person.status != "active":
                    continue  # an account we never managed, or a leaver already applied
                self.report.missing_checked += 1
                if self._full(user_id) is not None:
                    continue  # listed late (pages shift while Halo changes): not missing after all
                now = datetime.now(UTC)
                if mode == "report" or self.report_only:
                    detail = f"managed (active) but no longer in Halo; LIFECYCLE_HALO_MISSING_USERS={mode}: not sent"
                    self._record(Outcome(user_id, "missing", detail))
                    self._audit(user_id, "skipped", detail, step="missing", action="reconcile")
                    continue
                if mode == "deleted":
                    event = self._event("deleted", {"id": user_id}, now)
                else:
                    event = self._event("updated", {"id": user_id, "inactive": True}, now)
                self._emit(event, f"missing:{person.last_work_id}", person.status)


def run_reconcile(
    runtime: Runtime,
    *,
    dry_run: bool = False,
    mode: Literal["report", "apply"] | None = None,
    on_progress: Callable[[UserListing], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> ReconcileReport:
    """Reconcile Halo's users with what was applied; the timer function and ``lifecycle reconcile`` call this.

    Args:
        runtime: the process's runtime (settings, mapping, queue, store, Halo client).
        dry_run: report what would be sent, linked and recorded; change nothing anywhere, audit nothing.
        mode: "report" audits and lists the drift and sends nothing; "apply" sends it. Default:
            ``LIFECYCLE_RECONCILE_MODE`` (report).
        on_progress: called after each page with the listing (counts so far, Halo's record count).
        on_outcome: called for each user's outcome as it is decided.

    Raises:
        ConfigurationError: the Halo API is not configured.
        Retryable: Halo or AD stayed unreachable or throttled beyond the run's patience; what was sent stays
            sent, and the next run continues from the fingerprints.
        Permanent: Halo refused the credentials or the permission to read users.
    """
    from lifecycle.halo.client import HaloClient

    halo = runtime.halo
    if not isinstance(halo, HaloClient):
        raise ConfigurationError(
            "reconciliation needs the Halo API: set LIFECYCLE_HALO_API_URL, LIFECYCLE_HALO_CLIENT_ID and "
            "LIFECYCLE_HALO_CLIENT_SECRET"
        )
    run = _Run(
        runtime,
        halo,
        dry_run=dry_run or runtime.settings.dry_run,
        mode=mode or runtime.settings.reconcile_mode,
        on_progress=on_progress,
        on_outcome=on_outcome,
    )
    report = run.report
    requests_before, throttled_before = halo.requests, halo.throttled
    track_missing = runtime.settings.halo_missing_users != "ignore"
    seen: set[int] = set()
    params = scope_list_params(runtime.mapping.scope)
    keyed = {"page_size": runtime.settings.halo_page_size, "params": dict(params), "mode": report.mode}
    # The page cursor (lifecycle.reconcile_cursor): a run cut at the invocation's deadline resumes here.
    keep_cursor = not run.dry_run
    cursor = reconcile_cursor.load(runtime.store, keyed) if keep_cursor else None
    listing = halo.list_users(page_size=runtime.settings.halo_page_size, params=params, on_page=on_progress)
    if cursor is not None:
        run.run_id = cursor.run_id
        listing.start_page = cursor.next_page
        listing.record_count, listing.received, listing.invalid = cursor.record_count, cursor.listed, cursor.invalid
        report.decisions.update(cursor.decisions or {})
        report.enqueued, report.duplicates, report.fetched = cursor.enqueued, cursor.duplicates, cursor.fetched
        report.resumed_at = cursor.next_page
        report.notes.append(f"resumed run {cursor.run_id} at page {cursor.next_page}")
    clock = reconcile_cursor.PageClock()
    listing.stop_before = clock.out_of_time
    page_seen: set[int] = set()  # this page's ids, kept for the missing-users check of a resumed pass

    def page_done(done: UserListing) -> None:
        clock.page_done()
        if not keep_cursor:
            return
        run.flush()  # the page's work is sent before the cursor says the page is done
        if track_missing:  # the page's ids are kept before the cursor moves past it
            reconcile_cursor.save_seen(runtime.store, run.run_id, done.next_page - 1, page_seen)
            page_seen.clear()
        reconcile_cursor.save(
            runtime.store,
            reconcile_cursor.Cursor(
                run_id=run.run_id,
                next_page=done.next_page,
                listing=keyed,
                record_count=done.record_count,
                listed=done.received,
                invalid=done.invalid,
                enqueued=report.enqueued,
                duplicates=report.duplicates,
                fetched=report.fetched,
                runs=(cursor.runs + 1) if cursor is not None else 1,
                decisions=report.decisions,
            ),
        )

    listing.on_page_done = page_done
    try:
        for listed in listing:
            if track_missing:
                user_id = user_id_of(listed)
                if user_id is not None:
                    seen.add(user_id)
                    page_seen.add(user_id)
            run.user(listed, listing.page_read_at)
        report.record_count = listing.record_count
        report.listed = listing.received
        report.complete = listing.complete
        report.next_page = listing.next_page if listing.cut else None
        if listing.invalid:
            report.notes.append(f"{listing.invalid} list item(s) without a valid id were skipped")
        if listing.cut:
            report.notes.append(
                f"the invocation's deadline is near: stopped before page {listing.next_page}; the next run resumes "
                "there"
            )
        elif track_missing:
            earlier = (
                set()
                if cursor is None
                else reconcile_cursor.load_seen(runtime.store, cursor.run_id, range(1, cursor.next_page))
            )
            if listing.complete and earlier is not None:
                run.missing(seen | earlier)  # a resumed pass: with the ids its earlier runs listed
            elif earlier is None:
                report.notes.append(
                    "the run resumed from an earlier one whose listed ids were not all kept: missing users were "
                    "not evaluated this time"
                )
            else:
                report.notes.append(
                    "the listing fell short of Halo's record_count (users changed during the run): missing users "
                    "were not evaluated this time"
                )
        run.flush()
        if isinstance(run.directory, CloudDirectory) and run.directory.unread:
            report.notes.append(f"no Graph tenant for {', '.join(sorted(run.directory.unread))}: accounts not read")
        if keep_cursor and not listing.cut:
            reconcile_cursor.clear(runtime.store)
    except LifecycleError:
        run.flush()
        raise
    finally:
        run.directory.close()
        report.requests = halo.requests - requests_before
        report.throttled = halo.throttled - throttled_before
        report.finished_at = datetime.now(UTC)
    log.info("%s", report.summary(), extra={"reconcile": {k: v for k, v in report.decisions.items()}})
    return report
