"""Duplicates: 200 events, each delivered three times in shuffled order, singly and in batches, over HTTP.

Two copies of each event are the same delivery (Halo re-sending it: the queue's duplicate detection drops
one); the third is the same event re-sent under a new delivery id, which the queue cannot recognise, so
the worker's ensure-steps, journal and stale-event check must make it change nothing. Four worker threads
run while the deliveries arrive. Every person must end in the state of their newest event, with each
change in the audit trail exactly once.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import delivery, new_user
from tests.reliability.conftest import (
    UF_ACCOUNTDISABLE,
    Harness,
    in_flight,
    record_figures,
    seed,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NEW_PEOPLE = 60  # created + updated: 120 events
LEAVERS = 40  # existing people: updated (mover) + made inactive: 80 events
GROUP_BASE = "OU=Groups,OU=Halo,"


def groups_of(account: dict[str, Any]) -> set[str]:
    return {str(g).split(",")[0].removeprefix("CN=") for g in account.get("memberOf", []) or []}


def ou_of(account: dict[str, Any]) -> str:
    return str(account["dn"]).split(",", 1)[1]


@pytest.mark.parametrize("backend", ["embedded", "servicebus", "functions"])
def test_every_event_delivered_three_times_in_shuffled_order_is_applied_once(
    harness: Callable[..., Harness], backend: str
) -> None:
    rng = random.Random(seed())
    service = harness(workers=4, guard_max_count=1000, backend=backend)
    base_dn = service.info.base_dn

    # Before: the people who will leave already have accounts (a leaver is for someone who joined).
    tag = backend[0].upper()  # names unique per backend: the DC is shared by the whole session
    existing = [new_user(f"Stay{tag}", f"Leaver{i}", department="Sales", title="Rep") for i in range(LEAVERS)]
    for start in range(0, LEAVERS, 20):
        batch = [delivery("created", u, at="2026-11-01T08:00:00") for u in existing[start : start + 20]]
        assert service.post_http(batch).status_code == 202
    wait_until(lambda: in_flight(service.runtime) == 0, seconds=300, what="the existing people to be created")
    assert len(service.accounts(u["id"] for u in existing)) == LEAVERS

    # The 200 events, each with its own time, so a late copy of an older one is recognised as stale.
    events: list[dict[str, Any]] = []
    newest: dict[int, dict[str, Any]] = {}
    for i in range(NEW_PEOPLE):
        user = new_user(f"Dupe{tag}", f"Joiner{i}", department="Engineering", title="Engineer")
        moved = {**user, "department": "Sales" if i % 2 else "Engineering", "title": f"Senior {i}"}
        events.append(delivery("created", user, at="2026-11-30T09:00:00"))
        events.append(delivery("updated", moved, at="2026-11-30T10:00:00"))
        newest[user["id"]] = moved
    for user in existing:
        moved = {**user, "title": "Account Manager"}
        events.append(delivery("updated", moved, at="2026-11-30T10:00:00"))
        events.append(delivery("updated", {**moved, "inactive": True}, at="2026-11-30T11:00:00"))
        newest[user["id"]] = {**moved, "inactive": True}
    assert len(events) == 200

    copies: list[dict[str, Any]] = []
    for body in events:
        copies += [body, dict(body), {**body, "id": f"{body['id']}-resent"}]
    rng.shuffle(copies)
    requests: list[Any] = []
    while copies:
        size = 1 if rng.random() < 0.5 else rng.randint(2, 20)
        chunk, copies = copies[:size], copies[size:]
        requests.append(chunk[0] if size == 1 else chunk)

    accepted = duplicates = 0
    for body in requests:
        response = service.post_http(body)
        assert response.status_code == 202, response.text
        accepted += len(response.json()["accepted"])
        duplicates += len(response.json()["duplicates"])
    if backend == "embedded":
        assert (accepted, duplicates) == (400, 200)  # two distinct deliveries per event; the re-sent copy dropped
    else:
        # Service Bus drops the re-sent copy without telling the sender (the broker does the same).
        assert accepted + duplicates == 600
    wait_until(lambda: in_flight(service.runtime) == 0, seconds=600, what="every delivery to be processed")

    runtime = service.runtime
    assert runtime.queue.dead_letters() == []
    assert runtime.store.held() == []
    accounts = service.accounts(newest)
    assert set(accounts) == set(newest)
    for user_id, user in newest.items():
        account = accounts[user_id]
        disabled = bool(int(account["userAccountControl"]) & UF_ACCOUNTDISABLE)
        if user.get("inactive"):
            assert disabled and ou_of(account) == f"OU=Disabled,OU=Halo,{base_dn}", account["dn"]
            assert groups_of(account) == set()
            assert account["description"] == f"Left via Halo (user {user_id})"
        else:
            wanted = {"All Staff", "Site Main"} | (
                {"Sales"} if user["department"] == "Sales" else {"Engineering", "VPN Users"}
            )
            assert not disabled
            assert (account["title"], account["department"]) == (user["title"], user["department"])
            assert groups_of(account) == wanted
            assert ou_of(account) == f"OU=Main,OU=Staff,OU=Halo,{base_dn}"

    changes = 0
    stale = 0
    for user_id in newest:
        entries = service.audit(user_id)
        changed = [e for e in entries if e.outcome == "changed"]
        changes += len(changed)
        stale += sum(1 for e in entries if e.outcome == "skipped" and e.message.startswith("stale"))
        # Each change once: no step of a work item changed twice, and no identical change was made twice.
        assert not [k for k, n in Counter((e.work_id, e.step) for e in changed).items() if n > 1]
        made = Counter((e.action, tuple((c.attribute, str(c.after)) for c in e.changes)) for e in changed)
        assert not [k for k, n in made.items() if n > 1], (user_id, made)
        assert sum(1 for e in changed if e.action == "create_user") == 1  # (the leavers' in the setup)
    record_figures(
        "duplicates" if backend == "embedded" else f"duplicates_{backend}",
        seed=seed(),
        events=len(events),
        deliveries=3 * len(events),
        http_requests=len(requests),
        batched_requests=sum(1 for r in requests if isinstance(r, list)),
        accepted=accepted,
        dropped_by_queue_duplicate_detection=duplicates,
        stale_events_skipped=stale,
        changes_audited=changes,
        dead_lettered=0,
        **service.backend_figures(),
        people=len(newest),
    )
