"""The mass-change guard under a burst: 50 leavers against a limit of 10 run 10 and hold 40, untouched.

The held items are then released through both operator paths: the HTTP routes (one approved, one
rejected) and the command line in another process (the rest). Approved items run; the rejected one never
does; every decision is in the audit trail.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ROOT
from tests.integration.conftest import delivery, new_user
from tests.reliability.conftest import UF_ACCOUNTDISABLE, Harness, in_flight, record_figures, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ADMIN = "reliability-operator-token-5f1c9a7e"
BURST = 50
LIMIT = 10


def test_a_burst_of_fifty_leavers_with_a_limit_of_ten_holds_forty_until_approved(
    harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    service = harness(workers=4, guard_max_count=LIMIT, guard_window_seconds=3600, admin_token=ADMIN)
    people = [new_user("Burst", f"Leaver{i}", department="Sales") for i in range(BURST)]
    for start in range(0, BURST, 25):
        assert service.post_http([delivery("created", u) for u in people[start : start + 25]]).status_code == 202
    wait_until(lambda: in_flight(service.runtime) == 0, seconds=300, what="the joiners")
    before = service.accounts(u["id"] for u in people)
    assert len(before) == BURST

    caplog.set_level(logging.ERROR, logger="lifecycle")
    for user in people:  # a bad import in Halo: everyone made inactive within seconds
        assert service.post_http(delivery("updated", {**user, "inactive": True})).status_code == 202
    wait_until(lambda: in_flight(service.runtime) == 0, seconds=300, what="the leavers to run or be held")

    store = service.runtime.store
    held = store.held()
    assert len(held) == BURST - LIMIT
    after = service.accounts(u["id"] for u in people)
    disabled = {uid for uid, a in after.items() if int(a["userAccountControl"]) & UF_ACCOUNTDISABLE}
    assert len(disabled) == LIMIT
    held_users = {h.user_id for h in held}
    assert held_users.isdisjoint(disabled)
    for user_id in held_users:  # a held item changed nothing at all
        assert after[user_id]["uSNChanged"] == before[user_id]["uSNChanged"]
        assert [e.outcome for e in service.audit(user_id) if e.action == "mass_change_guard"] == ["held"]
    alerts = [r for r in caplog.records if getattr(r, "event", None) == "lifecycle.guard.held"]
    assert len(alerts) == BURST - LIMIT and all(r.levelno == logging.ERROR for r in alerts)

    # The operator routes: one approved, one rejected.
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    listing = httpx.get(f"{service.url}/api/manage/held", headers=bearer, timeout=30)
    assert listing.status_code == 200 and len(listing.json()["held"]) == BURST - LIMIT
    assert listing.json()["guard"] == {
        "enabled": True,
        "window_seconds": 3600.0,
        "count": LIMIT,
        "limit": LIMIT,
        "limit_from": f"{LIMIT} items",
        "held": BURST - LIMIT,
    }
    first, second = held[0], held[1]
    url = f"{service.url}/api/manage/held"
    assert httpx.post(f"{url}/{first.held_id}/approve", headers=bearer, json={"by": "ops-lead"}, timeout=30).is_success
    rejected = httpx.post(f"{url}/{second.held_id}/reject", headers=bearer, json={"note": "on leave"}, timeout=30)
    assert rejected.status_code == 200
    assert httpx.post(f"{url}/{second.held_id}/approve", headers={}, timeout=30).status_code == 401

    # The rest from the command line, in another process, on the same store and queue.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")},
        "LIFECYCLE_DATA_DIR": str(service.runtime.settings.data_dir),
        "LIFECYCLE_MAPPING_FILE": str(ROOT / "mapping.example.toml"),
        "LIFECYCLE_GUARD_MAX_COUNT": str(LIMIT),
    }
    cli = subprocess.run(
        [sys.executable, "-m", "lifecycle", "held", "approve", "--all", "--by", "ops-bulk"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert f"approved and released {BURST - LIMIT - 2} held work item(s)" in cli.stdout
    wait_until(lambda: in_flight(service.runtime) == 0, seconds=300, what="the approved leavers")

    final = service.accounts(u["id"] for u in people)
    still_enabled = {uid for uid, a in final.items() if not int(a["userAccountControl"]) & UF_ACCOUNTDISABLE}
    assert still_enabled == {second.user_id}
    assert final[second.user_id]["uSNChanged"] == before[second.user_id]["uSNChanged"]
    assert store.held() == []
    assert len(store.held(status="approved")) == BURST - LIMIT - 1
    decisions = [
        (e.outcome, e.requested_by.get("source"), e.requested_by.get("by"))
        for e in service.audit(first.user_id)
        if e.action == "mass_change_guard"
    ]
    assert decisions == [("held", "webhook", None), ("approved", "manage-api", "ops-lead")]
    disable = [e for e in service.audit(first.user_id) if e.action == "disable_user" and e.outcome == "changed"]
    assert len(disable) == 1 and disable[0].requested_by["approved_by"] == "ops-lead"
    assert disable[0].requested_by["source"] == "webhook" and disable[0].requested_by["delivery_id"]
    assert [e.outcome for e in service.audit(second.user_id) if e.action == "mass_change_guard"] == [
        "held",
        "rejected",
    ]
    assert service.runtime.queue.dead_letters() == []
    record_figures(
        "mass_change_guard",
        leavers=BURST,
        limit=LIMIT,
        ran_at_once=LIMIT,
        held=BURST - LIMIT,
        alerts=len(alerts),
        approved_over_http=1,
        rejected_over_http=1,
        approved_on_command_line=BURST - LIMIT - 2,
        disabled_in_the_end=BURST - 1,
    )
