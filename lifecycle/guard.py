"""The mass-change guard: a burst of destructive work is held for a person's decision, not run and not lost.

One wrong payload or a Halo misconfiguration (every user made inactive by a bad import, a webhook pointed at
the wrong instance) must not disable a whole company. Every destructive work item asks the store's shared
sliding window for a place before any of its steps runs; past the limit it is *held*: its full body is stored
and its queue message completed, so nothing runs and nothing is lost. An operator then approves (the item is
enqueued again and the guard lets it through) or rejects it (dropped, audited): ``lifecycle held`` or the
``/api/manage/held`` routes.

Destructive means: the item takes access away from someone the service knows as active (its lifecycle is
leaver or deleted, or one of its steps is in ``LIFECYCLE_GUARD_ACTIONS``), or it deletes something at once
(a ``delete_*`` action that is not merely staged) whatever the person's state. A leaver for a person already
recorded as left repeats what is done and is not counted again.

Limits: ``LIFECYCLE_GUARD_MAX_COUNT`` items and ``LIFECYCLE_GUARD_MAX_PERCENT`` percent of the managed (active)
people within ``LIFECYCLE_GUARD_WINDOW_SECONDS``; the smaller one applies.

Every connection (an MSP's customer: its AD domain and Microsoft 365 tenant, ``lifecycle.tenancy``) has windows
of its own: a burst in one customer's directory holds that customer's items and no one else's; the held reason
names the connection and its tenant. The ``default`` connection keeps the windows' historical names.

Creations are counted too, in a window of their own: past ``LIFECYCLE_GUARD_MAX_JOINERS`` joiners per window
the rest are held the same way, so a scope mistake or a bulk import in Halo cannot create hundreds of accounts
unseen. Held joiners are approved or rejected like held leavers.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from lifecycle.errors import LifecycleError
from lifecycle.observability import log
from lifecycle.queue import message_for
from lifecycle.state import AuditEntry, HeldItem
from lifecycle.tenancy import connection_of, describe

if TYPE_CHECKING:
    from lifecycle.queue import WorkQueue
    from lifecycle.settings import Settings
    from lifecycle.state import PersonRecord, StateStore
    from lifecycle.work import WorkItem

# Stable names for alerting (log queries, Application Insights alert rules): do not rename.
EVENT_HELD = "lifecycle.guard.held"
EVENT_APPROVED = "lifecycle.guard.approved"
EVENT_REJECTED = "lifecycle.guard.rejected"
# Message properties of a released item: which held record approved it, and who did.
HELD_ID_PROPERTY = "held_id"
APPROVED_BY_PROPERTY = "approved_by"
_DESTRUCTIVE_LIFECYCLES = frozenset({"leaver", "deleted"})


class HeldNotFound(LifecycleError, LookupError):
    """No held item has this id."""


class HeldConflict(LifecycleError):
    """The held item was already decided the other way."""


def held_id_for(work_id: str) -> str:
    """The short, stable id of a work item's hold (an operator types it; a store uses it as a key)."""
    return hashlib.sha256(work_id.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Limits:
    """The window in force: at most ``limit`` destructive items per ``window_seconds``."""

    limit: int
    window_seconds: float
    managed: int
    explanation: str


@dataclass(frozen=True)
class GuardVerdict:
    """What the worker does with an item: ``run`` it, or stop because it is ``held`` or was ``rejected``."""

    action: Literal["run", "held", "rejected"]
    message: str = ""
    # In dry-run the guard holds nothing; a note says the item would have been held.
    dry_run_note: str = ""


def _now(clock: Callable[[], float]) -> datetime:
    return datetime.fromtimestamp(clock(), UTC)


def _deletes_now(item: WorkItem, guarded: set[str]) -> bool:
    for step in item.steps:
        if step.action in guarded and step.action.startswith("delete_"):
            if int(step.params.get("after_days", 0) or 0) > 0 and item.lifecycle != "staged":
                continue  # staged for later: the deletion itself is guarded when it comes due
            return True
    return False


def is_destructive(item: WorkItem, person: PersonRecord | None, guarded_actions: list[str]) -> bool:
    """Whether ``item`` takes access away or deletes (see the module's docstring)."""
    guarded = set(guarded_actions)
    if _deletes_now(item, guarded):
        return True
    if person is not None and person.status == "left":
        return False
    return item.lifecycle in _DESTRUCTIVE_LIFECYCLES or any(step.action in guarded for step in item.steps)


class MassChangeGuard:
    """The guard's decision for the worker, and the operator's release or rejection of held items."""

    def __init__(self, settings: Settings, store: StateStore, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock

    @property
    def enabled(self) -> bool:
        settings = self.settings
        return settings.guard_max_count > 0 or settings.guard_max_percent > 0 or settings.guard_max_joiners > 0

    def joiner_limits(self) -> Limits | None:
        """The joiners' own limit, or None when ``LIFECYCLE_GUARD_MAX_JOINERS`` is 0."""
        limit = self.settings.guard_max_joiners
        if limit <= 0:
            return None
        return Limits(limit, self.settings.guard_window_seconds, 0, f"{limit} joiners (LIFECYCLE_GUARD_MAX_JOINERS)")

    def limits(self) -> Limits | None:
        """The limit in force now (it depends on how many people are managed), or None when the guard is off."""
        settings = self.settings
        limits: list[tuple[int, str]] = []
        managed = 0
        if settings.guard_max_count > 0:
            limits.append((settings.guard_max_count, f"{settings.guard_max_count} items"))
        if settings.guard_max_percent > 0:
            managed = self.store.count_people("active")
            # With no managed people recorded yet there is no population to take a share of: the count
            # limit still applies. At least one item passes, so a single leaver is never held by arithmetic.
            if managed > 0:
                share = max(1, math.floor(managed * settings.guard_max_percent / 100))
                limits.append((share, f"{settings.guard_max_percent:g}% of {managed} managed people = {share} items"))
        if not limits:
            return None
        limit, explanation = min(limits)
        return Limits(limit, settings.guard_window_seconds, managed, explanation)

    def check(self, item: WorkItem, person: PersonRecord | None, received: WorkItem) -> GuardVerdict:
        """Decide whether ``item`` (as planned now) may run; hold it (storing ``received``) when it may not."""
        destructive = is_destructive(item, person, self.settings.guard_actions)
        joiner = not destructive and item.lifecycle == "joiner"
        if not destructive and not (joiner and self.settings.guard_max_joiners > 0):
            return GuardVerdict("run")
        held_id = held_id_for(item.work_id)
        earlier = self.store.get_held(held_id)
        if earlier is not None and earlier.status == "approved":
            return GuardVerdict("run", f"approved by {earlier.decided_by} at {earlier.decided_at}")
        if earlier is not None and earlier.status == "rejected":
            return GuardVerdict(
                "rejected", f"rejected by {earlier.decided_by} at {earlier.decided_at}: not run (mass-change guard)"
            )
        if earlier is not None:
            # Held already (a redelivery of the held message): it stays held, once.
            return GuardVerdict("held", f"still held for approval as {held_id}: {earlier.reason}")
        limits = self.joiner_limits() if joiner else self.limits()
        if limits is None:
            return GuardVerdict("run")
        now = _now(self.clock)
        connection = connection_of(item) or "default"
        window = window_name("joiner" if joiner else "destructive", connection)
        admission = self.store.admit_destructive(
            item.work_id, now=now, window_seconds=limits.window_seconds, limit=limits.limit, window=window
        )
        if admission.admitted:
            return GuardVerdict("run")
        what = "joiners (account creations)" if joiner else "destructive items"
        reason = (
            f"mass-change guard: {admission.count} {what} of {describe(self.settings, connection)} already ran in "
            f"the last {limits.window_seconds:g} s (limit {limits.explanation}); approve with `lifecycle held approve "
            f"{held_id}` or reject with `lifecycle held reject {held_id}`"
        )
        if self.settings.dry_run:
            return GuardVerdict("run", dry_run_note=f"would be held: {reason}")
        self.store.hold(
            HeldItem(
                held_id=held_id,
                work_id=item.work_id,
                user_id=item.event.user_id,
                lifecycle=item.lifecycle,
                work_item=received.model_dump_json(),
                reason=reason,
                held_at=now,
            )
        )
        # The alert: error level and a stable event name, so a log query or an alert rule fires at once.
        log.error(
            "mass-change guard held a destructive work item",
            extra={
                "event": EVENT_HELD,
                "held_id": held_id,
                "connection": connection,
                "lifecycle": item.lifecycle,
                "window_count": admission.count,
                "limit": limits.limit,
                "window_seconds": limits.window_seconds,
            },
        )
        _count_held(item.lifecycle)
        return GuardVerdict("held", reason)

    # Operator decisions ------------------------------------------------------------------------------------
    def approve(self, held_id: str, queue: WorkQueue, *, by: str, source: str, note: str = "") -> HeldItem:
        """Release a held item: mark it approved, then enqueue its work item again.

        The message id is derived from the hold, so approving twice (or again after a crash between the two
        writes) sends one message: the queue drops the duplicate. Approving an approved item re-sends it.
        """
        current = self.store.get_held(held_id)
        if current is None:
            raise HeldNotFound(f"no held work item {held_id!r} (see `lifecycle held list`)")
        if current.lifecycle == "link":
            raise HeldConflict(f"{held_id} is a link proposal: decide it with `lifecycle link approve {held_id}`")
        if current.status == "rejected":
            raise HeldConflict(f"held work item {held_id} was rejected by {current.decided_by}; it cannot be approved")
        decided = self.store.decide_held(held_id, "approved", by=by, at=_now(self.clock), note=note)
        if decided is None or decided.status != "approved":
            raise HeldConflict(f"held work item {held_id} was decided otherwise meanwhile")
        item_json = decided.work_item
        from lifecycle.work import WorkItem

        item = WorkItem.model_validate_json(item_json)
        queue.send(
            [
                message_for(
                    item,
                    message_id=f"approved-{held_id}",
                    **{HELD_ID_PROPERTY: held_id, APPROVED_BY_PROPERTY: by},
                )
            ]
        )
        if current.status == "held":
            self._audit(decided, "approved", source, by, f"released for processing{f': {note}' if note else ''}")
            log.warning("held work item approved", extra={"event": EVENT_APPROVED, "held_id": held_id, "by": by})
        return decided

    def reject(self, held_id: str, *, by: str, source: str, note: str = "") -> HeldItem:
        """Drop a held item for good (audited); it never runs, and a re-sent copy is not run either."""
        current = self.store.get_held(held_id)
        if current is None:
            raise HeldNotFound(f"no held work item {held_id!r} (see `lifecycle held list`)")
        if current.lifecycle == "link":
            raise HeldConflict(f"{held_id} is a link proposal: decide it with `lifecycle link approve {held_id}`")
        if current.status == "approved":
            raise HeldConflict(f"held work item {held_id} was approved by {current.decided_by}; it cannot be rejected")
        decided = self.store.decide_held(held_id, "rejected", by=by, at=_now(self.clock), note=note)
        if decided is None or decided.status != "rejected":
            raise HeldConflict(f"held work item {held_id} was decided otherwise meanwhile")
        if current.status == "held":
            self._audit(decided, "rejected", source, by, f"dropped, not run{f': {note}' if note else ''}")
            log.warning("held work item rejected", extra={"event": EVENT_REJECTED, "held_id": held_id, "by": by})
        return decided

    def _audit(
        self, held: HeldItem, outcome: Literal["approved", "rejected"], source: str, by: str, message: str
    ) -> None:
        requested_by: dict[str, Any] = {"source": source, "by": by, "held_id": held.held_id}
        self.store.append_audit(
            AuditEntry(
                at=_now(self.clock),
                work_id=held.work_id,
                user_id=held.user_id,
                step="-",
                action="mass_change_guard",
                target="-",
                outcome=outcome,
                requested_by=requested_by,
                message=message,
            )
        )

    def status(self) -> dict[str, Any]:
        """The window now: how many destructive items (and joiners) ran in it and the limits in force."""
        limits = self.limits()
        joiners = self.joiner_limits()
        if limits is None and joiners is None:
            return {"enabled": False}
        now = _now(self.clock)
        status: dict[str, Any] = {"enabled": True, "window_seconds": self.settings.guard_window_seconds}
        if limits is not None:
            status["count"] = self.store.destructive_count(now=now, window_seconds=limits.window_seconds)
            status["limit"] = limits.limit
            status["limit_from"] = limits.explanation
        if joiners is not None:
            status["joiners"] = self.store.destructive_count(
                now=now, window_seconds=joiners.window_seconds, window="joiner"
            )
            status["joiner_limit"] = joiners.limit
        # Each named connection (customer) counts in windows of its own.
        per_connection: dict[str, dict[str, int]] = {}
        for name in sorted({*self.settings.ad_connections, *self.settings.graph_connections}):
            counts: dict[str, int] = {}
            if limits is not None:
                counts["count"] = self.store.destructive_count(
                    now=now, window_seconds=limits.window_seconds, window=window_name("destructive", name)
                )
            if joiners is not None:
                counts["joiners"] = self.store.destructive_count(
                    now=now, window_seconds=joiners.window_seconds, window=window_name("joiner", name)
                )
            per_connection[name] = counts
        if per_connection:
            status["connections"] = per_connection
        status["held"] = len(self.store.held(status="held", limit=100_000))
        return status


def window_name(kind: str, connection: str) -> str:
    """The store's window of ``kind`` for one connection (``default`` keeps the plain name)."""
    return kind if connection == "default" else f"{kind}@{connection}"


def _count_held(lifecycle: str) -> None:
    """Count the hold on an OpenTelemetry counter (a no-op until the host configures a meter provider)."""
    try:
        from opentelemetry import metrics
    except ImportError:  # the API ships with the Graph SDK; without it the log line is the alert
        return
    counter = metrics.get_meter("lifecycle").create_counter(
        EVENT_HELD, unit="{item}", description="destructive work items held by the mass-change guard"
    )
    counter.add(1, {"lifecycle": lifecycle})
