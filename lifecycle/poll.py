"""The delta poll: changes made directly to Halo users, picked up within one timer interval.

No public Halo source documents a webhook event for a user being created, changed or deleted, so this trigger
exists for certain: every ``LIFECYCLE_HALO_POLL_SCHEDULE`` (5 minutes by default) it lists users ordered by
``ulastupdate``, newest first (``GET /api/Users?order=ulastupdate&orderdesc=true``, with the scope's filters),
and stops at the previous high-water mark, kept in the store so every instance shares it. Each user changed
since then goes through the same path as a webhook: the planner (with the scope), the queue (deduplicated by a
work id made of the user id and its ``ulastupdate``) and the worker (stale check, guard, steps).

Cost: when nothing changed, one request, if Halo's list items carry ``ulastupdate``; its list schema does not
promise it (**unconfirmed**), so when an item lacks it the user is fetched to read it: a quiet poll then costs
two requests (the list and the newest user). Whether Halo honours ``order=ulastupdate`` is **unconfirmed** too:
a page that is not newest-first is detected, nothing is sent, and the poll says so (the daily reconcile
still catches every change then).

The first poll records the mark and sends nothing: what happened before is the reconcile's job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lifecycle.errors import ConfigurationError
from lifecycle.fingerprints import is_complete
from lifecycle.mapping.planner import plan, scope_list_params
from lifecycle.observability import log
from lifecycle.people import normalise_user
from lifecycle.queue import message_for
from lifecycle.work import EventKind, LifecycleEvent, WorkItem

if TYPE_CHECKING:
    from lifecycle.halo.client import HaloClient
    from lifecycle.runtime import Runtime

MARKER = "halo-poll"
# Pages read at most per poll. Newest first cannot resume below a page it did not reach, so the changes of a
# larger burst (a bulk import) past these pages are left to the reconcile, and the poll says so at error level.
MAX_PAGES = 20


@dataclass
class PollReport:
    """What one poll did."""

    requests: int = 0
    changed: list[int] = field(default_factory=list)
    sent: int = 0
    duplicates: int = 0
    first_run: bool = False
    note: str = ""
    mark: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "changed": self.changed,
            "sent": self.sent,
            "duplicates": self.duplicates,
            "first_run": self.first_run,
            "note": self.note,
            "mark": self.mark,
        }


def _stamp(value: Any) -> datetime | None:
    """Halo's ``ulastupdate`` as an aware UTC time (Halo writes UTC without an offset)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def poll_work_id(user_id: int, stamp: datetime) -> str:
    """The same change seen by two polls (or two instances) is one piece of work."""
    return "poll-" + hashlib.sha256(f"{user_id}@{stamp.isoformat()}".encode()).hexdigest()[:40]


def run_poll(runtime: Runtime) -> PollReport:
    """One delta poll; the timer function and ``lifecycle halo poll`` call this."""
    from lifecycle.halo.client import HaloClient

    client = runtime.halo
    if not isinstance(client, HaloClient):
        raise ConfigurationError("the delta poll needs the Halo API: set LIFECYCLE_HALO_API_URL and its credentials")
    return _Poll(runtime, client).run()


class _Poll:
    def __init__(self, runtime: Runtime, client: HaloClient) -> None:
        self.runtime = runtime
        self.client = client
        self.report = PollReport()
        raw = runtime.store.get_marker(MARKER)
        mark = json.loads(raw) if raw else None
        self.mark_at = _stamp(mark.get("at")) if isinstance(mark, dict) else None
        self.mark_ids: set[int] = set(mark.get("ids", [])) if isinstance(mark, dict) else set()
        self.first_id = 0

    def _stamp_of(self, item: dict[str, Any]) -> tuple[datetime | None, dict[str, Any] | None]:
        """The item's ``ulastupdate``; fetches the user when the list item lacks it (returns the full user)."""
        stamp = _stamp(item.get("ulastupdate"))
        if stamp is not None:
            return stamp, None
        self.report.requests += 1
        full = self.client.fetch_user(int(item["id"]))
        return (_stamp(full.get("ulastupdate")) if full else None), full

    def run(self) -> PollReport:
        runtime, report = self.runtime, self.report
        params = {"order": "ulastupdate", "orderdesc": "true", **scope_list_params(runtime.mapping.scope)}
        size = runtime.settings.halo_poll_page_size
        changed: list[tuple[dict[str, Any], datetime, dict[str, Any] | None]] = []
        newest: datetime | None = None
        previous: datetime | None = None
        done = False
        for page_no in range(1, MAX_PAGES + 1):
            report.requests += 1
            page = self.client.users_page(page_no, page_size=size, params=params)
            for item in page.users:
                if not isinstance(item, dict) or not isinstance(item.get("id"), int):
                    continue
                stamp, full = self._stamp_of(item)
                if stamp is None:
                    report.note = f"user {item.get('id')} has no readable ulastupdate: nothing sent this time"
                    return self._finish([], None)
                if previous is not None and stamp > previous:
                    report.note = (
                        "Halo did not list users newest first (order=ulastupdate ignored?): nothing sent; the "
                        "reconcile catches these changes"
                    )
                    log.error("delta poll: %s", report.note)
                    return self._finish([], None)
                previous = stamp
                newest = newest or stamp
                if self.mark_at is None:
                    self.first_id = int(item["id"])
                    done = True  # first poll: only the mark is recorded
                    break
                if stamp < self.mark_at or (stamp == self.mark_at and item["id"] in self.mark_ids):
                    done = True
                    break
                changed.append((item, stamp, full))
            if done or len(page.users) < size:
                break
        else:
            if self.mark_at is not None:
                report.note = (
                    f"more than {MAX_PAGES * size} users changed since the last poll: the older changes are left "
                    "to the reconcile (run `lifecycle reconcile --mode apply`)"
                )
                log.error("delta poll: %s", report.note)
        if self.mark_at is None:
            report.first_run = True
        return self._finish(changed, newest)

    def _finish(
        self, changed: list[tuple[dict[str, Any], datetime, dict[str, Any] | None]], newest: datetime | None
    ) -> PollReport:
        runtime, report = self.runtime, self.report
        items = [self._item(listed, stamp, full) for listed, stamp, full in changed]
        if items:
            fresh = runtime.queue.send([message_for(item, source="poll") for item in items])
            report.sent = sum(fresh)
            report.duplicates = len(fresh) - report.sent
        report.changed = [item.event.user_id for item in items]
        if newest is not None and (self.mark_at is None or newest >= self.mark_at):
            at_newest = [listed["id"] for listed, stamp, _ in changed if stamp == newest]
            ids = sorted({*at_newest, *(self.mark_ids if newest == self.mark_at else set())})
            if self.mark_at is None:
                ids = [self.first_id]
            value = json.dumps({"at": newest.isoformat(), "ids": ids})
            runtime.store.put_marker(MARKER, value)
            report.mark = value
        log.info(
            "delta poll: %d changed user(s), %d sent, %d request(s)%s",
            len(report.changed),
            report.sent,
            report.requests,
            f"; {report.note}" if report.note else "",
        )
        return report

    def _item(self, listed: dict[str, Any], stamp: datetime, full: dict[str, Any] | None) -> WorkItem:
        runtime = self.runtime
        user_id = int(listed["id"])
        person = runtime.store.get_person(user_id)
        kind: EventKind = "updated" if person is not None else "created"
        user = full if full is not None else listed
        user = normalise_user(user)
        # A partial list item stands for the user only when it carries every field the mapping reads; otherwise
        # the event is thin and the worker fetches the user (and applies the scope to it) when it runs.
        payload = user if is_complete(runtime.mapping, user) else None
        event = LifecycleEvent(
            kind=kind, user_id=user_id, occurred_at=stamp, source="poll", halo_event="delta poll", user=payload
        )
        status = person.status if person is not None else "unknown"
        return plan(
            event, runtime.mapping, work_id=poll_work_id(user_id, stamp), context=runtime.plan_context, status=status
        )
