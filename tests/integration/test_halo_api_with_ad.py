"""Thin webhooks, reconciliation and write-back against the Halo stand-in and a real Samba AD DC."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lifecycle.adoption import approve_link, links
from lifecycle.cli import main
from lifecycle.fingerprints import fingerprint
from lifecycle.halo.client import HaloClient
from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import Mapping, parse_mapping
from lifecycle.people import normalise_user
from lifecycle.reconcile import run_reconcile
from lifecycle.runtime import Runtime
from lifecycle.settings import get_settings
from lifecycle.state import PersonRecord
from lifecycle.work import WorkItem
from lifecycle.worker import Worker
from tests.conftest import ROOT
from tests.integration.conftest import World, admin_connection, dc_settings, delivery, new_user
from tests.standins.halo import HaloStandIn, UserSet

pytestmark = pytest.mark.integration
UF_ACCOUNTDISABLE = 2
# Halo ids of this module's generated users: far from the ids other tests take from 10,000 upwards.
_blocks = itertools.count(3_000_000, 100_000)

WRITEBACK_STEP = (
    '{ action = "halo_writeback", fields = { samaccountname = "samaccountname", activedirectory_dn = "dn", '
    'login = "{{userprincipalname}}" } }'
)


def mapping_with_writeback() -> Mapping:
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    joiner = 'joiner = ["create_user", "modify_properties", "move_ou", "sync_groups"]'
    mover = 'mover = ["modify_properties", "move_ou", "sync_groups"]'
    assert joiner in text and mover in text
    text = text.replace(joiner, joiner[:-1] + f", {WRITEBACK_STEP}]").replace(
        mover, mover[:-1] + f", {WRITEBACK_STEP}]"
    )
    return parse_mapping(text, "mapping with write-back")


def halo_client(standin: HaloStandIn, **overrides: Any) -> HaloClient:
    values: dict[str, Any] = {
        "api_url": standin.url,
        "client_id": standin.client_id,
        "client_secret": standin.client_secret,
        "ca_file": standin.ca_file,
        "rate_limit": standin.rate_limit,
        "rate_window": standin.rate_window,
        "backoff_base": 0.05,
        "backoff_cap": 0.5,
    }
    values.update(overrides)
    return HaloClient(**values)


class HaloWorld(World):
    """A World whose runtime talks to the Halo stand-in."""

    standin: HaloStandIn


def make_world(directory: DCInfo, tmp_path: Path, mapping: Mapping, standin: HaloStandIn, **settings: Any) -> HaloWorld:
    values: dict[str, Any] = {
        "retry_base_seconds": 0.05,
        "retry_cap_seconds": 0.2,
        "halo_api_url": standin.url,
        "halo_client_id": standin.client_id,
        "halo_client_secret": standin.client_secret,
        "halo_ca_file": standin.ca_file,
        "halo_page_size": 100,
        # These tests are about what a run sends; report mode (the default) has its own test.
        "reconcile_mode": "apply",
    }
    values.update(settings)
    runtime = Runtime(dc_settings(directory, tmp_path, **values), mapping=mapping)
    # The same client build_client makes, with test-sized backoff for unannounced 429s.
    runtime.__dict__["halo"] = halo_client(standin)
    world = HaloWorld(directory, runtime, Worker(runtime), admin_connection(directory))
    world.standin = standin
    return world


@pytest.fixture
def standin() -> Iterator[HaloStandIn]:
    halo = HaloStandIn(UserSet(0, first_id=next(_blocks)), rate_limit=100_000, rate_window=1.0).start()
    yield halo
    halo.stop()


@pytest.fixture
def halo_world(
    directory: DCInfo, example_mapping: Mapping, tmp_path: Path, standin: HaloStandIn
) -> Iterator[HaloWorld]:
    world = make_world(directory, tmp_path, example_mapping, standin)
    yield world
    world.worker.close()
    world.ldap.unbind()
    world.runtime.close()


def queued(runtime: Runtime) -> list[tuple[Any, WorkItem]]:
    """Every deliverable message, locked (process each with the worker, or leave it)."""
    found = []
    while (message := runtime.queue.receive(timeout=0)) is not None:
        found.append((message, WorkItem.from_bytes(message.body)))
    return found


def with_mail(user: dict[str, Any], local: str) -> dict[str, Any]:
    """``user`` with an e-mail address unique to it (its id in the local part)."""
    return {**user, "emailaddress": f"{local}{user['id']}@corp.example.test"}


def add_minimal_account(ldap: Any, base_dn: str, user_id: int | None, sam: str, **attributes: str) -> str:
    dn = f"CN={sam},OU=Staff,OU=Halo,{base_dn}"
    values: dict[str, str] = {"sAMAccountName": sam, **attributes}
    if user_id is not None:
        values["employeeID"] = str(user_id)
    ldap.add(dn, ["top", "person", "organizationalPerson", "user"], values)
    return dn


def remember(runtime: Runtime, user: dict[str, Any], dn: str | None = None) -> None:
    """A person record as the worker leaves it after applying ``user``."""
    runtime.store.put_person(
        PersonRecord(
            user_id=int(user["id"]),
            status="active",
            last_event_at=datetime(2026, 1, 1, tzinfo=UTC),
            last_work_id="seed",
            dn=dn,
            fingerprint=fingerprint(runtime.mapping, normalise_user(user)),
        )
    )


# 1. Thin webhooks --------------------------------------------------------------------------------------------
def comparable(account: dict[str, Any] | None, surname: str, user_id: int) -> dict[str, Any]:
    assert account is not None
    keep = [
        "givenName", "sn", "displayName", "title", "department", "company", "physicalDeliveryOfficeName",
        "telephoneNumber", "description", "sAMAccountName", "userPrincipalName", "mail", "userAccountControl",
        "memberOf", "employeeID", "initials", "pwdLastSet",
    ]  # fmt: skip
    projected = {k: account.get(k) for k in keep}
    projected["ou"] = str(account["dn"]).split(",", 1)[1]
    text = repr(sorted(projected.items()))
    return {
        "text": text.replace(surname, "<surname>").replace(surname.lower(), "<surname>").replace(str(user_id), "<id>")
    }


@pytest.mark.parametrize("form", ["webhook", "runbook"])
def test_a_webhook_without_the_user_object_leads_to_the_same_account_as_a_full_one(
    halo_world: HaloWorld, form: str
) -> None:
    fields = {"department": "Sales", "title": "Analyst", "phonenumber": "020 7946 0001", "initials": "TB"}
    full = new_user("Thea", "Fullbody", **fields)
    thin = new_user("Thea", "Thinbody", **fields)
    halo_world.standin.users.add(thin)
    halo_world.accept(delivery("created", full))
    if form == "webhook":
        # "Event information only": ids and the event name, no user object.
        body: dict[str, Any] = {"id": f"d-thin-{thin['id']}", "event": "User Created", "object_id": thin["id"]}
    else:
        body = {"event": "created", "user_id": thin["id"]}
    answer = halo_world.accept(body)
    assert len(answer["accepted"]) == 1
    assert [r.outcome for r in halo_world.drain()] == ["completed", "completed"]
    assert comparable(halo_world.account(thin["id"]), "Thinbody", thin["id"]) == comparable(
        halo_world.account(full["id"]), "Fullbody", full["id"]
    )
    assert halo_world.standin.routes["GET /api/Users/{id}"] == 1
    person = halo_world.runtime.store.get_person(thin["id"])
    assert person is not None and person.fingerprint.startswith(
        fingerprint(halo_world.runtime.mapping, normalise_user(halo_world.standin.users.get(thin["id"]) or {}))
    )


def test_a_thin_deleted_webhook_for_a_user_halo_already_removed_runs_the_deleted_steps(halo_world: HaloWorld) -> None:
    user = new_user("Gone", "Thindeleted")
    halo_world.standin.users.add(user)
    halo_world.accept(delivery("created", user))
    assert [r.outcome for r in halo_world.drain()] == ["completed"]
    halo_world.standin.users.delete(user["id"])
    halo_world.accept({"id": f"d-del-{user['id']}", "event": "User Deleted", "object_id": user["id"]})
    assert [r.outcome for r in halo_world.drain()] == ["completed"]
    account = halo_world.account(user["id"])
    assert account is not None and int(account["userAccountControl"]) & UF_ACCOUNTDISABLE
    assert str(account["dn"]).split(",", 1)[1] == f"OU=Disabled,OU=Halo,{halo_world.info.base_dn}"


def test_a_thin_webhook_for_a_user_halo_does_not_have_is_dead_lettered_with_the_reason(halo_world: HaloWorld) -> None:
    halo_world.accept({"id": "d-none", "event": "User Updated", "object_id": 2_999_999})
    [result] = halo_world.drain()
    assert result.outcome == "dead_lettered" and "Halo has no user 2999999" in result.reason


def test_a_thin_webhook_waits_out_a_busy_halo_and_completes(halo_world: HaloWorld) -> None:
    user = new_user("Busy", "Halo")
    halo_world.standin.users.add(user)
    client = halo_client(halo_world.standin, patience=0.5)
    halo_world.runtime.__dict__["halo"] = client
    client.authenticate()
    halo_world.standin.inject([(503, "1")])  # Halo asks for a second: more than a fetch may wait here
    halo_world.accept({"id": "d-busy", "event": "User Created", "object_id": user["id"]})
    [first] = halo_world.drain()
    assert first.outcome == "retry" and "503" in first.reason
    assert halo_world.account(user["id"]) is None
    # The queue delivers it again after Halo's Retry-After; nothing was lost.
    message = halo_world.runtime.queue.receive(timeout=10)
    assert message is not None
    assert halo_world.worker.process_message(message).outcome == "completed"
    assert halo_world.account(user["id"]) is not None


# 2. Reconciliation -------------------------------------------------------------------------------------------
def test_reconciling_1000_users_against_990_accounts_sends_10_joiners_and_5_movers_and_then_nothing(
    directory: DCInfo, example_mapping: Mapping, tmp_path: Path
) -> None:
    first = next(_blocks)
    standin = HaloStandIn(UserSet(1000, first_id=first), rate_limit=100_000, rate_window=1.0).start()
    world = make_world(directory, tmp_path, example_mapping, standin)
    try:
        ids = list(range(first, first + 1000))
        present, missing = ids[:990], ids[990:]
        for user_id in present:
            user = standin.users.get(user_id)
            assert user is not None
            dn = add_minimal_account(world.ldap, directory.base_dn, user_id, f"hl{user_id}")
            remember(world.runtime, user, dn)
        moved = present[100:105]
        for user_id in moved:
            standin.users.update(user_id, {"department": "Changed"})

        report = run_reconcile(world.runtime)
        assert report.complete and report.listed == 1000
        assert (report.joiners, report.movers, report.count("unchanged")) == (10, 5, 985)
        assert report.enqueued == 15 and report.duplicates == 0

        again = run_reconcile(world.runtime)
        assert again.enqueued == 0 and again.duplicates == 15

        work = queued(world.runtime)
        assert Counter(item.lifecycle for _, item in work) == {"joiner": 10, "mover": 5}
        assert {item.event.user_id for _, item in work if item.lifecycle == "joiner"} == set(missing)
        assert {item.event.user_id for _, item in work if item.lifecycle == "mover"} == set(moved)
        assert all(item.event.source == "reconcile" for _, item in work)
        for message, _ in work:
            assert world.worker.process_message(message).outcome == "completed"
        changed = world.account(moved[0])
        assert changed is not None and changed["department"] == "Changed"
        assert world.account(missing[0]) is not None

        settled = run_reconcile(world.runtime)
        assert settled.enqueued == 0 and settled.duplicates == 0
        assert settled.count("unchanged") == 1000
        assert queued(world.runtime) == []
    finally:
        world.worker.close()
        world.ldap.unbind()
        world.runtime.close()
        standin.stop()


def test_with_ulastupdate_in_list_items_only_changed_users_are_fetched(
    directory: DCInfo, example_mapping: Mapping, tmp_path: Path
) -> None:
    first = next(_blocks)
    standin = HaloStandIn(UserSet(300, first_id=first), list_ulastupdate=True).start()
    world = make_world(directory, tmp_path, example_mapping, standin)
    try:
        for user_id in range(first, first + 299):
            remember(world.runtime, standin.users.get(user_id) or {})
        # The last one has an anchored account but no record yet (a first run): matched from its list item.
        add_minimal_account(world.ldap, directory.base_dn, first + 299, f"ul{first + 299}")
        standin.users.update(first + 7, {"title": "Director"})
        standin.users.update(first + 8, {"colour": "#000000"})  # not a field the mapping reads
        report = run_reconcile(world.runtime, dry_run=True)
        assert report.fetched == 2 and report.movers == 1 and report.count("unchanged") == 298
        assert report.count("matched") == 1
        assert [o.user_id for o in report.changes] == [first + 7]
        assert queued(world.runtime) == []  # dry-run sends nothing

        # For real: the matched user is recorded with Halo's stamp, and the next run asks nothing about it.
        add_minimal_account(world.ldap, directory.base_dn, first + 7, f"ul{first + 7}")
        run_reconcile(world.runtime)
        for message, _ in queued(world.runtime):
            assert world.worker.process_message(message).outcome == "completed"
        again = run_reconcile(world.runtime, dry_run=True)
        # Only the user whose unmapped field changed (no event recorded its new stamp) is fetched again.
        assert again.fetched == 1 and again.count("unchanged") == 300
        standin.users.update(first + 299, {"department": "Finance"})
        changed = run_reconcile(world.runtime, dry_run=True)
        assert changed.fetched == 2 and [o.user_id for o in changed.changes] == [first + 299]
    finally:
        world.worker.close()
        world.ldap.unbind()
        world.runtime.close()
        standin.stop()


def test_a_value_that_changes_back_and_forth_without_webhooks_is_applied_every_time(halo_world: HaloWorld) -> None:
    user = halo_world.standin.users.add(new_user("Flip", "Flop", department="Sales"))
    halo_world.accept(delivery("created", user))
    assert [r.outcome for r in halo_world.drain()] == ["completed"]
    for department in ("Engineering", "Sales", "Engineering"):
        halo_world.standin.users.update(user["id"], {"department": department})  # no webhook arrives
        report = run_reconcile(halo_world.runtime)
        assert (report.movers, report.enqueued, report.duplicates) == (1, 1, 0)
        assert [r.outcome for r in halo_world.drain()] == ["completed"]
        account = halo_world.account(user["id"])
        assert account is not None and account["department"] == department


def test_the_first_run_on_an_existing_directory_correlates_instead_of_creating(
    halo_world: HaloWorld, directory: DCInfo
) -> None:
    base = directory.base_dn
    ldap, users = halo_world.ldap, halo_world.standin.users
    anchored = users.add(new_user("Anna", "Anchored"))
    add_minimal_account(ldap, base, anchored["id"], f"anch{anchored['id']}")
    # Addresses and the foreign anchor carry ids of this test's own, so no other test's accounts (nor a rerun's)
    # can match them.
    by_mail = users.add(with_mail(new_user("Mona", "Mailmatch"), "mona.mailmatch"))
    add_minimal_account(ldap, base, None, f"mail{by_mail['id']}", mail=by_mail["emailaddress"])
    twice = users.add(with_mail(new_user("Tess", "Twice"), "tess.twice"))
    for n in (1, 2):
        add_minimal_account(ldap, base, None, f"twice{twice['id']}{n}", mail=twice["emailaddress"])
    taken = users.add(with_mail(new_user("Otto", "Other"), "otto.other"))
    someone_else = new_user("Someone", "Else")["id"]  # an anchor no Halo user of this test has
    add_minimal_account(ldap, base, someone_else, f"other{taken['id']}", mail=taken["emailaddress"])
    by_login = users.add(new_user("Lars", "Login", login=f"ll{anchored['id']}"))
    add_minimal_account(ldap, base, None, f"ll{anchored['id']}")
    left = users.add(new_user("Ivy", "Inactive", inactive=True))
    fresh = users.add(new_user("Nina", "New"))

    dry = run_reconcile(halo_world.runtime, dry_run=True)
    expected = {
        anchored["id"]: "matched",
        by_mail["id"]: "link_proposed",
        twice["id"]: "conflict",
        taken["id"]: "conflict",
        by_login["id"]: "link_proposed",
        left["id"]: "skipped_inactive",
        fresh["id"]: "joiner",
    }
    assert dry.decisions == Counter(expected.values())
    assert halo_world.runtime.store.get_person(anchored["id"]) is None
    assert queued(halo_world.runtime) == []
    assert halo_world.account(by_mail["id"]) is None  # dry-run stamped nothing

    decided: dict[int, str] = {}
    report = run_reconcile(halo_world.runtime, on_outcome=lambda o: decided.__setitem__(o.user_id, o.decision))
    assert decided == expected
    assert report.enqueued == 1
    assert [item.event.user_id for _, item in queued(halo_world.runtime)] == [fresh["id"]]
    # A match by mail or login (fields Halo users can edit) is proposed, never stamped, until an operator says so.
    assert halo_world.account(by_mail["id"]) is None
    person = halo_world.runtime.store.get_person(anchored["id"])
    assert person is not None and person.status == "active" and person.fingerprint
    for user in (twice, by_mail, by_login):
        assert halo_world.runtime.store.get_person(user["id"]) is None
    proposals = {h.user_id: h for h in links(halo_world.runtime.store)}
    assert sorted(proposals) == sorted([by_mail["id"], by_login["id"]])
    assert [e.outcome for e in halo_world.audit(by_mail["id"]) if e.action == "correlate"] == ["held"]
    conflicts = {o.user_id: o.detail for o in report.matches if o.decision == "conflict"}
    assert "several accounts" in conflicts[twice["id"]] and f"employeeID={someone_else}" in conflicts[taken["id"]]

    # Approved, the anchor is stamped and the joiner runs on the existing account: nobody is created twice.
    for proposal in proposals.values():
        approve_link(halo_world.runtime, proposal.held_id, by="alice", source="test")
    halo_world.drain()
    linked = halo_world.account(by_mail["id"])
    assert linked is not None and linked["sAMAccountName"] == f"mail{by_mail['id']}"
    assert linked["employeeID"] == f"halo:{by_mail['id']}"
    second = run_reconcile(halo_world.runtime)
    # (The fresh joiner is still queued, locked by `queued` above: sent again, a duplicate.)
    assert second.count("link_proposed") == 0 and second.count("unchanged") == 3 and second.enqueued == 0


def test_a_user_missing_from_halo_is_a_leaver_only_when_configured(
    directory: DCInfo, example_mapping: Mapping, tmp_path: Path, standin: HaloStandIn
) -> None:
    ignoring = make_world(directory, tmp_path / "a", example_mapping, standin, halo_missing_users="ignore")
    leaving = make_world(directory, tmp_path / "b", example_mapping, standin, halo_missing_users="leaver")
    try:
        stays, goes = new_user("Stella", "Stays"), new_user("Gus", "Goes")
        for user in (stays, goes):
            standin.users.add(user)
            leaving.accept(delivery("created", user))
        assert [r.outcome for r in leaving.drain()] == ["completed", "completed"]
        for user in (stays, goes):
            remember(ignoring.runtime, user)
        standin.users.delete(goes["id"])

        assert run_reconcile(ignoring.runtime).count("leaver") == 0
        report = run_reconcile(leaving.runtime)
        assert report.count("leaver") == 1 and report.missing_checked == 1
        [(message, item)] = queued(leaving.runtime)
        assert item.lifecycle == "leaver" and item.event.user_id == goes["id"]
        assert leaving.worker.process_message(message).outcome == "completed"
        gone = leaving.account(goes["id"])
        assert gone is not None and int(gone["userAccountControl"]) & UF_ACCOUNTDISABLE
        still = leaving.account(stays["id"])
        assert still is not None and not int(still["userAccountControl"]) & UF_ACCOUNTDISABLE
        assert run_reconcile(leaving.runtime).count("leaver") == 0  # applied: nothing more to do
    finally:
        for world in (ignoring, leaving):
            world.worker.close()
            world.ldap.unbind()
            world.runtime.close()


def test_a_burst_of_missing_users_is_held_by_the_mass_change_guard(
    directory: DCInfo, example_mapping: Mapping, tmp_path: Path, standin: HaloStandIn
) -> None:
    world = make_world(directory, tmp_path, example_mapping, standin, halo_missing_users="deleted", guard_max_count=2)
    try:
        users = [new_user("Burst", f"Leaver{n}") for n in range(4)]
        for user in users:
            standin.users.add(user)
            world.accept(delivery("created", user))
        assert [r.outcome for r in world.drain()] == ["completed"] * 4
        for user in users:
            standin.users.delete(user["id"])
        report = run_reconcile(world.runtime)
        assert report.count("deleted") == 4
        outcomes = [world.worker.process_message(message).outcome for message, _ in queued(world.runtime)]
        assert sorted(outcomes) == ["completed", "completed", "held", "held"]
    finally:
        world.worker.close()
        world.ldap.unbind()
        world.runtime.close()


# 4. Write-back ------------------------------------------------------------------------------------------------
def test_write_back_lands_without_automations_and_the_echo_webhook_plans_nothing(
    directory: DCInfo, tmp_path: Path
) -> None:
    standin = HaloStandIn(UserSet(0, first_id=next(_blocks)), list_ulastupdate=True).start()
    world = make_world(directory, tmp_path, mapping_with_writeback(), standin)
    try:
        user = new_user("Wanda", "Writeback", department="Sales")
        standin.users.add(user)
        world.accept(delivery("created", user))
        assert [r.outcome for r in world.drain()] == ["completed"]
        account = world.account(user["id"])
        assert account is not None
        assert standin.writes == [
            [
                {
                    "id": user["id"],
                    "samaccountname": account["sAMAccountName"],
                    "activedirectory_dn": account["dn"],
                    "login": account["userPrincipalName"],
                    "_dont_fire_automations": True,
                }
            ]
        ]
        assert standin.automations == []
        halo_user = standin.users.get(user["id"])
        assert halo_user is not None and halo_user["activedirectory_dn"] == account["dn"]
        person = world.runtime.store.get_person(user["id"])
        assert person is not None and person.fingerprint.endswith("@" + halo_user["ulastupdate"])
        changes = [e for e in world.changes(user["id"]) if e.action == "halo_writeback"]
        assert {c.attribute for c in changes[0].changes} == {"halo:samaccountname", "halo:activedirectory_dn",
                                                             "halo:login"}  # fmt: skip

        # Halo fires its update webhook anyway, carrying the written fields.
        echo_body = delivery("updated", halo_user)
        world.accept(echo_body)
        [echo] = world.drain()
        assert echo.outcome == "completed"
        after = world.account(user["id"])
        assert after is not None and after["uSNChanged"] == account["uSNChanged"]  # nothing changed in AD
        assert len(standin.writes) == 1  # and nothing was written back again
        echo_entries = world.runtime.store.audit(work_id=f"halo-{echo_body['id']}-updated")
        assert len(echo_entries) == 4 and {e.outcome for e in echo_entries} == {"unchanged"}

        # Reconciliation agrees: the user is unchanged, and not even fetched (its ulastupdate matches).
        report = run_reconcile(world.runtime)
        assert report.count("unchanged") == 1 and report.fetched == 0 and report.enqueued == 0
    finally:
        world.worker.close()
        world.ldap.unbind()
        world.runtime.close()
        standin.stop()


def test_write_back_in_dry_run_reports_the_fields_and_writes_nothing(directory: DCInfo, tmp_path: Path) -> None:
    standin = HaloStandIn(UserSet(0, first_id=next(_blocks))).start()
    world = make_world(directory, tmp_path, mapping_with_writeback(), standin)
    try:
        user = new_user("Dora", "Dryrun")
        standin.users.add(user)
        world.accept(delivery("created", user))
        assert [r.outcome for r in world.drain()] == ["completed"]
        world.runtime.settings = world.runtime.settings.model_copy(update={"dry_run": True})
        dry_worker = Worker(world.runtime)
        standin.users.update(user["id"], {"login": "someone.else"})
        world.accept(delivery("updated", standin.users.get(user["id"]) or {}))
        message = world.runtime.queue.receive(timeout=0)
        assert message is not None and dry_worker.process_message(message).outcome == "completed"
        dry_worker.close()
        assert len(standin.writes) == 1
        entry = [e for e in world.audit(user["id"]) if e.action == "halo_writeback"][-1]
        assert entry.outcome == "dry_run" and entry.changes[0].before == "someone.else"
    finally:
        world.worker.close()
        world.ldap.unbind()
        world.runtime.close()
        standin.stop()


# The CLI -------------------------------------------------------------------------------------------------------
@pytest.fixture
def cli_env(
    directory: DCInfo, standin: HaloStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HaloStandIn]:
    settings = dc_settings(directory, tmp_path)
    env = {
        "LIFECYCLE_MAPPING_FILE": str(ROOT / "mapping.example.toml"),
        "LIFECYCLE_DATA_DIR": str(tmp_path / "data"),
        "LIFECYCLE_AD_URL": settings.ad_url,
        "LIFECYCLE_AD_USER": settings.ad_user,
        "LIFECYCLE_AD_PASSWORD": settings.ad_password.get_secret_value(),
        "LIFECYCLE_AD_BASE_DN": settings.ad_base_dn,
        "LIFECYCLE_AD_CA_FILE": str(settings.ad_ca_file),
        "LIFECYCLE_AD_TLS_SERVER_NAME": settings.ad_tls_server_name or "",
        "LIFECYCLE_WEBHOOK_HMAC_SECRET": "hmac-secret-value",
        "LIFECYCLE_HALO_API_URL": standin.url,
        "LIFECYCLE_HALO_CLIENT_ID": standin.client_id,
        "LIFECYCLE_HALO_CLIENT_SECRET": standin.client_secret,
        "LIFECYCLE_HALO_CA_FILE": str(standin.ca_file),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield standin
    get_settings.cache_clear()


def test_halo_test_authenticates_reads_the_first_page_and_shows_the_mapping(
    cli_env: HaloStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    users = [cli_env.users.add(new_user("Cleo", f"Cli{n}", department="Engineering")) for n in range(5)]
    assert main(["halo", "test", "--count", "2"]) == 0
    out = capsys.readouterr().out
    assert f"ok: token from {cli_env.url}/auth/token (discovered through /api/authinfo)" in out
    assert "Halo lists 5 user(s)" in out
    assert f"user {users[0]['id']} Cleo Cli0 (unknown): joiner (dry-run)" in out
    assert f"user {users[2]['id']}" not in out
    assert "create_user in OU=Main,OU=Staff,OU=Halo," in out and "CN=Engineering,OU=Groups" in out
    assert cli_env.writes == []


def test_lifecycle_reconcile_dry_run_prints_progress_and_what_it_would_send(
    cli_env: HaloStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    users = [cli_env.users.add(new_user("Rhea", f"Reconcile{n}")) for n in range(3)]
    assert main(["reconcile", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "reconcile: 3/3 users (100%)" in captured.err
    for user in users:
        assert f"user {user['id']}: would send joiner: create_user, modify_properties, move_ou, sync_groups" in (
            captured.out
        )
    assert "reconciled 3 of 3 Halo users (complete): joiner 3; would send 3 work item(s)" in captured.out


def test_lifecycle_reconcile_without_the_halo_api_is_a_one_line_error(
    cli_env: HaloStandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LIFECYCLE_HALO_API_URL")
    get_settings.cache_clear()
    assert main(["reconcile"]) == 3  # invalid configuration
    err = capsys.readouterr().err
    assert err.startswith("lifecycle: error: invalid configuration: reconciliation needs the Halo API")
    assert err.count("\n") == 1
