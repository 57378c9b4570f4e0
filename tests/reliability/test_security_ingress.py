"""Issue 14 at the ingress, as an attacker tries it over HTTP against the real DC: signed replays, future times.

Each test failed on the code before the fix: a captured signed "created" body posted again with ``?event=deleted``
was accepted as new work (disable, strip groups, delete in 30 days), and a timestamp hours ahead was accepted and
made the person's later events look stale.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from lifecycle.halo.auth import sign_body
from tests.integration.conftest import delivery, new_user
from tests.reliability.conftest import UF_ACCOUNTDISABLE, Harness, in_flight, record_figures, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
HMAC = "hmac-secret-value"
JSON = {"Content-Type": "application/json"}


def halo_time(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + delta).replace(tzinfo=None).isoformat(timespec="seconds")


def test_a_captured_signed_body_replayed_as_a_deletion_changes_nothing(harness: Callable[..., Harness]) -> None:
    service = harness(workers=1, webhook_basic_user="")
    user = new_user("Replay", "Target")
    body = json.dumps(delivery("created", user, at=halo_time())).encode()
    token = sign_body(HMAC, body)
    url = f"{service.url}/api/halo/events"
    assert httpx.post(url, content=body, headers={**JSON, "Token": token}, timeout=30).status_code == 202
    wait_until(lambda: service.account(user["id"]) is not None, seconds=60, what="the joiner")
    wait_until(lambda: in_flight(service.runtime) == 0, seconds=60, what="the joiner's work")

    # The attacker has the body and its Token (Halo's delivery log, a proxy log) but not the secret.
    signed = {**JSON, "Token": token}
    attempts = {
        "as a deletion": httpx.post(url, params={"event": "deleted"}, content=body, headers=signed, timeout=30),
        "as an update": httpx.post(url, params={"event": "updated"}, content=body, headers=signed, timeout=30),
    }
    for name, response in attempts.items():
        assert response.status_code == 403, (name, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    again = httpx.post(url, content=body, headers={**JSON, "Token": token}, timeout=30).json()
    assert again["accepted"] == [] and len(again["duplicates"]) == 1
    assert in_flight(service.runtime) == 0
    account = service.account(user["id"])
    assert account is not None and not int(account["userAccountControl"]) & UF_ACCOUNTDISABLE
    assert not [e for e in service.audit(user["id"]) if e.action in ("disable_user", "delete_user")]
    record_figures("security_signed_replay", refused=len(attempts), duplicates=1, disabled=0)


def test_a_future_timestamp_is_refused_and_the_leaver_after_it_applies(harness: Callable[..., Harness]) -> None:
    service = harness(workers=1)
    user = new_user("Future", "Stamp")
    assert service.post_http(delivery("created", user, at=halo_time(-timedelta(minutes=1)))).status_code == 202
    wait_until(lambda: service.account(user["id"]) is not None, seconds=60, what="the joiner")
    future = delivery("updated", {**user, "title": "From the future"}, at=halo_time(timedelta(hours=6)))
    ahead = service.post_http(future)
    answer = ahead.json()
    assert ahead.status_code == 202 and answer["accepted"] == []
    assert "ahead" in answer["rejected"][0]["problem"]
    leaver = service.post_http(delivery("updated", {**user, "inactive": True}, at=halo_time()))
    assert leaver.status_code == 202 and len(leaver.json()["accepted"]) == 1

    def disabled() -> bool:
        account = service.account(user["id"])
        return account is not None and bool(int(account["userAccountControl"]) & UF_ACCOUNTDISABLE)

    wait_until(disabled, seconds=60, what="the leaver to be applied, not skipped as stale")
    account = service.account(user["id"])
    assert account is not None and account.get("title") != "From the future"
    record_figures("security_future_timestamp", refused=1, leaver_applied=1)
