"""Outage: the domain controller is stopped for 60 s in the middle of 300 events, then started again.

The local host (HTTP ingress and four worker threads) keeps accepting while the DC is down; the workers
meet a refused connection, back off without using up deliveries, and catch up when it returns. Nothing is
dead-lettered, nothing is lost, and every person converges on their newest event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from lifecycle.local.samba import SambaDC
from tests.integration.conftest import delivery, new_user
from tests.reliability.conftest import Harness, in_flight, queued_properties, record_figures, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PEOPLE = 200  # 200 joiners and 100 movers: 300 events
OUTAGE_SECONDS = 60.0


@pytest.mark.parametrize("backend", ["embedded", "servicebus", "functions"])
def test_a_dc_outage_of_a_minute_in_the_middle_of_300_events_loses_nothing(
    dc: SambaDC, harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture, backend: str
) -> None:
    service = harness(workers=4, guard_max_count=1000, retry_base_seconds=0.5, retry_cap_seconds=8.0, backend=backend)
    caplog.set_level(logging.WARNING, logger="lifecycle")
    # Names unique per backend: the DC is shared by the whole session, and three runs of 200 people with one
    # given name use up every naming candidate (outage.person12..outage.person199) by the third.
    people = [new_user(f"Outage{backend[0].upper()}", f"Person{i}", title="Analyst") for i in range(PEOPLE)]
    events: list[dict[str, Any]] = []
    for i, user in enumerate(people):
        events.append(delivery("created", user, at="2026-11-30T09:00:00"))
        if i % 2 == 0:
            events.append(delivery("updated", {**user, "title": f"Lead {i}"}, at="2026-11-30T10:00:00"))
    assert len(events) == 300
    half = len(events) // 2

    for body in events[:half]:
        assert service.post_http(body).status_code == 202
    # In the middle: some of the first half is done, some still queued.
    wait_until(lambda: len(service.runtime.store.audit(limit=100_000)) >= 100, seconds=120, what="work to start")

    dc.stop()
    stopped = time.monotonic()
    try:
        for body in events[half:]:  # Halo keeps sending; the ingress needs no DC
            assert service.post_http(body).status_code == 202
        wait_until(
            lambda: any("retry_attempt" in p for p in queued_properties(service.runtime)),
            seconds=OUTAGE_SECONDS,
            what="the workers to back off",
        )
        # The DC stays down for the whole minute; all the while nothing may be dead-lettered.
        while time.monotonic() - stopped < OUTAGE_SECONDS:
            assert service.runtime.queue.dead_letters() == []
            time.sleep(0.5)
        waiting_at_restart = in_flight(service.runtime)
    finally:
        dc.start()
    outage = time.monotonic() - stopped
    service.reconnect()
    wait_until(lambda: in_flight(service.runtime) == 0, seconds=600, what="the queue to drain after the outage")

    assert service.runtime.queue.dead_letters() == []
    accounts = service.accounts(u["id"] for u in people)
    assert set(accounts) == {u["id"] for u in people}
    for i, user in enumerate(people):
        assert accounts[user["id"]]["title"] == (f"Lead {i}" if i % 2 == 0 else "Analyst")
        # One account (``accounts`` checks the anchor is unique), created once: audited as a change, or, when
        # the DC went down between its write and the answer, by the retry that found the change standing.
        creates = [e for e in service.audit(user["id"]) if e.action == "create_user"]
        changed = [e for e in creates if e.outcome == "changed"]
        assert len(changed) == 1 or (not changed and any("earlier attempt" in e.message for e in creates)), creates
    standing = sum(
        1 for u in people for e in service.audit(u["id"]) if e.outcome == "unchanged" and "earlier attempt" in e.message
    )
    backoffs = [r for r in caplog.records if r.getMessage().startswith("transient failure, retrying")]
    assert backoffs, "the outage was never met: the test proved nothing"
    record_figures(
        "dc_outage" if backend == "embedded" else f"dc_outage_{backend}",
        events=len(events),
        events_sent_while_the_dc_was_down=len(events) - half,
        outage_seconds=round(outage, 1),
        work_items_waiting_when_the_dc_returned=waiting_at_restart,
        backoffs_during_the_outage=len(backoffs),
        steps_whose_write_landed_before_the_dc_died=standing,
        dead_lettered=0,
        **service.backend_figures(),
        accounts_in_the_end=len(accounts),
    )
