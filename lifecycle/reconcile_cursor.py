"""The reconcile's page cursor: a reconcile of any size resumes across timer runs.

A timer invocation must end well inside ``functionTimeout`` (lifecycle.deadline), and a large Halo tenant takes
longer than that to list. So a run stops before a page it may not finish in time and keeps its progress in the
store (a marker, as the delta poll's mark): the next page to read, the run id, Halo's ``record_count`` and the
counts so far. The next run resumes there with the same run id, adds to those counts, and clears the cursor
when it completes. The cursor is written after every finished page (after that page's work was sent), so a run
ended by an error resumes too: at most the page it was on is read again, and its work ids are deterministic,
so the queue drops what was already sent (the report counts those as ``duplicates``).

A cursor is kept only for the same listing (page size, scope's list parameters, mode); otherwise the run starts
from page 1. Dry runs neither read nor write it.

The missing-users check (managed people Halo no longer lists) needs every id the whole pass listed, not only
those of the run that completes it. So each page's ids are kept too, one marker per page number
(``reconcile-seen-<page>``, tagged with the run id; a page of at most 1,000 ids fits a Table property), written
before the cursor moves past the page. The run that completes a resumed pass unites the earlier pages' ids with
its own and runs the check; when an earlier page's ids are not found (written by another run), it does not.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lifecycle import deadline as invocation_deadline

if TYPE_CHECKING:
    from lifecycle.state import StateStore as Store

MARKER = "reconcile-cursor"
SEEN_MARKER = "reconcile-seen-{page}"
# Stop before a page when less than this many times the slowest page so far is left of the invocation.
PAGE_MARGIN = 2.0


@dataclass
class Cursor:
    """Where a cut reconcile resumes, and what it had counted."""

    run_id: str
    next_page: int
    listing: dict[str, Any]
    record_count: int | None = None
    listed: int = 0
    invalid: int = 0
    enqueued: int = 0
    duplicates: int = 0
    fetched: int = 0
    runs: int = 1
    decisions: Counter[str] | None = None

    def to_json(self) -> str:
        value = {**self.__dict__, "decisions": dict(self.decisions or {})}
        return json.dumps(value, sort_keys=True)


def load(store: Store, listing: dict[str, Any]) -> Cursor | None:
    """The cursor left by a cut run of the same ``listing``, or None (start from page 1)."""
    raw = store.get_marker(MARKER)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        cursor = Cursor(**{**data, "decisions": Counter(data.get("decisions") or {})})
    except (ValueError, TypeError):
        return None  # unreadable: a full run is always correct, only slower
    if cursor.listing != listing or cursor.next_page < 2:
        return None
    return cursor


def save(store: Store, cursor: Cursor) -> None:
    store.put_marker(MARKER, cursor.to_json())


def clear(store: Store) -> None:
    """A completed run leaves no cursor (an empty marker: the store has no delete for markers)."""
    store.put_marker(MARKER, "")


def save_seen(store: Store, run_id: str, page: int, ids: set[int]) -> None:
    """Keep the ids page ``page`` of run ``run_id`` listed (replaces what an earlier pass kept for that page)."""
    store.put_marker(SEEN_MARKER.format(page=page), json.dumps({"run_id": run_id, "ids": sorted(ids)}))


def load_seen(store: Store, run_id: str, pages: range) -> set[int] | None:
    """Every id run ``run_id`` listed on ``pages``, or None when a page's ids were not kept by that run."""
    seen: set[int] = set()
    for page in pages:
        raw = store.get_marker(SEEN_MARKER.format(page=page))
        try:
            data = json.loads(raw or "null")
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("run_id") != run_id or not isinstance(data.get("ids"), list):
            return None
        seen.update(int(i) for i in data["ids"])
    return seen


class PageClock:
    """Whether the invocation has time for one more page, judged by the slowest page so far."""

    def __init__(self, clock: Any = None) -> None:
        import time

        self._clock = clock or time.monotonic
        self._started = self._clock()
        self.slowest = 0.0

    def page_done(self) -> None:
        now = self._clock()
        self.slowest = max(self.slowest, now - self._started)
        self._started = now

    def out_of_time(self) -> bool:
        return invocation_deadline.remaining() <= PAGE_MARGIN * self.slowest
