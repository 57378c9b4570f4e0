"""Scope, guarded joiners and existing directories, through the ingress and the worker against the real DC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import Mapping, Scope
from lifecycle.runtime import Runtime
from lifecycle.worker import Worker
from tests.integration.conftest import World, admin_connection, dc_settings, delivery, new_user


def _world(info: DCInfo, mapping: Mapping, tmp_path: Path, **settings: Any) -> Iterator[World]:
    runtime = Runtime(
        dc_settings(info, tmp_path, retry_base_seconds=0.05, retry_cap_seconds=0.2, **settings), mapping=mapping
    )
    worker = Worker(runtime)
    conn = admin_connection(info)
    yield World(info, runtime, worker, conn)
    worker.close()
    conn.unbind()
    runtime.close()


@pytest.fixture
def client_world(directory: DCInfo, example_mapping: Mapping, tmp_path: Path) -> Iterator[World]:
    """The example mapping limited to Halo client 12."""
    scope = Scope.model_validate({**example_mapping.scope.model_dump(), "when": {"client_id": "12"}})
    yield from _world(directory, example_mapping.model_copy(update={"scope": scope}), tmp_path)


def test_an_agent_a_service_account_and_another_clients_user_get_no_account(client_world: World) -> None:
    agent = new_user("Agnes", "Agent", client_id=12, linked_agent_id=7)
    service = new_user("Svc", "Backup", client_id=12, isserviceaccount=True)
    stranger = new_user("Olga", "Other", client_id=13)
    member = new_user("Mia", "Member", client_id=12, linked_agent_id=0, isserviceaccount=False)
    answer = client_world.accept([delivery("created", u) for u in (agent, service, stranger, member)])
    assert len(answer["accepted"]) == 4  # accepted, planned to nothing, audited
    client_world.drain()
    reasons = {"linked to agent 7": agent, "isserviceaccount": service, "client_id = '13'": stranger}
    for reason, user in reasons.items():
        assert client_world.account(user["id"]) is None
        audit = client_world.audit(user["id"])
        assert [(e.action, e.outcome) for e in audit] == [("scope", "out_of_scope")]
        assert reason in audit[0].message
    assert client_world.account(member["id"]) is not None


@pytest.fixture
def guarded_world(directory: DCInfo, example_mapping: Mapping, tmp_path: Path) -> Iterator[World]:
    yield from _world(directory, example_mapping, tmp_path, guard_max_joiners=2, guard_window_seconds=3600)


def test_a_burst_of_joiners_past_the_limit_is_held_and_none_of_the_rest_created_until_approved(
    guarded_world: World,
) -> None:
    from lifecycle.guard import MassChangeGuard

    world = guarded_world
    users = [new_user("Burst", f"Joiner{i}") for i in range(5)]
    world.accept([delivery("created", u) for u in users])
    world.drain()
    created = [u for u in users if world.account(u["id"]) is not None]
    assert len(created) == 2
    held = world.runtime.store.held()
    assert sorted(h.user_id for h in held) == sorted(u["id"] for u in users if u not in created)
    assert {h.lifecycle for h in held} == {"joiner"}
    for user in users:
        if user not in created:
            assert [e.outcome for e in world.audit(user["id"])] == ["held"]
    # Approving one releases exactly that one; rejecting another drops it for good.
    guard = MassChangeGuard(world.runtime.settings, world.runtime.store)
    guard.approve(held[0].held_id, world.runtime.queue, by="alice", source="test")
    guard.reject(held[1].held_id, by="bob", source="test")
    world.drain()
    assert world.account(held[0].user_id) is not None
    assert world.account(held[1].user_id) is None
    assert world.account(held[2].user_id) is None


# Existing directories ----------------------------------------------------------------------------------------
def _existing_account(world: World, container: str, sam: str, **attributes: str) -> str:
    dn = f"CN={sam},{container},{world.info.base_dn}"
    world.ldap.add(dn, ["top", "person", "organizationalPerson", "user"], {"sAMAccountName": sam, **attributes})
    return dn


def _accounts_named(world: World, attribute: str, value: str) -> list[str]:
    world.ldap.search(world.info.base_dn, f"({attribute}={value})", attributes=["employeeID"])
    return [e["dn"] for e in world.ldap.response if e.get("type") == "searchResEntry"]


@pytest.mark.parametrize("attribute", ["mail", "userPrincipalName"])
def test_a_joiner_whose_account_exists_without_the_anchor_gets_no_second_account(world: World, attribute: str) -> None:
    from lifecycle.adoption import approve_link, link_details, links

    user = new_user("Ella", f"Existing{attribute}")
    address = f"ella.{user['id']}@corp.example.test"
    user["emailaddress"] = address
    dn = _existing_account(world, "OU=Staff,OU=Halo", f"ella{user['id']}", **{attribute: address})
    world.accept(delivery("created", user))
    world.drain()
    # Nothing created, nothing stamped: the match waits for an operator.
    assert world.account(user["id"]) is None
    assert _accounts_named(world, "sn", user["surname"]) == []  # no second account with the Halo names
    assert [e.outcome for e in world.audit(user["id"]) if e.action == "create_user"] == ["refused"]
    [proposal] = links(world.runtime.store)
    assert link_details(proposal) == {"connection": "default", "dn": dn, "attribute": attribute, "value": address}
    approve_link(world.runtime, proposal.held_id, by="alice", source="test")
    world.drain()
    account = world.account(user["id"])
    assert account is not None and account["cn"] == f"ella{user['id']}"  # the existing one (moved by the joiner)
    assert account["employeeID"] == f"halo:{user['id']}"  # the namespaced anchor
    assert account["sn"] == user["surname"]  # the joiner's remaining steps ran on the adopted account
    assert len(_accounts_named(world, "sn", user["surname"])) == 1


def test_adoption_by_mail_outside_the_managed_containers_is_refused(world: World) -> None:
    from lifecycle.adoption import links

    user = new_user("Olaf", "Outside")
    user["emailaddress"] = f"olaf.{user['id']}@corp.example.test"
    _existing_account(world, "CN=Users", f"olaf{user['id']}", mail=user["emailaddress"])
    world.accept(delivery("created", user))
    world.drain()
    assert world.account(user["id"]) is None
    assert _accounts_named(world, "sn", user["surname"]) == []
    refused = [e for e in world.audit(user["id"]) if e.outcome == "refused"]
    assert refused and "outside the managed containers" in refused[0].message
    assert links(world.runtime.store) == []


def test_a_new_joiner_carries_the_namespaced_anchor(world: World) -> None:
    user = new_user("Nora", "Namespaced")
    world.accept(delivery("created", user))
    world.drain()
    account = world.account(user["id"])
    assert account is not None and account["employeeID"] == f"halo:{user['id']}"


def test_a_password_reset_of_an_account_the_service_did_not_create_waits_for_approval(world: World) -> None:
    from datetime import UTC, datetime

    from lifecycle.adoption import approve_link, links
    from lifecycle.state import PersonRecord

    user = new_user("Hugo", "Hrnumber")
    # An account with the bare id in employeeID (an HR number, or data from before the namespace).
    dn = _existing_account(world, "OU=Staff,OU=Halo", f"hugo{user['id']}", employeeID=str(user["id"]))
    world.runtime.store.put_person(
        PersonRecord(user["id"], "left", datetime(2026, 1, 1, tzinfo=UTC), "earlier", dn=dn)
    )
    world.accept(delivery("updated", user))  # a rehire: enable, ..., reset_password
    world.drain()
    steps = {e.action: e.outcome for e in world.audit(user["id"])}
    assert steps["reset_password"] == "refused"
    [proposal] = links(world.runtime.store)
    approve_link(world.runtime, proposal.held_id, by="alice", source="test")
    world.drain()
    resets = [e.outcome for e in world.audit(user["id"]) if e.action == "reset_password"]
    assert resets == ["refused", "changed"]
    account = world.account(user["id"])
    assert account is not None and account["employeeID"] == f"halo:{user['id']}"


# Reconcile in report mode ------------------------------------------------------------------------------------
def test_reconcile_in_report_mode_reports_the_drift_and_changes_nothing(
    directory: DCInfo, example_mapping: Mapping, tmp_path: Path
) -> None:
    from lifecycle.reconcile import run_reconcile
    from tests.integration.test_halo_api_with_ad import make_world, queued
    from tests.standins.halo import HaloStandIn, UserSet

    standin = HaloStandIn(UserSet(0, first_id=9_000_000), rate_limit=100_000, rate_window=1.0).start()
    world = make_world(directory, tmp_path, example_mapping, standin, reconcile_mode="report")
    try:
        assert world.runtime.settings.halo_missing_users == "report"  # the default
        mover, gone = new_user("Rita", "Reported"), new_user("Gina", "Gone")
        for user in (mover, gone):
            standin.users.add(user)
            world.accept(delivery("created", user))
        assert [r.outcome for r in world.drain()] == ["completed", "completed"]
        standin.users.update(mover["id"], {"department": "Engineering"})
        standin.users.delete(gone["id"])
        fresh = standin.users.add(new_user("Fred", "Fresh"))
        before = {u["id"]: world.account(u["id"]) for u in (mover, gone)}

        report = run_reconcile(world.runtime)
        assert report.mode == "report"
        assert (report.count("mover"), report.count("joiner"), report.count("missing")) == (1, 1, 1)
        assert report.enqueued == 0 and queued(world.runtime) == []
        assert world.account(fresh["id"]) is None
        for user_id, account in before.items():
            assert account is not None
            assert world.account(user_id) == account  # not one attribute changed
        drift = [e for u in (mover, fresh, gone) for e in world.audit(u["id"]) if e.action == "reconcile"]
        assert len(drift) == 3 and all(e.outcome == "skipped" for e in drift)
        assert "drift (mover: " in next(e.message for e in drift if e.user_id == mover["id"])
        # Apply mode sends the same drift.
        applied = run_reconcile(world.runtime, mode="apply")
        assert applied.enqueued == 2  # the mover and the joiner; the missing user is still only reported
    finally:
        world.worker.close()
        world.ldap.unbind()
        world.runtime.close()
        standin.stop()
