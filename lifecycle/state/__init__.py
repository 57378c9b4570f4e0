"""The store port: the journal (idempotency), the person records and the audit trail.

Two adapters keep the same contract: ``embedded`` (SQLite, local mode) and ``table`` (Azure Table storage).

- **Journal**: ``claim_step`` is a conditional write. Exactly one worker acquires a (work_id, step) at a time;
  a finished step answers ``done`` with its recorded result forever after, so a redelivered or replayed work
  item never runs a non-idempotent step (password reset, script) twice. A claim whose lease ran out (its
  worker died) can be taken over.
- **Person records**: what was last applied for a Halo user (status, event time, DN), so a stale event does not
  undo a newer one and an update after a leaver is recognised as a rehire.
- **Audit trail**: append-only records of every step's outcome with before/after values (never secrets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

ClaimStatus = Literal["acquired", "done", "busy"]
Outcome = Literal["changed", "unchanged", "refused", "failed", "skipped", "dry_run", "retrying", "dead_lettered"]


@dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    result: dict[str, Any] | None = None
    # Acquired from a worker whose lease ran out: it may have been half-way through the step.
    taken_over: bool = False


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

    def health(self) -> bool: ...

    def close(self) -> None: ...
