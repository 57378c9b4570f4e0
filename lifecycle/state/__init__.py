"""The store port: the journal (idempotency), the person records and the audit trail.

Two adapters keep the same contract: ``embedded`` (SQLite, local mode) and ``table`` (Azure Table storage).

- **Journal**: ``claim_step`` is a conditional write. Exactly one worker acquires a (work_id, step) at a time;
  a finished step answers ``done`` with its recorded result forever after, so a redelivered or replayed work
  item never runs a non-idempotent step (password reset, script) twice. A claim whose lease ran out (its
  worker died) can be taken over.
- **Person records**: what was last applied for a Halo user (status, event time, DN), so a stale event does not
  undo a newer one and an update after a leaver is recognised as a rehire.
- **Audit trail**: append-only records of every step's outcome with before/after values (never secrets).
- **Person gates**: while one item of a person backs off, that person's later items wait behind it (on Service
  Bus a back-off is a scheduled copy that would queue behind them); see ``lifecycle.worker``.
- **Mass-change guard**: a sliding window of destructive work items admitted across all workers (an atomic
  check-and-record), and the items it held for approval, each with its full work item body.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

ClaimStatus = Literal["acquired", "done", "busy"]
Outcome = Literal[
    "changed",
    "unchanged",
    "refused",
    "failed",
    "skipped",
    "dry_run",
    "retrying",
    "dead_lettered",
    # The mass-change guard: held for approval, then approved (released) or rejected (dropped).
    "held",
    "approved",
    "rejected",
    # The mapping's [scope] excludes the person: nothing was read or changed.
    "out_of_scope",
]
HeldStatus = Literal["held", "approved", "rejected"]


@dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    result: dict[str, Any] | None = None
    # Acquired from a worker whose lease ran out: it may have been half-way through the step.
    taken_over: bool = False
    # What that worker noted before it began the step (``note_step``), e.g. a marker read before a
    # once-only action, so the taker-over can tell whether the interrupted attempt took effect.
    note: dict[str, Any] | None = None


@dataclass(frozen=True)
class PersonRecord:
    user_id: int
    status: Literal["active", "left"]
    last_event_at: datetime
    last_work_id: str
    dn: str | None = None
    updated_at: datetime | None = None
    # A digest of the Halo fields last applied (reconciliation compares it).
    fingerprint: str = ""


@dataclass(frozen=True)
class Change:
    attribute: str
    before: Any
    after: Any


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    work_id: str
    user_id: int
    step: str
    action: str
    target: str
    outcome: Outcome
    dn: str | None = None
    changes: Sequence[Change] = field(default_factory=tuple)
    # Who asked: source (webhook, runbook, reconcile, replay, cli), delivery id, agent id.
    requested_by: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    sequence: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "at": self.at.isoformat(),
            "work_id": self.work_id,
            "user_id": self.user_id,
            "step": self.step,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "dn": self.dn,
            "changes": [{"attribute": c.attribute, "before": c.before, "after": c.after} for c in self.changes],
            "requested_by": self.requested_by,
            "message": self.message,
        }


@dataclass(frozen=True)
class PendingAction:
    """Staged work due later (a deletion N days after a leaver), cancelled by a rehire."""

    user_id: int
    key: str
    due_at: datetime
    work_item: str  # the JSON body of the work item to enqueue when due
    created_at: datetime
    description: str = ""


@dataclass(frozen=True)
class PersonGate:
    """One person's items wait here while ``holder`` (the root message id of an item) backs off.

    ``waiting`` are the root message ids of the person's later items, in the order they arrived; each was
    rescheduled to come back after the holder, in that order. Only one message of a person is processed at a
    time (the queue's sessions), so the gate needs no conditional writes.
    """

    user_id: int
    holder: str
    until: datetime
    waiting: tuple[str, ...] = ()


@dataclass(frozen=True)
class GuardAdmission:
    """The answer of the mass-change guard's window to one destructive work item."""

    admitted: bool
    # Destructive items admitted in the window after this call (including this one when admitted).
    count: int


@dataclass(frozen=True)
class HeldItem:
    """A destructive work item the mass-change guard held for a person's decision; nothing of it has run."""

    held_id: str
    work_id: str
    user_id: int
    lifecycle: str
    # The JSON body of the work item as it was received: approving enqueues exactly this again.
    work_item: str
    reason: str
    held_at: datetime
    status: HeldStatus = "held"
    decided_at: datetime | None = None
    decided_by: str = ""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "held_id": self.held_id,
            "work_id": self.work_id,
            "user_id": self.user_id,
            "lifecycle": self.lifecycle,
            "reason": self.reason,
            "held_at": self.held_at.isoformat(),
            "status": self.status,
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "decided_by": self.decided_by,
            "note": self.note,
        }


class StateStore(Protocol):
    """The store port."""

    def claim_step(self, work_id: str, step: str, owner: str, lease_seconds: float) -> Claim:
        """Acquire the step for ``owner``, or report it done (with its result) or busy elsewhere."""
        ...

    def finish_step(self, work_id: str, step: str, owner: str, result: dict[str, Any]) -> None:
        """Mark a claimed step done with its result."""
        ...

    def release_step(self, work_id: str, step: str, owner: str) -> None:
        """Give up a claim after a failure, so a retry can claim it again."""
        ...

    def resolve_step(self, work_id: str, step: str, *, done: bool) -> str | None:
        """An operator's verdict on a step left in progress (a once-only step whose worker died).

        ``done=False`` drops the claim so the next delivery runs the step; ``done=True`` records it as done
        (it did run) so it never runs. Returns the status the step had ("in_progress" or "done"), None when the
        journal has no such step; a step already done is left as it is.
        """
        ...

    def note_step(self, work_id: str, step: str, owner: str, note: dict[str, Any]) -> None:
        """Record ``note`` on a step ``owner`` holds in progress; a later ``claim_step`` that takes the step
        over returns it in ``Claim.note`` (``finish_step`` replaces it with the result)."""
        ...

    def get_person(self, user_id: int) -> PersonRecord | None: ...

    def put_person(self, record: PersonRecord) -> None: ...

    def append_audit(self, entry: AuditEntry) -> None: ...

    def audit(
        self,
        *,
        user_id: int | None = None,
        work_id: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[AuditEntry]:
        """Audit entries, oldest first, filtered."""
        ...

    def add_pending(self, pending: PendingAction) -> None:
        """Record (or replace, by user and key) staged work."""
        ...

    def pending(self, *, user_id: int | None = None, due_before: datetime | None = None) -> list[PendingAction]:
        """Staged work, soonest first."""
        ...

    def remove_pending(self, user_id: int, key: str) -> bool:
        """Drop one staged action (it was enqueued); True if it existed."""
        ...

    def cancel_pending(self, user_id: int) -> list[PendingAction]:
        """Drop all staged work of a person (a rehire) and return what was cancelled."""
        ...

    def count_people(self, status: Literal["active", "left"]) -> int:
        """How many person records have ``status`` (the guard's "managed users" are the active ones)."""
        ...

    def get_gate(self, user_id: int) -> PersonGate | None:
        """The person's gate, or None when none of their items backs off."""
        ...

    def get_marker(self, name: str) -> str | None:
        """A small named value shared by every instance (the delta poll's high-water mark), or None."""
        ...

    def put_marker(self, name: str, value: str) -> None:
        """Record (or replace) a named value."""
        ...

    def put_gate(self, gate: PersonGate) -> None:
        """Record (or replace) a person's gate."""
        ...

    def drop_gate(self, user_id: int) -> None:
        """Open the person's gate (nothing happens when there is none)."""
        ...

    # Mass-change guard ---------------------------------------------------------------------------------
    def admit_destructive(
        self, work_id: str, *, now: datetime, window_seconds: float, limit: int, window: str = "destructive"
    ) -> GuardAdmission:
        """Atomically decide whether one more destructive work item may run in the sliding window.

        ``window`` names one of several independent windows: ``destructive`` (leavers, deletions),
        ``joiner`` (account creations, LIFECYCLE_GUARD_MAX_JOINERS), ``halo-rate`` (Halo API requests).

        Across every worker and process sharing the store: forget admissions at or before
        ``now - window_seconds``; if ``work_id`` is still admitted in the window, answer admitted without
        counting it again (a redelivery); otherwise admit and record it at ``now`` only when fewer than
        ``limit`` items are admitted in the window. Two workers racing for the last place never both get it.
        """
        ...

    def touch_window(self, work_id: str, *, now: datetime, window: str) -> None:
        """Move an admitted entry of a named window to ``now`` (a request slot whose answer just arrived)."""
        ...

    def destructive_count(self, *, now: datetime, window_seconds: float, window: str = "destructive") -> int:
        """Destructive items admitted in the window ending at ``now`` (read only, for status displays)."""
        ...

    def hold(self, item: HeldItem) -> bool:
        """Record a held item unless one with its ``held_id`` exists; True if it was new."""
        ...

    def held(self, *, status: HeldStatus | None = "held", limit: int = 1000) -> list[HeldItem]:
        """Held items with ``status`` (every status when None), oldest first."""
        ...

    def get_held(self, held_id: str) -> HeldItem | None:
        """One held item by its id, whatever its status."""
        ...

    def decide_held(
        self, held_id: str, status: Literal["approved", "rejected"], *, by: str, at: datetime, note: str = ""
    ) -> HeldItem | None:
        """Move a held item from ``held`` to ``status`` (a conditional write) and return it as stored after.

        An item already decided keeps its decision and is returned as it is (the caller compares the
        status); None when there is no such item.
        """
        ...

    def health(self) -> bool: ...

    def close(self) -> None: ...
