"""The reconcile's page cursor against the Halo stand-in and the real DC: a reconcile cut at the invocation's
deadline resumes at the next page on the next timer run, sends nothing twice, and clears its cursor."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import pytest

from lifecycle import deadline, reconcile_cursor
from lifecycle.halo.client import UserListing
from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import Mapping
from lifecycle.reconcile import run_reconcile
from tests.integration.conftest import delivery
from tests.integration.test_halo_api_with_ad import make_world, queued
from tests.standins.halo import HaloStandIn, UserSet

_blocks = itertools.count(9_600_000, 10_000)
USERS, PAGE = 120, 40


def test_a_reconcile_cut_at_the_deadline_resumes_at_the_next_page_and_completes(
    directory: DCInfo, example_mapping: Mapping, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = next(_blocks)
    standin = HaloStandIn(UserSet(USERS, first_id=first), rate_limit=100_000, rate_window=1.0).start()
    world = make_world(directory, tmp_path, example_mapping, standin, halo_page_size=PAGE)
    pages_read: list[int] = []

    def progress(listing: UserListing) -> None:
        pages_read.append(listing.received)

    # The invocation's deadline is spent once the first page has been read (no clock involved): the run must
    # stop before asking for page 2, not run on past the host's functionTimeout.
    monkeypatch.setattr(deadline, "remaining", lambda: 0.0 if pages_read else math.inf)
    try:
        cut = run_reconcile(world.runtime, on_progress=progress)
        assert not cut.complete and cut.next_page == 2 and cut.listed == PAGE
        assert cut.joiners == PAGE and cut.enqueued == PAGE and cut.duplicates == 0
        assert pages_read == [PAGE]
        assert "stopped before page 2" in cut.summary()
        assert reconcile_cursor.load(world.runtime.store, _keyed(world.runtime)) is not None

        # The next timer run, with a whole invocation ahead of it: resumes at page 2, not page 1.
        monkeypatch.setattr(deadline, "remaining", lambda: math.inf)
        pages_read.clear()
        resumed = run_reconcile(world.runtime, on_progress=progress)
        assert pages_read == [2 * PAGE, 3 * PAGE]  # pages 2 and 3 only: page 1 is not read again
        assert resumed.resumed_at == 2 and resumed.next_page is None
        assert resumed.complete and resumed.listed == USERS and resumed.record_count == USERS
        # The counts are the whole reconcile's (both runs); nothing was sent twice.
        assert resumed.joiners == USERS and resumed.enqueued == USERS and resumed.duplicates == 0
        assert world.runtime.store.get_marker(reconcile_cursor.MARKER) == ""

        work = queued(world.runtime)
        assert len(work) == USERS
        assert Counter(item.event.user_id for _, item in work) == Counter(range(first, first + USERS))

        # The cursor is gone: a third run starts from page 1, and the queue drops the work it finds again.
        again = run_reconcile(world.runtime)
        assert again.resumed_at is None and again.complete
        assert again.enqueued == 0 and again.duplicates == USERS
    finally:
        world.worker.close()
        world.ldap.unbind()
        world.runtime.close()
        standin.stop()


def test_a_resumed_reconcile_finds_a_managed_person_halo_no_longer_lists(
    directory: DCInfo, example_mapping: Mapping, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = next(_blocks)
    standin = HaloStandIn(UserSet(30, first_id=first), rate_limit=100_000, rate_window=1.0).start()
    world = make_world(directory, tmp_path, example_mapping, standin, halo_page_size=10, halo_missing_users="leaver")
    stays, goes = standin.users.get(first), standin.users.get(first + 25)  # on page 1 and page 3
    assert stays is not None and goes is not None
    pages_read: list[int] = []
    try:
        for user in (stays, goes):
            world.accept(delivery("created", user))
        assert [r.outcome for r in world.drain()] == ["completed", "completed"]
        standin.users.delete(goes["id"])

        # The first timer run lists page 1 only (its invocation's time is up), the next one pages 2 and 3.
        monkeypatch.setattr(deadline, "remaining", lambda: 0.0 if pages_read else math.inf)
        cut = run_reconcile(world.runtime, on_progress=lambda listing: pages_read.append(listing.received))
        assert cut.next_page == 2 and cut.count("leaver") == 0
        monkeypatch.setattr(deadline, "remaining", lambda: math.inf)
        resumed = run_reconcile(world.runtime)

        assert resumed.resumed_at == 2 and resumed.complete
        # Only the person missing from every page of the pass is checked: the one listed on page 1 by the
        # earlier run, is not (the ids the earlier run saw were kept in the store).
        assert resumed.missing_checked == 1 and resumed.count("leaver") == 1
        leavers = [item for _, item in queued(world.runtime) if item.lifecycle == "leaver"]
        assert [item.event.user_id for item in leavers] == [goes["id"]]
    finally:
        world.worker.close()
        world.ldap.unbind()
        world.runtime.close()
        standin.stop()


def _keyed(runtime: object) -> dict[str, object]:
    from lifecycle.mapping.planner import scope_list_params

    settings = runtime.settings  # type: ignore[attr-defined]
    params = scope_list_params(runtime.mapping.scope)  # type: ignore[attr-defined]
    return {"page_size": settings.halo_page_size, "params": dict(params), "mode": "apply"}
