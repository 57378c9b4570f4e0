"""One step of a work item on its target: the claim in the journal and its lease, once-only steps, the
protection check, the AD and extension targets of this thread, staged deletions, and the audit entry.

The worker (``lifecycle.worker``) runs a work item's steps in order through this; kept apart because this
changes with what a step promises (exactly once in effect), the worker with how messages arrive and settle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from lifecycle.actions import action_info
from lifecycle.errors import (
    AdoptionNeeded,
    OutcomeUnknown,
    PolicyRefused,
    Retryable,
    Unfinished,
)
from lifecycle.leases import LeaseKeeper
from lifecycle.people import correlation_pairs
from lifecycle.state import AuditEntry, Change, Outcome, PendingAction
from lifecycle.targets import ExtensionTarget, StepContext, StepResult, build_target
from lifecycle.work import Step, WorkItem

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime
    from lifecycle.settings import Settings
    from lifecycle.targets.ad import Account, ADTarget

# A claimed step whose worker died is taken over after this long.
STEP_LEASE_SECONDS = 120.0


@dataclass
class ItemState:
    """What the steps of one work item share: AD accounts read so far, and facts recorded by steps."""

    accounts: dict[str, Account | None] = field(default_factory=dict)
    loaded: set[str] = field(default_factory=set)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Connections on which a dry run "created" the account (so later steps have none to read).
    dry_created: set[str] = field(default_factory=set)
    # Connections whose account was created by this item: known only from what was written (no objectSid,
    # objectGUID), so an extension step that asks for it gets it read back from the directory.
    created: set[str] = field(default_factory=set)


class StepRunner:
    """Runs single steps; the worker is one. Thread-safe: each thread gets its own target connections."""

    # Set by the worker's constructor.
    runtime: Runtime
    settings: Settings
    owner: str
    _clock: Callable[[], float]
    _local: threading.local

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

    def _run_step(
        self, item: WorkItem, step: Step, state: ItemState, requested_by: dict[str, Any]
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
        self, item: WorkItem, step: Step, state: ItemState, requested_by: dict[str, Any], resume: Any
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
        state: ItemState,
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

    def _once_only_marker(self, item: WorkItem, step: Step, state: ItemState) -> str | None:
        if step.system == "ad":
            return self._ad(step.target).once_only_marker(step, self._account(item, step.target, state))
        target = self._extension(step.system, step.target)
        read: Callable[[Step], str | None] | None = getattr(target, "once_only_marker", None)
        return read(step) if read is not None else None

    def _step_dn(self, item: WorkItem, step: Step, state: ItemState) -> str | None:
        if step.system != "ad":
            return None
        account = self._account(item, step.target, state)
        return account.dn if account is not None else None

    def _account(self, item: WorkItem, connection: str, state: ItemState) -> Account | None:
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

    def _check_protected_before(self, item: WorkItem, step: Step, state: ItemState) -> None:
        """The protection check of ``lifecycle.protection`` before any non-AD step (Graph, home folders, scripts,
        write-back), when the item has an AD account to decide on: one rule for every target, whatever order
        the mapping lists the steps in. A cloud-only item has no AD account to ask."""
        if not any(s.system == "ad" for s in item.steps):
            return
        account = self._account(item, step.target, state)
        if account is not None:
            self._ad(step.target).check_protected(account)

    def _run_ad_step(self, item: WorkItem, step: Step, state: ItemState) -> StepResult:
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
