"""What the console's pages show, read from the store and queue ports.

The embedded store answers the console's heavier questions with indexed queries (``outcome_counts``,
``search_people``, ``audit_page``); a store without them (Table storage today) is asked through the port's
plain methods with bounded limits, so a page never reads an unbounded table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from lifecycle.queue import DeadLetteredMessage
from lifecycle.state import AuditEntry, PendingAction, PersonRecord

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime

PAGE_SIZE = 50
# A store without indexed console queries is read at most this far.
SCAN_LIMIT = 5000
# Values of these attributes are never shown, whatever the audit holds (it holds only "(set)" markers).
_SECRET_ATTRIBUTE = re.compile(r"unicodepwd|password|secret", re.IGNORECASE)
_MARKERS = {"(set)", "(reset)", None}


def shown(attribute: str, value: Any) -> Any:
    """An audited value as the console shows it: never a password."""
    if _SECRET_ATTRIBUTE.search(attribute) and value not in _MARKERS:
        return "(hidden)"
    return value


@dataclass
class Overview:
    checks: dict[str, bool]
    outcomes: dict[str, int]
    queue: dict[str, int] | None
    dead_letters: int
    held: int
    staged: int
    staged_due: int


def overview(runtime: Runtime, now: datetime) -> Overview:
    from lifecycle.ingress import Ingress

    store, queue = runtime.store, runtime.queue
    checks = Ingress(runtime).health().json()["checks"]
    since = now - timedelta(hours=24)
    counts = getattr(store, "outcome_counts", None)
    if counts is not None:
        outcomes: dict[str, int] = counts(since)
    else:
        # The same rule as the embedded store's query: the latest entry's outcome, "changed" if any step changed.
        last: dict[str, str] = {}
        changed: set[str] = set()
        for entry in store.audit(since=since, limit=SCAN_LIMIT):
            last[entry.work_id] = entry.outcome
            if entry.outcome == "changed":
                changed.add(entry.work_id)
        outcomes = {}
        for work_id, outcome in last.items():
            final = "changed" if outcome == "unchanged" and work_id in changed else outcome
            outcomes[final] = outcomes.get(final, 0) + 1
    queue_counts = getattr(queue, "counts", None)
    depth: dict[str, int] | None = queue_counts() if queue_counts is not None else None
    dead = depth["dead_lettered"] if depth is not None else len(queue.dead_letters(limit=SCAN_LIMIT))
    pending = store.pending()
    return Overview(
        checks=checks,
        outcomes=dict(sorted(outcomes.items())),
        queue=depth,
        dead_letters=dead,
        held=len(store.held(status="held", limit=SCAN_LIMIT)),
        staged=len(pending),
        staged_due=sum(1 for p in pending if p.due_at <= now + timedelta(hours=24)),
    )


# People -----------------------------------------------------------------------------------------------------
@dataclass
class PersonHit:
    user_id: int
    record: PersonRecord | None


def search_people(runtime: Runtime, text: str) -> list[PersonHit]:
    """People by Halo id, or by the start of a name, sAMAccountName, UPN or mail."""
    store = runtime.store
    text = text.strip()
    if not text:
        return []
    ids: list[int] = []
    if text.isdigit():
        ids.append(int(text))
    search = getattr(store, "search_people", None)
    if search is not None:
        ids += [i for i in search(text, limit=PAGE_SIZE) if i not in ids]
    else:
        needle = text.lower()
        for entry in reversed(store.audit(limit=SCAN_LIMIT)):
            if entry.user_id in ids:
                continue
            values = [str(c.after).lower() for c in entry.changes if isinstance(c.after, str)]
            if any(needle in v for v in [*values, (entry.dn or "").lower()]):
                ids.append(entry.user_id)
    hits = [PersonHit(i, store.get_person(i)) for i in ids[:PAGE_SIZE]]
    return [h for h in hits if h.record is not None or store.audit(user_id=h.user_id, limit=1)]


@dataclass
class WorkStory:
    """One work item in a person's timeline: who asked, and each step with its before and after."""

    work_id: str
    at: datetime
    requested_by: dict[str, Any]
    entries: list[AuditEntry] = field(default_factory=list)

    @property
    def who(self) -> str:
        asked = self.requested_by
        source = str(asked.get("source", "?"))
        details = [f"{k} {asked[k]}" for k in ("by", "delivery_id", "approved_by", "agent_id") if asked.get(k)]
        return f"{source} ({', '.join(details)})" if details else source


def timeline(runtime: Runtime, user_id: int, before: int | None) -> tuple[list[WorkStory], int | None]:
    """A person's audit entries, newest work first, one page; and the ``before`` of the next page."""
    store = runtime.store
    page = getattr(store, "audit_page", None)
    if page is not None:
        entries: list[AuditEntry] = page(user_id, before=before, limit=PAGE_SIZE * 4)
    else:
        every = store.audit(user_id=user_id, limit=SCAN_LIMIT)
        entries = [e for e in reversed(every) if before is None or e.sequence < before][: PAGE_SIZE * 4]
    stories: dict[str, WorkStory] = {}
    for entry in entries:  # newest first
        story = stories.get(entry.work_id)
        if story is None:
            story = stories[entry.work_id] = WorkStory(entry.work_id, entry.at, entry.requested_by)
        story.entries.insert(0, entry)
        story.at = min(story.at, entry.at)
    more = entries[-1].sequence if len(entries) == PAGE_SIZE * 4 else None
    return list(stories.values()), more


def staged_for(runtime: Runtime, user_id: int | None = None) -> list[PendingAction]:
    return runtime.store.pending(user_id=user_id)


# Dead letters -----------------------------------------------------------------------------------------------
def dead_letter_page(
    runtime: Runtime, reason: str | None, page: int
) -> tuple[list[DeadLetteredMessage], dict[str, int], int]:
    """One page of dead letters (optionally of one reason), the count per reason, and the total matching."""
    queue = runtime.queue
    start = max(page, 0) * PAGE_SIZE
    paged, counted = getattr(queue, "dead_letter_page", None), getattr(queue, "dead_letter_reasons", None)
    if paged is not None and counted is not None:
        reasons: dict[str, int] = counted()
        rows: list[DeadLetteredMessage] = paged(reason=reason, offset=start, limit=PAGE_SIZE)
        total = reasons.get(reason, 0) if reason is not None else sum(reasons.values())
        return rows, dict(sorted(reasons.items())), total
    every = queue.dead_letters(limit=SCAN_LIMIT)
    reasons = {}
    for m in every:
        reasons[m.reason] = reasons.get(m.reason, 0) + 1
    matching = [m for m in every if reason is None or m.reason == reason]
    return matching[start : start + PAGE_SIZE], dict(sorted(reasons.items())), len(matching)


def with_reason(runtime: Runtime, reason: str) -> list[DeadLetteredMessage]:
    paged = getattr(runtime.queue, "dead_letter_page", None)
    if paged is not None:
        found: list[DeadLetteredMessage] = paged(reason=reason, offset=0, limit=SCAN_LIMIT)
        return found
    return [m for m in runtime.queue.dead_letters(limit=SCAN_LIMIT) if m.reason == reason]


def raw_body(message: DeadLetteredMessage) -> str:
    try:
        return json.dumps(json.loads(message.body), indent=2, ensure_ascii=False)
    except ValueError:
        return message.body.decode("utf-8", "replace")


def age(moment: datetime, now: datetime | None = None) -> str:
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if seconds < 3600:
        return f"{max(seconds, 0) / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def step_summary(steps: Sequence[Any]) -> list[str]:
    """One line per planned step, as ``lifecycle halo test`` prints it."""
    from lifecycle.operations import describe_step

    return [f"{step.key} {describe_step(step)}" for step in steps]
