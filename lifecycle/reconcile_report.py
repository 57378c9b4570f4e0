"""What a reconciliation run reports: one outcome per user, exact counts, capped detail lists, a summary line.

Kept apart from ``lifecycle.reconcile`` (how drift is found): these change with what an operator or the
timer's log is shown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

# How many individual matches, errors and decisions a report keeps (the counts are always exact).
REPORT_DETAIL_LIMIT = 1000

Decision = Literal[
    "unchanged",
    "joiner",
    "mover",
    "leaver",
    "rehire",
    "deleted",
    "matched",
    "link_proposed",
    "conflict",
    "out_of_scope",
    "missing",
    "skipped_inactive",
    "vanished",
    "error",
]


@dataclass(frozen=True)
class Outcome:
    """One user's result, for progress output and the report's details."""

    user_id: int
    decision: Decision
    detail: str = ""
    work_id: str | None = None
    # For sent work: True new, False a duplicate of work already queued; None when nothing was sent.
    new: bool | None = None


@dataclass
class ReconcileReport:
    """What a run found and did (or, in dry-run, would do). Counts are exact; detail lists are capped."""

    dry_run: bool
    mode: str = "apply"
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    record_count: int | None = None
    listed: int = 0
    complete: bool = False
    decisions: Counter[str] = field(default_factory=Counter)
    enqueued: int = 0
    duplicates: int = 0
    fetched: int = 0
    requests: int = 0
    throttled: int = 0
    missing_checked: int = 0
    # The page cursor (lifecycle.reconcile_cursor): where this run resumed, and where the next one will.
    resumed_at: int | None = None
    next_page: int | None = None
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    matches: list[Outcome] = field(default_factory=list)
    changes: list[Outcome] = field(default_factory=list)

    def count(self, decision: str) -> int:
        return self.decisions.get(decision, 0)

    @property
    def joiners(self) -> int:
        return self.count("joiner")

    @property
    def movers(self) -> int:
        return self.count("mover")

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "mode": self.mode,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "record_count": self.record_count,
            "listed": self.listed,
            "complete": self.complete,
            "decisions": dict(sorted(self.decisions.items())),
            "enqueued": self.enqueued,
            "duplicates": self.duplicates,
            "fetched": self.fetched,
            "requests": self.requests,
            "throttled": self.throttled,
            "resumed_at": self.resumed_at,
            "next_page": self.next_page,
            "notes": self.notes,
            "errors": self.errors,
            "matches": [_outcome_json(o) for o in self.matches],
            "changes": [_outcome_json(o) for o in self.changes],
        }

    def summary(self) -> str:
        verb = "would send" if self.dry_run or self.mode == "report" else "sent"
        sent = self.enqueued
        if self.dry_run or self.mode == "report":
            sent = sum(self.decisions.get(d, 0) for d in ("joiner", "mover", "leaver", "rehire", "deleted"))
        parts = [f"{name} {count}" for name, count in sorted(self.decisions.items()) if count]
        listing = "complete" if self.complete else "INCOMPLETE"
        return (
            f"reconciled {self.listed} of {self.record_count if self.record_count is not None else '?'} Halo users "
            f"({listing}): {', '.join(parts) or 'nothing'}; {verb} {sent} work item(s)"
            f"{f', {self.duplicates} already queued' if self.duplicates else ''}; {self.fetched} full user(s) "
            f"fetched, {self.requests} Halo request(s), {self.throttled} throttled"
            f"{f'; resumed at page {self.resumed_at}' if self.resumed_at else ''}"
            f"{f'; stopped before page {self.next_page}, the next run resumes there' if self.next_page else ''}"
        )


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "user_id": outcome.user_id,
        "decision": outcome.decision,
        "detail": outcome.detail,
        "work_id": outcome.work_id,
        "new": outcome.new,
    }
