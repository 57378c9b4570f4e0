"""Safety rails against a real DC: protected accounts, no clearing on a missing field, dry-run everywhere,
staged deprovisioning, and an audit trail that says who asked and what changed (never a secret)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ldap3  # type: ignore[import-untyped]
import pytest

from tests.conftest import ROOT
from tests.integration.conftest import delivery, new_user
from tests.reliability.conftest import UF_ACCOUNTDISABLE, Harness, in_flight, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def cli(service: Harness, *argv: str) -> subprocess.CompletedProcess[str]:
    """The ``lifecycle`` command in another process, on the service's data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    env["LIFECYCLE_DATA_DIR"] = str(service.runtime.settings.data_dir)
    env["LIFECYCLE_MAPPING_FILE"] = str(ROOT / "mapping.example.toml")
    return subprocess.run(
        [sys.executable, "-m", "lifecycle", *argv], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def settle(service: Harness) -> None:
    wait_until(lambda: in_flight(service.runtime) == 0, seconds=120, what="the queue to drain")


# Protected accounts -----------------------------------------------------------------------------------------
@pytest.fixture
def protected(harness: Callable[..., Harness]) -> Iterator[tuple[Harness, dict[str, dict[str, Any]]]]:
    """Three accounts anchored to Halo users, each protected another way: adminCount=1, a protected group,
    a protected OU."""
    service = harness(workers=2)
    ldap, base = service.ldap, service.info.base_dn
    people = {kind: new_user("Pro", f"Tected{kind.title()}") for kind in ("admincount", "group", "ou")}
    # An adminCount=1 account inside the managed containers (one outside them is never even found).
    administrator = f"CN=admin{people['admincount']['id']},OU=Staff,OU=Halo,{base}"
    ldap.add(
        administrator,
        ["top", "person", "organizationalPerson", "user"],
        {
            "sAMAccountName": f"admin{people['admincount']['id']}",
            "employeeID": f"halo:{people['admincount']['id']}",
            "adminCount": "1",
        },
    )
    assert service.post_http(delivery("created", people["group"])).status_code == 202
    settle(service)
    member = service.account(people["group"]["id"])
    assert member is not None
    admins = f"CN=Domain Admins,CN=Users,{base}"
    ldap.modify(admins, {"member": [(ldap3.MODIFY_ADD, [member["dn"]])]})
    service_ou = f"OU=Service Accounts,OU=Halo,{base}"
    with contextlib.suppress(ldap3.core.exceptions.LDAPEntryAlreadyExistsResult):
        ldap.add(service_ou, ["top", "organizationalUnit"])
    account_dn = f"CN=svc-{people['ou']['id']},{service_ou}"
    ldap.add(
        account_dn,
        ["top", "person", "organizationalPerson", "user"],
        {"sAMAccountName": f"svc{people['ou']['id']}", "employeeID": str(people["ou"]["id"])},
    )
    yield service, people
    ldap.delete(administrator)
    ldap.modify(admins, {"member": [(ldap3.MODIFY_DELETE, [member["dn"]])]})
    ldap.delete(account_dn)


@pytest.mark.parametrize(
    "change",
    ["leaver", "deleted", "mover"],
)
def test_a_protected_account_is_never_touched_by_any_lifecycle_and_each_refusal_is_audited(
    protected: tuple[Harness, dict[str, dict[str, Any]]], change: str
) -> None:
    service, people = protected
    before = service.accounts(p["id"] for p in people.values())
    for person in people.values():
        if change == "leaver":
            body = delivery("updated", {**person, "inactive": True})
        elif change == "deleted":
            body = delivery("deleted", person)
        else:
            body = delivery("updated", {**person, "title": "Changed", "site_name": "London"})
        assert service.post_http(body).status_code == 202
    settle(service)
    after = service.accounts(p["id"] for p in people.values())
    for kind, person in people.items():
        assert after[person["id"]]["uSNChanged"] == before[person["id"]]["uSNChanged"], kind
        refusals = [e for e in service.audit(person["id"]) if e.outcome == "refused"]
        assert len(refusals) == 1 and "protected" in refusals[0].message, kind
        assert service.runtime.store.pending(user_id=person["id"]) == []  # no deletion staged either
    assert service.runtime.queue.dead_letters() == []


# A missing field never clears anything ----------------------------------------------------------------------
def test_a_payload_missing_every_optional_field_changes_nothing_and_an_empty_one_clears_nothing_unlisted(
    harness: Callable[..., Harness],
) -> None:
    service = harness(workers=2)
    full = new_user(
        "Fully",
        "Mapped",
        title="Analyst",
        department="Engineering",
        initials="FM",
        phonenumber="+44 20 7946 0000",
        mobilenumber="+44 7700 900000",
        site_name="London",
    )
    assert service.post_http(delivery("created", full, at="2026-11-30T09:00:00")).status_code == 202
    settle(service)
    before = service.account(full["id"])
    assert before is not None and before["title"] == "Analyst"
    bare = {"id": full["id"], "inactive": False}  # every other field absent
    names_only = {"id": full["id"], "firstname": "Fully", "surname": "Mapped", "name": full["name"]}
    emptied = {**full, "title": "", "mobilenumber": "", "initials": ""}  # none is in clear_when_empty
    for at, user in (("10", bare), ("11", names_only), ("12", emptied)):
        assert service.post_http(delivery("updated", user, at=f"2026-11-30T{at}:00:00")).status_code == 202
    settle(service)
    after = service.account(full["id"])
    assert after is not None
    for attribute in ("title", "department", "mobile", "telephoneNumber", "initials", "physicalDeliveryOfficeName"):
        assert after[attribute] == before[attribute], attribute
    assert after["dn"] == before["dn"]  # no move to a default OU for lack of a site
    assert set(after["memberOf"]) == set(before["memberOf"])  # and no group lost for lack of a department
    assert service.runtime.queue.dead_letters() == []


# Dry run everywhere -----------------------------------------------------------------------------------------
def test_dry_run_over_http_answers_the_plan_and_queues_nothing(harness: Callable[..., Harness]) -> None:
    import httpx

    from tests.integration.conftest import AUTH

    service = harness(workers=1)
    user = new_user("Dry", "Request")
    answer = httpx.post(
        f"{service.url}/api/halo/events?dry_run=true", json=delivery("created", user), headers=AUTH, timeout=30
    )
    assert answer.status_code == 200
    (plan,) = answer.json()["plans"]
    assert [s["action"] for s in plan["steps"]] == ["create_user", "modify_properties", "move_ou", "sync_groups"]
    assert in_flight(service.runtime) == 0 and service.account(user["id"]) is None


def test_the_global_dry_run_plans_and_audits_but_writes_nothing_and_holds_nothing(
    harness: Callable[..., Harness],
) -> None:
    live = harness(workers=2)
    existing = [new_user("Dry", f"Existing{i}") for i in range(3)]
    assert live.post_http([delivery("created", u) for u in existing]).status_code == 202
    settle(live)
    live.stop_host()
    before = live.accounts(u["id"] for u in existing)

    dry = harness(workers=2, dry_run=True, guard_max_count=1)
    newcomer = new_user("Dry", "Newcomer")
    assert dry.post_http(delivery("created", newcomer)).status_code == 202
    for user in existing:
        assert dry.post_http(delivery("updated", {**user, "inactive": True})).status_code == 202
    settle(dry)

    assert dry.account(newcomer["id"]) is None
    after = dry.accounts(u["id"] for u in existing)
    assert all(after[u["id"]]["uSNChanged"] == before[u["id"]]["uSNChanged"] for u in existing)
    assert dry.runtime.store.held() == []
    entries = dry.audit()
    assert {e.outcome for e in entries if e.action != "mass_change_guard"} == {"dry_run"}
    create = next(e for e in entries if e.user_id == newcomer["id"] and e.action == "create_user")
    assert any(c.attribute == "sAMAccountName" for c in create.changes)
    disables = [e for e in entries if e.action == "disable_user"]
    assert len(disables) == 3 and all(e.outcome == "dry_run" and e.changes for e in disables)
    would_hold = [e for e in entries if e.action == "mass_change_guard"]
    assert len(would_hold) == 2 and all(e.message.startswith("would be held") for e in would_hold)


# Staged deprovisioning --------------------------------------------------------------------------------------
def test_a_deleted_user_is_disabled_now_its_deletion_is_listed_as_pending_and_a_rehire_cancels_it(
    harness: Callable[..., Harness],
) -> None:
    service = harness(workers=2)
    user = new_user("Stage", "Deleted")
    assert service.post_http(delivery("created", user, at="2026-11-30T09:00:00")).status_code == 202
    assert service.post_http(delivery("deleted", user, at="2026-11-30T10:00:00")).status_code == 202
    settle(service)
    account = service.account(user["id"])
    assert account is not None and int(account["userAccountControl"]) & UF_ACCOUNTDISABLE
    listed = cli(service, "pending", "--json")
    assert listed.returncode == 0, listed.stderr
    (pending,) = [p for p in json.loads(listed.stdout) if p["user_id"] == user["id"]]
    assert pending["key"] == "05-delete_user" and "30 days" in pending["description"]

    assert service.post_http(delivery("updated", user, at="2026-11-30T11:00:00")).status_code == 202
    settle(service)
    assert service.runtime.store.pending(user_id=user["id"]) == []
    back = service.account(user["id"])
    assert back is not None and not int(back["userAccountControl"]) & UF_ACCOUNTDISABLE
    cancelled = [e for e in service.audit(user["id"]) if e.action == "cancel_pending"]
    assert len(cancelled) == 1 and "cancelled staged work" in cancelled[0].message


# The audit trail --------------------------------------------------------------------------------------------
def test_the_audit_says_who_asked_what_changed_before_and_after_and_never_a_password(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    service = harness(workers=2)
    user = new_user("Audit", "Trail", title="Analyst")
    assert service.post_http(delivery("created", user, at="2026-11-30T09:00:00")).status_code == 202
    runbook = {"event": "updated", "user_id": user["id"], "user": {**user, "title": "Lead"}, "agent_id": 7}
    runbook["timestamp"] = "2026-11-30T10:00:00"
    assert service.post_http(runbook).status_code == 202
    left = delivery("updated", {**user, "title": "Lead", "inactive": True}, at="2026-11-30T11:00:00")
    assert service.post_http(left).status_code == 202
    back = delivery("updated", {**user, "title": "Lead"}, at="2026-11-30T12:00:00")
    assert service.post_http(back).status_code == 202  # a rehire: its steps reset the password
    settle(service)

    shown = cli(service, "audit", "--user", str(user["id"]), "--json")
    assert shown.returncode == 0, shown.stderr
    entries = json.loads(shown.stdout)
    sources = [e["requested_by"]["source"] for e in entries]
    assert set(sources) == {"webhook", "runbook"}
    webhook = next(e for e in entries if e["requested_by"]["source"] == "webhook")
    assert webhook["requested_by"]["delivery_id"] and webhook["requested_by"]["agent_id"] == 3
    title = [
        c for e in entries if e["action"] == "modify_properties" for c in e["changes"] if c["attribute"] == "title"
    ]
    assert title == [{"attribute": "title", "before": "Analyst", "after": "Lead"}]
    assert any(e["action"] == "disable_user" and e["outcome"] == "changed" for e in entries)
    reset = [e for e in entries if e["action"] == "reset_password"]
    assert len(reset) == 1 and reset[0]["changes"][0]["after"] == "(reset)"
    text = cli(service, "audit", "--user", str(user["id"]), "--since", "1h")
    assert text.returncode == 0 and "runbook" in text.stdout and "Analyst" in text.stdout
