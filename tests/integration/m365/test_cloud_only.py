"""Cloud-only people end to end, through the ingress and the worker, with no AD at all (issue 17).

The mapping (tests/events/mapping-cloud-only.toml) has no [ou] and no AD step; the worker never opens an LDAP
connection (no AD settings point anywhere). Entra is the Graph stand-in, which follows Microsoft's documented
behaviour for creates, name conflicts, soft delete and restore (tests/standins/graph/directory.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EVENTS, make_settings
from tests.integration.conftest import delivery, new_user
from tests.integration.m365.conftest import GROUP_A, Service, graph_overrides, make_service
from tests.standins.graph import E3, GraphStandIn

pytestmark = pytest.mark.integration
MAPPING = EVENTS / "mapping-cloud-only.toml"


@pytest.fixture
def service(graph: GraphStandIn, tmp_path: Path) -> Iterator[Service]:
    from lifecycle.mapping.schema import load_mapping

    graph.add_group("All staff", id=GROUP_A)
    # No AD: the AD URL points nowhere that answers; a step that tried LDAP would fail the test.
    settings = make_settings(tmp_path, mapping_file=MAPPING, ad_url="ldaps://192.0.2.1:1", **graph_overrides(graph))
    made = make_service(settings, load_mapping(MAPPING))
    yield made
    made.worker.close()
    made.runtime.close()


def person(first: str, last: str, **fields: Any) -> dict[str, Any]:
    return new_user(first, last, department="Sales", title="Analyst", **fields)


def audit(service: Service, user_id: int) -> list[Any]:
    return list(service.runtime.store.audit(user_id=user_id))


def test_a_cloud_only_joiner_mover_leaver_and_rehire_run_with_no_ad_and_the_rehire_restores_the_same_user(
    service: Service, graph: GraphStandIn
) -> None:
    ada = person("Ada", "Lovelace", customfields=[{"name": "start_date", "value": "2026-12-14"}])
    service.accept(delivery("created", ada))
    assert service.settle() == ["completed"]

    user = graph.user("ada.lovelace@contoso.test")
    assert user.extra["employeeId"] == f"halo:{ada['id']}"
    assert user.extra["employeeHireDate"] == "2026-12-14T00:00:00Z"
    assert user.extra["mailNickname"] == "ada.lovelace" and user.mail == "ada.lovelace@contoso.test"
    assert user.usage_location == "GB" and user.enabled
    # The licence and group steps ran on the new user at once: no directory sync to wait for.
    assert E3 in user.licenses and user.id in graph.groups[GROUP_A].members
    # A second delivery of the joiner finds the user by its anchor and writes nothing.
    graph.clear_log()
    service.accept(delivery("created", ada))
    assert service.settle() == ["completed"]
    assert graph.writes() == []

    # Mover: only what differs is written; a field Halo did not send changes nothing.
    moved = {**ada, "department": "Research"}
    del moved["title"]
    service.accept(delivery("updated", moved))
    assert service.settle() == ["completed"]
    assert user.extra["department"] == "Research" and user.extra["jobTitle"] == "Analyst"
    patches = [e.body for e in graph.writes() if e.method == "PATCH"]
    assert patches == [{"department": "Research"}]

    # Leaver: sign-in blocked, sessions revoked, then soft-deleted (restorable, licences kept).
    service.accept(delivery("updated", {**moved, "inactive": True}))
    assert service.settle() == ["completed"]
    assert user.id in graph.deleted and user.id not in graph.users
    assert not user.enabled and user.sessions_valid_from is not None

    # Rehire: the same object comes back (no second user), enabled, with its licence and group.
    graph.clear_log()
    service.accept(delivery("updated", {**moved, "inactive": False}))
    assert service.settle() == ["completed"]
    assert user.id in graph.users and user.upn == "ada.lovelace@contoso.test"
    assert user.enabled and E3 in user.licenses and user.id in graph.groups[GROUP_A].members
    assert not any(e.method == "POST" and e.path == "/users" for e in graph.log)
    actions = {e.action: e.outcome for e in audit(service, ada["id"])}
    assert actions["restore_cloud_user"] == "changed"
    assert actions["delete_cloud_user"] == "changed"


def test_a_taken_upn_mail_or_proxy_address_moves_to_the_next_candidate_even_when_the_index_lags(
    service: Service, graph: GraphStandIn
) -> None:
    # Candidate 1's UPN is held; candidate 2's mail is another user's proxy address, which the filters do not
    # show yet (eventual consistency): Graph's own ObjectConflict at create time moves on to the next name.
    graph.add_user("grace.hopper@contoso.test")
    lagging = graph.add_user(
        "someone@contoso.test", proxy_addresses=["SMTP:someone@contoso.test", "smtp:ghopper@contoso.test"]
    )
    graph.filter_lag.add(lagging.id)
    grace = person("Grace", "Hopper")
    service.accept(delivery("created", grace))
    assert service.settle() == ["completed"]

    created = graph.anchored(f"halo:{grace['id']}")
    assert created is not None and created.upn == "grace.hopper2@contoso.test"
    refused = [e for e in graph.log if e.method == "POST" and e.path == "/users" and e.status == 400]
    assert [e.body["userPrincipalName"] for e in refused] == ["ghopper@contoso.test"]
    assert all("passwordProfile" not in str(e.changes) for e in audit(service, grace["id"]))


def test_a_dry_run_shows_the_cloud_user_it_would_create_and_writes_nothing(
    service: Service, graph: GraphStandIn
) -> None:
    lin = person("Lin", "Dry")
    response = service.post(delivery("created", lin), dry_run="true")
    assert response.status == 200, response.body
    text = str(response.body)
    assert "create_cloud_user" in text and "lin.dry@contoso.test" in text
    assert graph.writes() == []


def test_a_mapping_with_cloud_user_steps_and_an_anchor_entra_cannot_hold_is_refused() -> None:
    from lifecycle.errors import ConfigurationError
    from lifecycle.mapping.schema import parse_mapping

    text = MAPPING.read_text().replace('anchor = "employeeID"', 'anchor = "departmentNumber"')
    with pytest.raises(ConfigurationError, match=r"employeeId and extensionAttribute1\.\.15"):
        parse_mapping(text, "m.toml")
    ad_steps = MAPPING.read_text().replace('{ action = "disable_cloud_account" }', '"disable_user"')
    with pytest.raises(ConfigurationError, match=r"\[ou\] is missing"):
        parse_mapping(ad_steps, "m.toml")


# Passwordless onboarding and managers ------------------------------------------------------------------------
@pytest.fixture
def mailing(graph: GraphStandIn, tmp_path: Path) -> Iterator[Service]:
    """The cloud-only service with password and pass delivery by mail (LIFECYCLE_PASSWORD_DELIVERY=graph_mail)."""
    from lifecycle.mapping.schema import load_mapping

    graph.add_group("All staff", id=GROUP_A)
    graph.add_user("hr@contoso.test", mail="hr@contoso.test")
    overrides = graph_overrides(graph, password_delivery="graph_mail", password_mail_sender="hr@contoso.test")
    settings = make_settings(tmp_path, mapping_file=MAPPING, ad_url="ldaps://192.0.2.1:1", **overrides)
    made = make_service(settings, load_mapping(MAPPING))
    yield made
    made.worker.close()
    made.runtime.close()


def test_a_passwordless_joiner_gets_its_manager_from_halo_and_a_pass_mailed_to_them_that_is_kept_nowhere(
    mailing: Service, graph: GraphStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    boss = graph.add_user("boss@contoso.test", mail="boss@contoso.test", display_name="Bo Boss")
    joiner = person(
        "Tap",
        "Joiner",
        manager_email="Boss@Contoso.test",
        customfields=[{"name": "onboarding", "value": "passwordless"}, {"name": "start_date", "value": "2099-03-02"}],
    )
    mailing.accept(delivery("created", joiner))
    assert mailing.settle() == ["completed"]

    user = graph.user("tap.joiner@contoso.test")
    assert user.manager_id == boss.id
    # One pass, valid from the start date at 08:00 London time (UTC in March), for the mapped 8 hours.
    assert len(graph.issued_passes) == 1 and len(user.passes) == 1
    tap = graph.issued_passes[0]
    assert user.passes[0]["startDateTime"] == "2099-03-02T08:00:00Z" and user.passes[0]["lifetimeInMinutes"] == 480
    # Delivered to the manager, as the initial password is today.
    [mail] = graph.sent_mail
    assert mail["message"]["toRecipients"] == [{"emailAddress": {"address": "boss@contoso.test"}}]
    assert tap in mail["message"]["body"]["content"] and tap not in mail["message"]["subject"]
    # Never stored, logged or audited: not in the audit, the journal, the store's files or any log record.
    audit_text = repr(audit(mailing, joiner["id"]))
    assert "temporaryAccessPassMethods" in audit_text and tap not in audit_text
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert tap.encode() not in path.read_bytes(), path
    assert tap not in caplog.text

    # The same person's next joiner event (a new delivery) finds the valid pass: no second pass, no second mail.
    mailing.accept(delivery("created", joiner))
    assert mailing.settle() == ["completed"]
    assert len(graph.issued_passes) == 1 and len(graph.sent_mail) == 1


def test_a_manager_named_by_halo_id_is_found_by_the_anchor_and_a_mover_changes_it(
    mailing: Service, graph: GraphStandIn
) -> None:
    first = graph.add_user("first@contoso.test", mail="first@contoso.test", extra={"employeeId": "halo:9001"})
    second = graph.add_user("second@contoso.test", mail="second@contoso.test", extra={"employeeId": "halo:9002"})
    joiner = person("Man", "Aged", customfields=[{"name": "manager_id", "value": "9001"}])
    mailing.accept(delivery("created", joiner))
    assert mailing.settle() == ["completed"]
    user = graph.user("man.aged@contoso.test")
    assert user.manager_id == first.id

    graph.clear_log()
    mailing.accept(delivery("updated", {**joiner, "customfields": [{"name": "manager_id", "value": "9002"}]}))
    assert mailing.settle() == ["completed"]
    assert user.manager_id == second.id
    assert [(e.method, e.path) for e in graph.writes()] == [("PUT", f"/users/{user.id}/manager/$ref")]


def test_a_pass_refused_by_the_tenant_policy_dead_letters_with_what_to_enable_and_mails_nothing(
    mailing: Service, graph: GraphStandIn
) -> None:
    graph.add_user("boss@contoso.test", mail="boss@contoso.test")
    graph.tap_policy["state"] = "disabled"
    joiner = person(
        "No",
        "Policy",
        manager_email="boss@contoso.test",
        customfields=[{"name": "onboarding", "value": "passwordless"}],
    )
    mailing.accept(delivery("created", joiner))
    assert mailing.settle() == ["dead_lettered"]
    assert graph.sent_mail == [] and graph.issued_passes == []
    reason = mailing.runtime.queue.dead_letters()[-1].description
    assert "Temporary Access Pass is not enabled" in reason and "Authentication methods" in reason
    # The steps before it stand: the user exists, with its manager; a replay after the policy is fixed resumes.
    assert graph.user("no.policy@contoso.test").manager_id is not None


def test_a_cloud_only_person_whose_user_holds_a_directory_role_gets_no_pass_and_is_neither_changed_nor_deleted(
    mailing: Service, graph: GraphStandIn
) -> None:
    graph.add_user("boss@contoso.test", mail="boss@contoso.test")
    joiner = person(
        "Ad", "Min", manager_email="boss@contoso.test", customfields=[{"name": "onboarding", "value": "passwordless"}]
    )
    # The Halo person's anchor is on a Global Administrator (someone linked it, or typed it): the service must
    # never make a pass for it (a pass is a way in), nor change or delete it.
    admin = graph.add_user(
        "admin@contoso.test", mail="admin@contoso.test", extra={"employeeId": f"halo:{joiner['id']}"}
    )
    graph.add_role("Global Administrator", admin)
    mailing.accept(delivery("created", joiner))
    assert mailing.settle() == ["refused"]
    assert graph.issued_passes == [] and graph.sent_mail == [] and admin.manager_id is None
    assert graph.writes() == []

    graph.clear_log()
    mailing.accept(delivery("updated", {**joiner, "inactive": True}))
    assert mailing.settle() == ["refused"]
    assert graph.writes() == [] and admin.id in graph.users and admin.enabled
    refusals = [e for e in audit(mailing, joiner["id"]) if e.outcome == "refused"]
    assert refusals and all("directory role" in e.message for e in refusals)


def test_a_staged_cloud_deletion_runs_when_due_and_a_rehire_before_then_cancels_it(
    graph: GraphStandIn, tmp_path: Path
) -> None:
    from lifecycle.mapping.schema import parse_mapping

    text = MAPPING.read_text(encoding="utf-8")
    staged = text.replace('{ action = "delete_cloud_user" }', '{ action = "delete_cloud_user", after_days = 30 }')
    assert staged != text
    graph.add_group("All staff", id=GROUP_A)
    staged_file = tmp_path / "mapping-staged.toml"
    staged_file.write_text(staged, encoding="utf-8")
    overrides = graph_overrides(graph)
    settings = make_settings(tmp_path, mapping_file=staged_file, ad_url="ldaps://192.0.2.1:1", **overrides)
    service = make_service(settings, parse_mapping(staged, str(staged_file)))
    try:
        leaver, rehired = person("Del", "Staged"), person("Re", "Hired")
        for user in (leaver, rehired):
            service.accept(delivery("created", user))
            service.accept(delivery("updated", {**user, "inactive": True}))
        service.settle()
        # Disabled now, deleted later: both users are still there, each with one staged deletion.
        for user in (leaver, rehired):
            found = graph.anchored(f"halo:{user['id']}")
            assert found is not None and found.id in graph.users and not found.enabled
            assert [p.key for p in service.runtime.store.pending(user_id=user["id"])] == ["03-delete_cloud_user"]
        service.accept(delivery("updated", {**rehired, "inactive": False}))
        service.settle()
        assert service.runtime.store.pending(user_id=rehired["id"]) == []

        # Thirty days later (the worker's clock moves; nothing sleeps).
        service.worker._clock = lambda: 4_102_444_800.0  # 2100-01-01
        assert service.worker.release_due() == 1
        service.settle()
        gone, kept = graph.anchored(f"halo:{leaver['id']}"), graph.anchored(f"halo:{rehired['id']}")
        assert gone is not None and gone.id in graph.deleted
        assert kept is not None and kept.id in graph.users and kept.enabled
    finally:
        service.worker.close()
        service.runtime.close()


def test_a_cloud_joiners_initial_password_goes_to_the_manager_set_at_creation_and_is_kept_nowhere(
    graph: GraphStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lifecycle.mapping.schema import parse_mapping

    text = MAPPING.read_text(encoding="utf-8")
    delivering = text.replace(
        'manager_mail = "{manager_email}", properties',
        'manager_mail = "{manager_email}", deliver_password = true, properties',
    )
    assert delivering != text
    mapping_file = tmp_path / "mapping-password.toml"
    mapping_file.write_text(delivering, encoding="utf-8")
    graph.add_group("All staff", id=GROUP_A)
    graph.add_user("hr@contoso.test", mail="hr@contoso.test")
    overrides = graph_overrides(graph, password_delivery="graph_mail", password_mail_sender="hr@contoso.test")
    settings = make_settings(tmp_path, mapping_file=mapping_file, ad_url="ldaps://192.0.2.1:1", **overrides)
    mailing = make_service(settings, parse_mapping(delivering, str(mapping_file)))
    boss = graph.add_user("boss@contoso.test", mail="boss@contoso.test", display_name="Bo Boss")
    joiner = person("Pat", "Word", manager_email="boss@contoso.test")
    try:
        mailing.accept(delivery("created", joiner))
        assert mailing.settle() == ["completed"]
        audited = repr(audit(mailing, joiner["id"]))
    finally:
        mailing.worker.close()
        mailing.runtime.close()

    user = graph.user("pat.word@contoso.test")
    assert user.manager_id == boss.id
    [mail] = graph.sent_mail
    assert mail["message"]["toRecipients"] == [{"emailAddress": {"address": "boss@contoso.test"}}]
    password = mail["message"]["body"]["content"].split("Initial password: ", 1)[1].split("\n", 1)[0]
    created = next(e for e in graph.log if e.method == "POST" and e.path == "/users" and e.status == 201)
    assert created.body["passwordProfile"] == {"password": password, "forceChangePasswordNextSignIn": True}
    assert password not in audited and password not in caplog.text
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_a_burst_of_cloud_only_leavers_past_the_guards_limit_is_held_and_nothing_of_it_is_deleted(
    graph: GraphStandIn, tmp_path: Path
) -> None:
    from lifecycle.mapping.schema import load_mapping

    graph.add_group("All staff", id=GROUP_A)
    overrides = graph_overrides(graph, guard_max_count=1, guard_window_seconds=3600)
    settings = make_settings(tmp_path, mapping_file=MAPPING, ad_url="ldaps://192.0.2.1:1", **overrides)
    service = make_service(settings, load_mapping(MAPPING))
    try:
        first, second = person("One", "Leaves"), person("Two", "Leaves")
        for user in (first, second):
            service.accept(delivery("created", user))
        assert service.settle() == ["completed", "completed"]
        for user in (first, second):
            service.accept(delivery("updated", {**user, "inactive": True}))
        assert sorted(service.settle()) == ["completed", "held"]
        users = {u["id"]: graph.anchored(f"halo:{u['id']}") for u in (first, second)}
        assert all(u is not None for u in users.values())
        # One leaver ran (soft-deleted); the other is held for an operator, its user untouched and enabled.
        gone = [u for u in users.values() if u is not None and u.id in graph.deleted]
        kept = [u for u in users.values() if u is not None and u.id in graph.users]
        assert len(gone) == 1 and len(kept) == 1 and kept[0].enabled
    finally:
        service.worker.close()
        service.runtime.close()


def test_a_rehire_whose_old_upn_was_taken_meanwhile_is_dead_lettered_with_what_to_free_and_creates_nothing(
    service: Service, graph: GraphStandIn
) -> None:
    kim = person("Kim", "Back")
    service.accept(delivery("created", kim))
    service.accept(delivery("updated", {**kim, "inactive": True}))
    assert service.settle() == ["completed", "completed"]
    graph.add_user("kim.back@contoso.test")  # someone else got the name while Kim was away

    graph.clear_log()
    service.accept(delivery("updated", {**kim, "inactive": False}))
    assert service.settle() == ["dead_lettered"]
    reason = service.runtime.queue.dead_letters()[-1].description
    assert "kim.back@contoso.test cannot be restored" in reason and "then replay" in reason
    assert not any(e.method == "POST" and e.path == "/users" for e in graph.log)
    away = graph.anchored(f"halo:{kim['id']}")
    assert away is not None and away.id in graph.deleted  # still restorable once the name is freed


def test_a_create_whose_answer_was_lost_is_found_by_its_name_although_the_filter_index_lags_and_not_doubled(
    service: Service, graph: GraphStandIn
) -> None:
    # Graph committed the create and answered 503; the anchor filter does not see the new user yet. The next
    # attempt must find it by its UPN (which carries the anchor), not create a second user under the next name.
    graph.lag_new_users = True
    graph.fail("POST", r"^/users$", 503, commit=True)
    lost = person("Lo", "St")
    service.accept(delivery("created", lost))
    assert service.settle()[-1] == "completed"
    creates = [e for e in graph.log if e.method == "POST" and e.path == "/users"]
    assert len(creates) == 1
    assert [u.upn for u in graph.users.values() if u.extra.get("employeeId") == f"halo:{lost['id']}"] == [
        "lo.st@contoso.test"
    ]
