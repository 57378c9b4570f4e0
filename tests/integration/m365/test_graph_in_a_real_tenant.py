"""What a real tenant does that the first Graph target did not expect (issue 15), and cloud-side protection.

Each test here failed on the code before the fix it names: chained writes past 20 ran after a failure, a
synced leaver kept cloud sign-in (test_m365_hybrid.py), replayed removals dead-lettered, throttling and a
silent token endpoint held a worker, and nothing refused a Graph step aimed at a directory-role holder.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lifecycle.errors import Retryable
from lifecycle.targets.graph import GraphClient, Request, client_for
from lifecycle.targets.graph.transport import error_for
from tests.conftest import make_settings
from tests.integration.conftest import delivery
from tests.integration.m365.conftest import GROUP_A, GROUP_B, Service, graph_overrides, picture
from tests.integration.m365.test_graph_target import cloud_user, custom
from tests.standins.graph import E3, F3, SKYPE, SKYPE_KIOSK, TEAMS, VISIO, GraphStandIn, User

pytestmark = pytest.mark.integration


def a_leaver_in_groups(graph: GraphStandIn, count: int) -> tuple[dict[str, Any], User, list[str]]:
    person = cloud_user(graph, "Grace", "Many", customfields=custom(Manager="Alan Turing"))
    account = graph.add_user(
        person["emailaddress"], usage_location="GB", licenses={E3: [], VISIO: []}, photo=b"\xff\xd8old"
    )
    groups = [graph.add_group(f"Team {n:02}") for n in range(count)]
    for group in groups:
        group.members.add(account.id)
    return person, account, sorted(g.id for g in groups)  # memberOf answers in id order


def leave(person: dict[str, Any]) -> dict[str, Any]:
    return delivery("updated", {**person, "inactive": True})


# 1. Chained writes stop at the first failure, across batches ----------------------------------------------
def test_a_leaver_in_25_groups_whose_auto_reply_is_refused_keeps_every_group_licence_and_sign_in(
    cloud: Service, graph: GraphStandIn
) -> None:
    person, account, groups = a_leaver_in_groups(graph, 25)
    graph.fail("PATCH", r"/mailboxSettings$", 403)

    cloud.accept(leave(person))
    assert cloud.settle() == ["dead_lettered"]

    # The auto-reply is the first write of the chain: nothing after it ran, in its batch or the next one.
    assert [(e.method, e.status) for e in graph.writes()] == [("PATCH", 403)]
    assert all(account.id in graph.groups[g].members for g in groups)
    assert account.licenses == {E3: [], VISIO: []}
    assert account.enabled is True and account.photo is not None
    assert "set the automatic reply: access denied" in cloud.runtime.queue.dead_letters()[0].description
    audit = cloud.runtime.store.audit(user_id=person["id"])
    assert [e.outcome for e in audit] == ["dead_lettered"]


def test_a_failure_in_the_second_batch_stops_the_chain_audits_what_was_applied_and_the_next_attempt_finishes(
    cloud: Service, graph: GraphStandIn
) -> None:
    person, account, groups = a_leaver_in_groups(graph, 25)
    # Writes: auto-reply, sign-in, sessions, then 25 group removals: the 22nd removal is the 25th write,
    # in the second batch of 20.
    refused = groups[21]
    graph.fail("DELETE", rf"/groups/{refused}/members/", 403)

    cloud.accept(leave(person))
    assert cloud.settle() == ["dead_lettered"]

    assert [g for g in groups if account.id in graph.groups[g].members] == groups[21:]
    assert account.licenses == {E3: [], VISIO: []}  # the licence step after the failure never ran
    assert account.photo is not None
    assert account.enabled is False and account.sessions_valid_from is not None  # applied before the failure
    audit = {e.action: e for e in cloud.runtime.store.audit(user_id=person["id"])}
    assert audit["set_auto_reply"].outcome == audit["disable_cloud_account"].outcome == "changed"
    partial = audit["remove_from_cloud_groups"]
    assert partial.outcome == "changed"
    assert sorted(c.before for c in partial.changes) == sorted(graph.groups[g].name for g in groups[:21])
    assert "remove_licenses" not in audit

    # The next attempt (the leaver delivered again) plans from what Graph then says: only what is left.
    cloud.accept(leave(person))
    assert cloud.settle() == ["completed"]
    assert not [g for g in groups if account.id in graph.groups[g].members]
    assert account.licenses == {E3: sorted([TEAMS, SKYPE])} and account.photo is None
    second = [e for e in cloud.runtime.store.audit(user_id=person["id"]) if e.action == "remove_from_cloud_groups"]
    assert sorted(c.before for c in second[-1].changes) == sorted(graph.groups[g].name for g in groups[21:])


# 3. Every write that can be replayed after it took effect is idempotent ------------------------------------
# Each write the target sends, answered 503 after it was applied (the request is then sent again, as a
# redelivery would): the step completes, and the effect happens once.
JOINER_WRITES = [
    ("PATCH", r"^/users/[^/]+$", "usageLocation"),
    ("POST", r"/assignLicense$", "licence assigned"),
    ("POST", rf"/groups/{GROUP_A}/members/\$ref$", "member added"),
    ("PUT", r"/photo/\$value$", "photo uploaded"),
]
LEAVER_WRITES = [
    ("PATCH", r"/mailboxSettings$", "auto-reply set"),
    ("PATCH", r"^/users/[^/]+$", "sign-in blocked"),
    ("POST", r"/revokeSignInSessions$", "sessions revoked"),
    ("DELETE", r"/members/[^/]+/\$ref$", "member removed"),
    ("POST", r"/assignLicense$", "licence removed"),
    ("DELETE", r"/photo/\$value$", "photo removed"),
]


@pytest.mark.parametrize(("method", "pattern", "what"), JOINER_WRITES, ids=[w[2] for w in JOINER_WRITES])
def test_a_joiner_write_applied_before_a_503_is_sent_again_and_the_step_completes(
    cloud: Service, graph: GraphStandIn, method: str, pattern: str, what: str
) -> None:
    graph.add_group("All staff", id=GROUP_A)
    graph.add_group("Sales", id=GROUP_B)
    from tests.integration.m365.conftest import b64

    person = cloud_user(graph, "Re", "Play", photo_base64=b64(picture(120, 160, noisy=False)))
    account = graph.add_user(person["emailaddress"])
    graph.fail(method, pattern, 503, commit=True)

    cloud.accept(delivery("created", person))
    assert cloud.settle() == ["completed"]

    assert graph.pending_faults() == 0
    assert account.usage_location == "GB" and account.licenses == {E3: sorted(["5dbe027f-2339-4123-9542-606e4d348a72"])}
    assert account.id in graph.groups[GROUP_A].members and account.photo is not None


@pytest.mark.parametrize(("method", "pattern", "what"), LEAVER_WRITES, ids=[w[2] for w in LEAVER_WRITES])
def test_a_leaver_write_applied_before_a_503_is_sent_again_and_the_step_completes(
    cloud: Service, graph: GraphStandIn, method: str, pattern: str, what: str
) -> None:
    person, account, groups = a_leaver_in_groups(graph, 1)
    graph.fail(method, pattern, 503, commit=True)

    cloud.accept(leave(person))
    assert cloud.settle() == ["completed"]

    assert graph.pending_faults() == 0
    replayed = [e for e in graph.log if e.method == method and e.status != 503 and e.is_write]
    assert replayed, f"the {what} write was not sent again"
    assert account.licenses == {E3: sorted([TEAMS, SKYPE])} and account.enabled is False
    assert account.id not in graph.groups[groups[0]].members and account.photo is None


# 5. Bounded waits ----------------------------------------------------------------------------------------
@pytest.fixture
def client(graph: GraphStandIn, tmp_path: Path) -> Iterator[GraphClient]:
    settings = make_settings(tmp_path, **graph_overrides(graph, graph_timeout_seconds=1.0, graph_max_retries=3))
    yield client_for(settings)


def bounded(call: Any) -> Any:
    """Run ``call`` in a thread; a call that still runs after 20 s fails the test (instead of hanging it)."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=20)
    finally:
        pool.shutdown(wait=False)  # a call that hangs must not hang the test with it


def test_a_long_retry_after_is_handed_back_as_a_rescheduled_retry_and_never_slept(
    client: GraphClient, graph: GraphStandIn
) -> None:
    graph.fail("GET", r"^/subscribedSkus$", 429, retry_after=120)
    request = client.request(client.sdk.subscribed_skus.to_get_request_information())

    answer = bounded(lambda: client.send(request))

    assert answer.status == 429
    assert [e.status for e in graph.log if e.path == "/subscribedSkus"] == [429]  # not resent in place
    error = error_for(answer, "read subscribedSkus")
    assert isinstance(error, Retryable) and error.retry_after == 120


def test_a_short_retry_after_is_waited_for_in_place(client: GraphClient, graph: GraphStandIn) -> None:
    graph.fail("GET", r"^/subscribedSkus$", 429, retry_after=0, times=2)

    answer = bounded(lambda: client.send(client.request(client.sdk.subscribed_skus.to_get_request_information())))

    assert answer.ok
    assert [e.status for e in graph.log if e.path == "/subscribedSkus"] == [429, 429, 200]


def test_a_token_endpoint_that_never_answers_is_a_retryable_error_within_the_timeout(
    client: GraphClient, graph: GraphStandIn
) -> None:
    graph.stall(r"/oauth2/v2\.0/token$")
    with pytest.raises(Retryable):
        bounded(lambda: client.send(Request("GET", "/subscribedSkus")))


def test_a_graph_call_that_never_answers_is_a_retryable_error_within_the_timeout(
    client: GraphClient, graph: GraphStandIn
) -> None:
    graph.stall(r"^/v1\.0/subscribedSkus$")
    with pytest.raises(Retryable, match="no answer within"):
        bounded(lambda: client.send(Request("GET", "/subscribedSkus")))


# Issue 14, item 3: cloud-side protection -------------------------------------------------------------------
def test_a_graph_step_aimed_at_a_directory_role_holder_is_refused_audited_and_writes_nothing(
    cloud: Service, graph: GraphStandIn
) -> None:
    person, account, groups = a_leaver_in_groups(graph, 2)
    graph.add_role("Global Administrator", account)

    cloud.accept(leave(person))
    assert cloud.settle() == ["refused"]

    assert graph.writes() == []
    assert account.enabled is True and all(account.id in graph.groups[g].members for g in groups)
    [entry] = cloud.runtime.store.audit(user_id=person["id"])
    assert entry.outcome == "refused" and entry.action == "set_auto_reply"
    assert "holds the directory role 'Global Administrator'" in entry.message


def test_a_user_or_group_rendered_from_halo_outside_the_allow_list_or_protected_is_refused(
    cloud: Service, graph: GraphStandIn
) -> None:
    # A Halo agent points the e-mail field at someone in another domain: not within cloud_users_allowed.
    outsider = cloud_user(graph, "Eve", "Outside")
    outsider["emailaddress"] = "ceo@fabrikam.test"
    graph.add_user("ceo@fabrikam.test", usage_location="GB", licenses={E3: []})
    cloud.accept(leave(outsider))
    assert cloud.settle() == ["refused"]
    [entry] = cloud.runtime.store.audit(user_id=outsider["id"])
    assert entry.outcome == "refused" and "not within safety.cloud_users_allowed" in entry.message

    # A custom field names a role-assignable group (its id within the allow-list): refused all the same.
    admins = graph.add_group("Tier 0 admins", id="0a1b2c3d-0000-4000-8000-0000000000ad", role_assignable=True)
    graph.add_group("Sales", id=GROUP_B)
    joiner = cloud_user(graph, "Mal", "Lory", customfields=custom(group_a=admins.id))
    graph.add_user(joiner["emailaddress"], usage_location="GB")
    cloud.accept(delivery("created", joiner))
    assert cloud.settle() == ["refused"]
    refusal = next(e for e in cloud.runtime.store.audit(user_id=joiner["id"]) if e.outcome == "refused")
    assert "role-assignable" in refusal.message
    assert graph.writes() == [e for e in graph.writes() if "/members/" not in e.path]


def test_remove_from_all_cloud_groups_skips_role_assignable_groups_and_the_group_that_carries_the_kept_licence(
    cloud: Service, graph: GraphStandIn
) -> None:
    person = cloud_user(graph, "Kay", "Keeps")
    account = graph.add_user(person["emailaddress"], usage_location="GB", licenses={VISIO: []})
    licensing = graph.add_group("E3 users")
    account.group_licenses[E3] = licensing.id
    graph.provision_mailbox(account.upn)  # E3 carries the mailbox
    other = graph.add_group("Project X")
    tier0 = graph.add_group("Helpdesk operators", role_assignable=True)
    for group in (licensing, other, tier0):
        group.members.add(account.id)

    cloud.accept(leave(person))
    assert cloud.settle() == ["completed"]

    # The mapping keeps SPE_E3 (remove_licenses keep): its group stays, so the mailbox keeps answering.
    assert account.id in licensing.members and account.id not in other.members
    # A role-assignable group's members are an administrator's to change: left, with the reason.
    assert account.id in tier0.members
    entry = next(e for e in cloud.runtime.store.audit(user_id=person["id"]) if e.action == "remove_from_cloud_groups")
    assert "E3 users: assigns SPE_E3, which the mapping keeps" in entry.message
    assert "Helpdesk operators: role-assignable" in entry.message


# Auto-reply schedules: UTC on the wire, the step's zone kept, a past end refused -------------------------
def test_a_schedule_in_a_local_zone_is_sent_in_utc_compared_in_utc_and_a_past_end_is_refused(
    cloud: Service, graph: GraphStandIn
) -> None:
    person = cloud_user(
        graph,
        "Zoe",
        "Zone",
        customfields=custom(
            leave_start="2030-07-01T09:00:00", leave_end="2030-08-01T17:30:00", leave_zone="Europe/London"
        ),
    )
    graph.add_user(person["emailaddress"], usage_location="GB", licenses={E3: []})
    cloud.accept(leave(person))
    assert cloud.settle() == ["completed"]
    reply = next(e.body for e in graph.writes() if e.path.endswith("/mailboxSettings"))["automaticRepliesSetting"]
    # British Summer Time is UTC+1: 09:00 in London is 08:00 UTC.
    assert reply["scheduledStartDateTime"] == {"dateTime": "2030-07-01T08:00:00", "timeZone": "UTC"}
    assert reply["scheduledEndDateTime"] == {"dateTime": "2030-08-01T16:30:00", "timeZone": "UTC"}
    entry = next(e for e in cloud.runtime.store.audit(user_id=person["id"]) if e.action == "set_auto_reply")
    assert "(Europe/London)" in entry.message

    # Exchange answers the schedule in UTC: a second delivery finds nothing to change.
    graph.clear_log()
    cloud.accept(leave(person))
    assert cloud.settle() == ["completed"]
    assert graph.writes() == []

    late = cloud_user(
        graph, "Lee", "Late", customfields=custom(leave_start="2020-01-01T09:00:00", leave_end="2020-01-02T09:00:00")
    )
    graph.add_user(late["emailaddress"], usage_location="GB", licenses={E3: []})
    cloud.accept(leave(late))
    assert cloud.settle() == ["dead_lettered"]
    assert "which has passed" in cloud.runtime.queue.dead_letters()[-1].description


# Plans and SKUs: F-SKU and Gov names, a SKU bought after start, licences in error ---------------------------
def test_a_frontline_f3_mover_loses_teams_and_the_kiosk_skype_plan_and_keeps_its_kiosk_mailbox(
    cloud: Service, graph: GraphStandIn
) -> None:
    graph.add_group("All staff", id=GROUP_A)
    graph.add_group("Sales", id=GROUP_B)
    person = cloud_user(graph, "Fran", "Frontline")
    account = graph.add_user(person["emailaddress"], usage_location="GB", licenses={F3: []})
    assert account.mailbox is not None  # EXCHANGE_S_DESKLESS carries a mailbox

    cloud.accept(delivery("created", person))
    cloud.accept(delivery("updated", {**person, "department": "Stores"}))  # a mover: ..., disable_teams
    assert cloud.settle() == ["completed", "completed"]

    # disable_teams names TEAMS1, MCOSTANDARD, MCOIMP and the Gov plans: those the F3 SKU has are disabled.
    assert account.licenses[F3] == sorted([TEAMS, SKYPE_KIOSK])
    assert account.mailbox is not None


def test_a_licence_in_error_is_reported_and_a_sku_bought_after_start_is_found(
    client: GraphClient, graph: GraphStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lifecycle.targets.graph import licences
    from lifecycle.targets.graph.state import CloudUser

    catalog = licences.catalog_for(client)
    assert catalog.resolve_names(["SPE_E3"], [])[0] == {"SPE_E3": E3}
    bought = "7a1b2c3d-0000-4000-8000-00000000b0b0"
    graph.skus.append({"skuId": bought, "skuPartNumber": "NEW_SKU", "servicePlans": []})
    # Read a moment ago without it: looked for again after the refresh interval, not dead-lettered.
    with pytest.raises(Retryable) as later:
        catalog.resolve_names(["NEW_SKU"], [])
    assert later.value.retry_after is not None and later.value.retry_after <= licences.REFRESH_SECONDS
    monkeypatch.setattr(licences, "REFRESH_SECONDS", 0.0)
    assert catalog.resolve_names(["NEW_SKU"], [])[0] == {"NEW_SKU": bought}

    user = graph.add_user("err@contoso.test", usage_location="GB", group_licenses={E3: "g-1"})
    user.license_errors[E3] = "CountViolation"
    answer = client.send(client.request(client.sdk.users.by_user_id(user.id).to_get_request_information()))
    assert CloudUser.from_json(answer.body).licence_errors == [f"{E3} (group g-1): Error CountViolation"]


@pytest.mark.parametrize("disable_dependents", [False, True])
def test_disabling_a_plan_another_needs_fails_naming_it_or_disables_it_too_as_the_mapping_says(
    graph: GraphStandIn, tmp_path: Path, disable_dependents: bool
) -> None:
    from lifecycle.mapping.schema import load_mapping
    from tests.conftest import EVENTS
    from tests.integration.m365.conftest import make_service
    from tests.standins.graph import WEB, WEB_OFFICE, WEB_SHAREPOINT

    text = (EVENTS / "mapping-m365-cloud.toml").read_text(encoding="utf-8")
    step = (
        '{ action = "assign_licenses", user = "{emailaddress}", usage_location = "GB", skus = [{ sku = "O365_WEB", '
        f'disabled_plans = ["SHAREPOINTSTANDARD"], disable_dependents = {str(disable_dependents).lower()} }}] }}'
    )
    text = text[: text.index("joiner = [")] + f"joiner = [\n  {step},\n]\n" + text[text.index("mover = [") :]
    path = tmp_path / "mapping.toml"
    path.write_text(text, encoding="utf-8")
    service = make_service(make_settings(tmp_path, mapping_file=path, **graph_overrides(graph)), load_mapping(path))
    try:
        person = cloud_user(graph, "Dee", "Pendent")
        account = graph.add_user(person["emailaddress"], usage_location="GB")
        service.accept(delivery("created", person))
        if disable_dependents:
            assert service.settle()[-1] == "completed"
            assert account.licenses == {WEB: sorted([WEB_SHAREPOINT, WEB_OFFICE])}
        else:
            assert service.settle() == ["dead_lettered"]
            reason = service.runtime.queue.dead_letters()[-1].description
            assert "SHAREPOINTWAC depend on it" in reason and "disable_dependents" in reason
            assert account.licenses == {}
    finally:
        service.worker.close()
        service.runtime.close()
