"""A Halo webhook becomes a correct, idempotent change in a real Active Directory (Samba AD DC)."""

from __future__ import annotations

from typing import Any

import ldap3  # type: ignore[import-untyped]
import pytest

from lifecycle.ingress import PROBLEM_JSON
from tests.conftest import load_event
from tests.integration.conftest import World, delivery, new_user

pytestmark = pytest.mark.integration
UF_ACCOUNTDISABLE = 2


def groups_of(account: dict[str, Any]) -> set[str]:
    return {str(g).split(",")[0].removeprefix("CN=") for g in account.get("memberOf", []) or []}


def ou_of(account: dict[str, Any]) -> str:
    return str(account["dn"]).split(",", 1)[1]


def test_a_created_user_appears_once_enabled_mapped_and_anchored(world: World) -> None:
    user = new_user("Baskar", "Balaji-Created", phonenumber="9092409380", initials="BB")
    body = delivery("created", user)
    world.accept(body)
    assert [r.outcome for r in world.drain()] == ["completed"]

    account = world.account(user["id"])
    assert account is not None
    assert account["sAMAccountName"] == "baskar.balaji-create"  # 20 characters at most
    assert account["userPrincipalName"] == "baskar.balaji-create@corp.example.test"
    assert account["givenName"] == "Baskar" and account["sn"] == "Balaji-Created"
    assert account["telephoneNumber"] == "9092409380" and account["company"] == "DemoDoftware"
    assert account["employeeID"] == f"halo:{user['id']}"  # the example mapping's namespaced anchor
    assert int(account["userAccountControl"]) & UF_ACCOUNTDISABLE == 0
    assert ou_of(account) == f"OU=Main,OU=Staff,OU=Halo,{world.info.base_dn}"
    assert groups_of(account) == {"All Staff", "Site Main"}
    # Must change the password at next logon.
    assert str(account["pwdLastSet"]) == "0"
    changes_after_first = len(world.changes(user["id"]))

    # The same delivery again: the queue drops it as a duplicate.
    assert world.accept(body)["duplicates"] and world.drain() == []
    # The same event in a different delivery: processed, and nothing changes in AD or the audit trail.
    world.accept(delivery("created", user))
    assert [r.outcome for r in world.drain()] == ["completed"]
    again = world.account(user["id"])
    assert again is not None
    assert again["whenChanged"] == account["whenChanged"] and again["uSNChanged"] == account["uSNChanged"]
    assert len(world.changes(user["id"])) == changes_after_first


def test_the_sample_runbook_body_creates_the_sample_user(world: World) -> None:
    body = load_event("runbook-created.json")
    user_id = body["user_id"] = body["user"]["id"] = 9_000_026
    body["user"]["surname"] = body["user"]["name"] = "Balaji-Runbook"
    world.accept(body)
    assert [r.outcome for r in world.drain()] == ["completed"]
    account = world.account(user_id)
    assert account is not None and account["sAMAccountName"] == "baskar.balaji-runboo"


def test_two_people_with_the_same_name_get_distinct_names(world: World) -> None:
    first, second = new_user("Jane", "Twin"), new_user("Jane", "Twin")
    third = new_user("Jane", "Twin")
    world.accept([delivery("created", first), delivery("created", second), delivery("created", third)])
    assert [r.outcome for r in world.drain()] == ["completed"] * 3
    accounts = [world.account(u["id"]) for u in (first, second, third)]
    assert all(a is not None for a in accounts)
    sams = [a["sAMAccountName"] for a in accounts if a]
    assert sams == ["jane.twin", "jtwin", "jane.twin2"]
    assert len({a["userPrincipalName"] for a in accounts if a}) == 3
    assert len({a["mail"] for a in accounts if a}) == 3
    # Same display name in the same OU: the CN falls back to a unique form.
    assert len({a["dn"] for a in accounts if a}) == 3


def test_diacritics_apostrophes_and_ldap_metacharacters_are_taken_literally(world: World) -> None:
    user = new_user("Zoë", "Ñúñez O'Brien*)(cn=*", title="Head of *)(|(objectClass=*) Ops")
    world.accept(delivery("created", user))
    assert [r.outcome for r in world.drain()] == ["completed"]
    account = world.account(user["id"])
    assert account is not None
    assert account["sAMAccountName"] == "zoe.nunezobriencn"
    assert account["sn"] == "Ñúñez O'Brien*)(cn=*"
    assert account["displayName"] == "Zoë Ñúñez O'Brien*)(cn=*"
    assert account["title"] == "Head of *)(|(objectClass=*) Ops"
    assert account["cn"] == "Zoë Ñúñez O'Brien*)(cn=*"
    # The metacharacters did not widen any search: exactly one account carries this anchor, and no
    # other account was touched by the run.
    assert {e.user_id for e in world.runtime.store.audit()} == {user["id"]}


def test_a_mover_changes_only_what_changed_and_moves_ou_and_groups(world: World) -> None:
    user = new_user("Max", "Mover", department="Engineering", title="Engineer")
    world.accept(delivery("created", user))
    world.drain()
    before = world.account(user["id"])
    assert before is not None and groups_of(before) == {"All Staff", "Site Main", "Engineering", "VPN Users"}
    # A group outside the mapping's rules is kept.
    other = f"CN=Unmanaged {user['id']},OU=Groups,OU=Halo,{world.info.base_dn}"
    world.ldap.add(other, ["top", "group"], {"sAMAccountName": f"unmanaged{user['id']}"})
    world.ldap.modify(other, {"member": [(ldap3.MODIFY_ADD, [before["dn"]])]})
    audit_before = len(world.audit(user["id"]))

    moved = {**user, "department": "Sales", "site_name": "London"}
    world.accept(delivery("updated", moved))
    assert [r.outcome for r in world.drain()] == ["completed"]
    after = world.account(user["id"])
    assert after is not None
    assert ou_of(after) == f"OU=London,OU=Staff,OU=Halo,{world.info.base_dn}"
    assert groups_of(after) == {"All Staff", "Site London", "Sales", f"Unmanaged {user['id']}"}
    assert after["department"] == "Sales" and after["title"] == "Engineer"
    changed = {
        c.attribute
        for e in world.audit(user["id"])[audit_before:]
        if e.action == "modify_properties"
        for c in e.changes
    }
    assert changed == {"department", "physicalDeliveryOfficeName"}


def test_a_field_missing_from_the_payload_never_clears_an_attribute(world: World) -> None:
    user = new_user("Tess", "Keeps", title="Analyst", mobilenumber="+44 7700 900123")
    world.accept(delivery("created", user))
    world.drain()
    partial = {"id": user["id"], "name": user["name"], "firstname": "Tess", "surname": "Keeps", "inactive": False}
    world.accept(delivery("updated", partial))
    world.accept(delivery("updated", {**partial, "title": ""}))
    world.drain()
    account = world.account(user["id"])
    assert account is not None
    assert account["title"] == "Analyst" and account["mobile"] == "+44 7700 900123"


def test_inactive_disables_a_rehire_re_enables_and_deleted_runs_the_leaver_steps(world: World) -> None:
    user = new_user("Lee", "Leaver", department="Sales")
    world.accept(delivery("created", user))
    world.drain()

    world.accept(delivery("updated", {**user, "inactive": True}))
    assert [r.outcome for r in world.drain()] == ["completed"]
    left = world.account(user["id"])
    assert left is not None
    assert int(left["userAccountControl"]) & UF_ACCOUNTDISABLE
    assert ou_of(left) == f"OU=Disabled,OU=Halo,{world.info.base_dn}"
    assert groups_of(left) == set()
    assert left["description"] == f"Left via Halo (user {user['id']})"

    world.accept(delivery("updated", {**user, "inactive": False}))
    assert [r.outcome for r in world.drain()] == ["completed"]
    back = world.account(user["id"])
    assert back is not None
    assert int(back["userAccountControl"]) & UF_ACCOUNTDISABLE == 0
    assert ou_of(back) == f"OU=Main,OU=Staff,OU=Halo,{world.info.base_dn}"
    assert groups_of(back) == {"All Staff", "Site Main", "Sales"}
    rehire_steps = [e.action for e in world.audit(user["id"]) if e.outcome == "changed"]
    assert "enable_user" in rehire_steps and "reset_password" in rehire_steps

    world.accept(delivery("deleted", user))
    assert [r.outcome for r in world.drain()] == ["completed"]
    gone = world.account(user["id"])
    assert gone is not None and int(gone["userAccountControl"]) & UF_ACCOUNTDISABLE
    assert ou_of(gone) == f"OU=Disabled,OU=Halo,{world.info.base_dn}"
    staged = world.runtime.store.pending(user_id=user["id"])
    assert [p.key for p in staged] == ["05-delete_user"]


def test_a_staged_deletion_runs_when_due_and_a_rehire_cancels_it(world: World) -> None:
    leaver, rehired = new_user("Del", "Staged"), new_user("Re", "Hired")
    for user in (leaver, rehired):
        world.accept(delivery("created", user))
        world.accept(delivery("deleted", user))
    world.drain()
    world.accept(delivery("updated", rehired))
    world.drain()
    assert world.runtime.store.pending(user_id=rehired["id"]) == []

    # Thirty days later (the worker's clock moves; nothing sleeps).
    world.worker._clock = lambda: 4_102_444_800.0  # 2100-01-01
    assert world.worker.release_due() >= 1
    world.drain()
    assert world.account(leaver["id"]) is None
    assert world.account(rehired["id"]) is not None


def test_events_delivered_out_of_order_converge_to_the_newest(world: World) -> None:
    user = new_user("Olive", "Order")
    world.accept(delivery("created", user, at="2026-11-30T09:00:00"))
    world.drain()
    newest = delivery("updated", {**user, "department": "Sales", "title": "Lead"}, at="2026-11-30T11:00:00")
    older = delivery("updated", {**user, "department": "Engineering", "title": "Intern"}, at="2026-11-30T10:00:00")
    world.accept(newest)
    world.accept(older)
    results = world.drain()
    assert [r.outcome for r in results] == ["completed", "skipped"]
    account = world.account(user["id"])
    assert account is not None and account["department"] == "Sales" and account["title"] == "Lead"
    assert "Engineering" not in groups_of(account)


def test_bad_input_is_refused_or_kept_and_never_half_applied(world: World) -> None:
    user = new_user("Bad", "Input")
    # Request-level problems and a bad runbook body: a problem answer, nothing queued.
    for raw in (b"{broken", b'{"event": "Ticket Logged", "user_id": 1}'):
        response = world.post(raw)
        assert response.status in (400, 422) and response.content_type == PROBLEM_JSON
    assert world.drain() == []
    # A webhook batch with one bad element: the good one is applied, the bad one kept as a dead letter.
    batch = [delivery("created", user), {**delivery("created", user), "object_id": None, "user": None}]
    answer = world.accept(batch)
    assert len(answer["accepted"]) == 1 and [r["index"] for r in answer["rejected"]] == [1]
    assert sorted(r.outcome for r in world.drain()) == ["completed", "dead_lettered"]
    assert world.account(user["id"]) is not None
    [dead] = world.runtime.queue.dead_letters()
    assert "user id is missing" in dead.description


def test_an_admin_outside_the_managed_containers_is_never_found_for_a_halo_id(world: World) -> None:
    user = new_user("Ad", "Ministrator")
    admin_dn = f"CN=Administrator,CN=Users,{world.info.base_dn}"
    world.ldap.modify(admin_dn, {"employeeID": [(ldap3.MODIFY_REPLACE, [f"halo:{user['id']}"])]})
    try:
        world.ldap.search(admin_dn, "(objectClass=*)", ldap3.BASE, attributes=["uSNChanged"])
        before = world.ldap.response[0]["attributes"]["uSNChanged"]
        world.accept(delivery("updated", {**user, "inactive": True}))
        [result] = world.drain()
        assert result.outcome == "dead_lettered" and "no account has employeeID" in result.reason
        world.ldap.search(admin_dn, "(objectClass=*)", ldap3.BASE, attributes=["uSNChanged"])
        assert world.ldap.response[0]["attributes"]["uSNChanged"] == before
        assert not [e for e in world.audit(user["id"]) if e.outcome == "changed"]
    finally:
        world.ldap.modify(admin_dn, {"employeeID": [(ldap3.MODIFY_DELETE, [])]})


def test_a_protected_account_is_never_touched_and_the_refusal_is_audited(world: World) -> None:
    user = new_user("Ad", "Min")
    admin_dn = f"CN=admin{user['id']},OU=Staff,OU=Halo,{world.info.base_dn}"
    world.ldap.add(
        admin_dn,
        ["top", "person", "organizationalPerson", "user"],
        {"sAMAccountName": f"admin{user['id']}", "employeeID": f"halo:{user['id']}", "adminCount": "1"},
    )
    try:
        before = world.account(user["id"])
        assert before is not None and str(before["adminCount"]) == "1"
        world.accept(delivery("updated", {**user, "inactive": True}))
        results = world.drain()
        assert [r.outcome for r in results] == ["refused"]
        after = world.account(user["id"])
        assert after is not None
        assert after["uSNChanged"] == before["uSNChanged"]  # nothing written at all
        refusals = [e for e in world.audit(user["id"]) if e.outcome == "refused"]
        assert len(refusals) == 1 and "adminCount=1" in refusals[0].message
    finally:
        world.ldap.delete(admin_dn)


def test_a_missing_ou_dead_letters_with_a_readable_reason_and_replay_completes_it(world: World) -> None:
    user = new_user("Ori", "Phan", site_name="Atlantis")
    text = world.runtime.mapping.model_copy(
        update={"ou": world.runtime.mapping.ou.model_copy(update={"default": "OU=Nowhere,OU=Halo,{base_dn}"})}
    )
    world.runtime.mapping = text  # type: ignore[misc]
    world.accept(delivery("created", user))
    assert [r.outcome for r in world.drain()] == ["dead_lettered"]
    dead = world.runtime.queue.dead_letters()
    assert len(dead) == 1 and "OU=Nowhere" in dead[0].description and "does not exist" in dead[0].description
    assert world.account(user["id"]) is None
    # The operator fixes the mapping and replays: the item runs under the fixed mapping, once.
    world.ldap.add(f"OU=Nowhere,OU=Halo,{world.info.base_dn}", ["top", "organizationalUnit"])
    new_id = world.runtime.queue.replay(dead[0].sequence_number)
    assert new_id != dead[0].message_id
    assert [r.outcome for r in world.drain()] == ["completed"]
    assert world.runtime.queue.dead_letters() == []
    account = world.account(user["id"])
    assert account is not None and ou_of(account) == f"OU=Nowhere,OU=Halo,{world.info.base_dn}"
