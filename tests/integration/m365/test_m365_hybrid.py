"""Joiners and leavers across a real AD (Samba, with the Exchange and Lync schema) and the Graph stand-in.

The AD-side actions (hybrid remote mailbox, on-premises Lync, thumbnailPhoto) write real LDAP; the cloud user
appears only when the test plays directory sync, as Entra Connect would minutes after the AD create.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3  # type: ignore[import-untyped]
import pytest

from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import load_mapping
from tests.conftest import EVENTS
from tests.integration.conftest import admin_connection, dc_settings, delivery, new_user
from tests.integration.m365.conftest import GROUP_A, Service, b64, graph_overrides, make_service, picture
from tests.standins.graph import E3, SHAREPOINT, SKYPE, TEAMS, GraphStandIn

pytestmark = pytest.mark.integration


@pytest.fixture
def hybrid(directory: DCInfo, graph: GraphStandIn, tmp_path: Path) -> Iterator[Service]:
    mapping = load_mapping(EVENTS / "mapping-m365.toml")
    service = make_service(dc_settings(directory, tmp_path, **graph_overrides(graph)), mapping)
    yield service
    service.worker.close()
    service.runtime.close()


@pytest.fixture
def ldap(directory: DCInfo) -> Iterator[Any]:
    conn = admin_connection(directory)
    yield conn
    conn.unbind()


def account(ldap: Any, info: DCInfo, user_id: int) -> dict[str, Any]:
    wanted = f"(|(employeeID=halo:{user_id})(employeeID={user_id}))"  # namespaced by the example, bare by others
    ldap.search(info.base_dn, wanted, ldap3.SUBTREE, attributes=[ldap3.ALL_ATTRIBUTES])
    entries = [e for e in ldap.response if e.get("type") == "searchResEntry"]
    assert len(entries) == 1
    found: dict[str, Any] = {k.lower(): v for k, v in entries[0]["raw_attributes"].items()}
    found["dn"] = entries[0]["dn"]
    return found


def text(entry: dict[str, Any], name: str) -> list[str]:
    return [v.decode() for v in entry.get(name.lower(), [])]


def sync_to_cloud(graph: GraphStandIn, entry: dict[str, Any], **fields: Any) -> Any:
    """What Entra Connect does minutes after the AD create: the cloud user, matched by UPN and objectGUID."""
    guid = entry["objectguid"][0]
    return graph.add_user(
        text(entry, "userPrincipalName")[0],
        synced=True,
        immutable_id=base64.b64encode(guid).decode(),
        **fields,
    )


def joiner(
    hybrid: Service, graph: GraphStandIn, ldap: Any, info: DCInfo, person: dict[str, Any]
) -> tuple[dict[str, Any], Any]:
    graph.add_group("All staff", id=GROUP_A) if GROUP_A not in graph.groups else None
    hybrid.accept(delivery("created", person))
    # The AD steps run; the Graph steps wait for directory sync (rescheduled, not failed).
    assert set(hybrid.settle(until=lambda: any(e.status == 404 for e in graph.log))) <= {"retry"}
    entry = account(ldap, info, person["id"])
    cloud = sync_to_cloud(graph, entry)
    assert hybrid.settle()[-1] == "completed"
    return account(ldap, info, person["id"]), cloud


def test_a_joiner_gets_a_remote_mailbox_and_photo_in_ad_then_its_licence_once_the_cloud_user_is_synced(
    hybrid: Service, graph: GraphStandIn, ldap: Any, directory: DCInfo
) -> None:
    photo = picture(400, 400)
    assert len(photo) > 400_000  # noise compresses badly: far above the 100 KB AD takes
    person = new_user("Hedy", "Lamarr", photo_base64=b64(photo))
    entry, cloud = joiner(hybrid, graph, ldap, directory, person)

    sam = text(entry, "sAMAccountName")[0]
    mail = text(entry, "mail")[0]
    assert text(entry, "mailNickname") == [sam]
    assert text(entry, "targetAddress") == [f"SMTP:{sam}@contoso.mail.onmicrosoft.com"]
    assert set(text(entry, "proxyAddresses")) == {f"SMTP:{mail}", f"smtp:{sam}@contoso.mail.onmicrosoft.com"}
    assert text(entry, "msExchRecipientTypeDetails") == ["2147483648"]
    assert text(entry, "msExchRecipientDisplayType") == ["-2147483642"]
    assert text(entry, "msExchRemoteRecipientType") == ["1"]
    thumbnail = entry["thumbnailphoto"][0]
    assert thumbnail[:3] == b"\xff\xd8\xff" and len(thumbnail) <= 100 * 1024

    from PIL import Image

    assert Image.open(io.BytesIO(thumbnail)).size == (96, 96)
    assert cloud.usage_location == "GB" and cloud.licenses == {E3: [SHAREPOINT]}
    assert cloud.photo is not None and Image.open(io.BytesIO(cloud.photo)).size == (400, 400)  # never enlarged
    assert cloud.id in graph.groups[GROUP_A].members

    # A second delivery of the same state: AD and Graph are read, nothing is written.
    graph.clear_log()
    hybrid.accept(delivery("created", person))
    assert hybrid.settle() == ["completed"]
    assert graph.writes() == []
    again = account(ldap, directory, person["id"])
    assert again["usnchanged"] == entry["usnchanged"]


def test_a_hybrid_leaver_keeps_mail_flowing_disables_lync_is_blocked_in_entra_too_then_loses_its_sessions(
    hybrid: Service, graph: GraphStandIn, ldap: Any, directory: DCInfo
) -> None:
    person = new_user("Katherine", "Johnson", customfields=[{"name": "Manager", "value": "Dorothy Vaughan"}])
    entry, cloud = joiner(hybrid, graph, ldap, directory, person)
    sip = f"sip:{text(entry, 'mail')[0]}"
    ldap.modify(
        entry["dn"],
        {
            "msRTCSIP-PrimaryUserAddress": [(ldap3.MODIFY_REPLACE, [sip])],
            "msRTCSIP-UserEnabled": [(ldap3.MODIFY_REPLACE, ["TRUE"])],
        },
    )
    teams = [graph.add_group(f"Project {n}") for n in range(10)]
    for group in teams:
        group.members.add(cloud.id)

    graph.clear_log()
    hybrid.accept(delivery("updated", {**person, "inactive": True}))
    assert hybrid.settle() == ["completed"]

    left = account(ldap, directory, person["id"])
    # The cloud mailbox is kept for its auto-reply: the remote-mailbox attributes that route mail to it stay.
    for name in ("mailNickname", "targetAddress", "proxyAddresses", "msExchRemoteRecipientType"):
        assert text(left, name) == text(entry, name), name
    assert "thumbnailphoto" not in left
    assert text(left, "msRTCSIP-UserEnabled") == ["FALSE"]
    assert text(left, "msRTCSIP-PrimaryUserAddress") == [sip]  # kept, unlike Disable-CsUser
    assert cloud.licenses == {E3: sorted([SHAREPOINT, TEAMS, SKYPE])}
    assert cloud.sessions_valid_from is not None
    assert all(cloud.id not in g.members for g in teams)
    assert cloud.photo is None
    reply = next(e.body for e in graph.writes() if e.path.endswith("/mailboxSettings"))["automaticRepliesSetting"]
    assert reply["internalReplyMessage"] == "Katherine Johnson has left the company. Please contact Dorothy Vaughan."
    # Blocked in Entra as well as in AD (with password hash sync the leaver could sign in until the next
    # sync), and only then are the sessions revoked, so none can be issued in between.
    assert cloud.enabled is False
    writes = [(e.method, e.path) for e in graph.writes()]
    blocked = writes.index(("PATCH", f"/users/{cloud.id}"))
    assert [e.body for e in graph.writes()][blocked]["accountEnabled"] is False
    assert blocked < writes.index(("POST", f"/users/{cloud.id}/revokeSignInSessions"))
    leaver_requests = len(graph.http_requests())
    assert leaver_requests <= 3
    print(f"\nGraph requests per hybrid leaver (auto-reply, sessions, 11 groups, licences, photo): {leaver_requests}")

    # A second delivery of the leaver writes nothing.
    graph.clear_log()
    hybrid.accept(delivery("updated", {**person, "inactive": True}))
    assert hybrid.settle() == ["completed"]
    assert graph.writes() == []
    assert account(ldap, directory, person["id"])["usnchanged"] == left["usnchanged"]


def test_an_oversized_or_non_image_photo_is_a_permanent_error_with_a_clear_reason(
    directory: DCInfo, graph: GraphStandIn, tmp_path: Path
) -> None:
    mapping = load_mapping(EVENTS / "mapping-m365.toml")
    service = make_service(dc_settings(directory, tmp_path, **graph_overrides(graph, photo_max_bytes=200_000)), mapping)
    try:
        not_image = new_user("Text", "Photo", photo_base64=b64(b"this is not a picture at all"))
        service.accept(delivery("created", not_image))
        assert service.settle() == ["dead_lettered"]
        assert "the photo is not an image" in service.runtime.queue.dead_letters()[-1].description

        huge = new_user("Huge", "Photo", photo_base64=b64(picture(300, 300)))
        service.accept(delivery("created", huge))
        assert service.settle() == ["dead_lettered"]
        assert (
            "larger than 200000 bytes (LIFECYCLE_PHOTO_MAX_BYTES)"
            in service.runtime.queue.dead_letters()[-1].description
        )
    finally:
        service.worker.close()
        service.runtime.close()


def test_the_cloud_user_is_found_by_object_guid_and_a_sync_that_never_comes_fails_with_a_reason(
    directory: DCInfo, graph: GraphStandIn, ldap: Any, tmp_path: Path
) -> None:
    mapping = load_mapping(EVENTS / "mapping-m365.toml")
    service = make_service(
        dc_settings(directory, tmp_path, **graph_overrides(graph, graph_match="immutable_id")), mapping
    )
    try:
        person = new_user("Guid", "Matched")
        graph.add_group("All staff", id=GROUP_A)
        service.accept(delivery("created", person))
        service.settle(until=lambda: any("onPremisesImmutableId" in e.query for e in graph.log))
        entry = account(ldap, directory, person["id"])
        # Synced under another UPN: only the objectGUID links the two.
        guid = entry["objectguid"][0]
        cloud = graph.add_user("renamed@contoso.test", synced=True, immutable_id=base64.b64encode(guid).decode())
        assert str(uuid.UUID(bytes_le=guid))
        assert service.settle()[-1] == "completed"
        assert cloud.licenses == {E3: [SHAREPOINT]}
    finally:
        service.worker.close()
        service.runtime.close()

    impatient = make_service(
        dc_settings(directory, tmp_path / "2", **graph_overrides(graph, graph_sync_wait_seconds=0.001)), mapping
    )
    try:
        person = new_user("Never", "Synced")
        impatient.accept(delivery("created", person))
        assert impatient.settle()[-1] == "dead_lettered"
        reason = impatient.runtime.queue.dead_letters()[-1].description
        assert "no cloud user" in reason and "directory sync" in reason
        assert account(ldap, directory, person["id"])  # the AD account is there
    finally:
        impatient.worker.close()
        impatient.runtime.close()


def test_a_joiners_password_is_mailed_through_graph_and_never_stored_logged_or_audited(
    directory: DCInfo, graph: GraphStandIn, ldap: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sender = graph.add_user("it-accounts@contoso.test")
    mapping = load_mapping(EVENTS / "mapping-m365.toml")
    overrides = graph_overrides(
        graph,
        password_delivery="graph_mail",
        password_mail_sender=sender.upn,
        password_mail_fallback="service-desk@contoso.test",
    )
    service = make_service(dc_settings(directory, tmp_path, **overrides), mapping)
    graph.add_group("All staff", id=GROUP_A)
    person = new_user("Pass", "Word")
    try:
        service.accept(delivery("created", person))
        service.settle(until=lambda: bool(graph.sent_mail))
    finally:
        service.worker.close()
        service.runtime.close()
    assert len(graph.sent_mail) == 1
    mail = graph.sent_mail[0]["message"]
    assert mail["toRecipients"] == [{"emailAddress": {"address": "service-desk@contoso.test"}}]
    password = mail["body"]["content"].split("Initial password: ", 1)[1].split("\n", 1)[0]
    assert len(password) == 20
    # The password works (the account was created with it) ...
    entry = account(ldap, directory, person["id"])
    check = ldap3.Connection(ldap.server, text(entry, "userPrincipalName")[0], password, raise_exceptions=False)
    check.bind()
    # "data 773": right password, must be changed at first sign-in (a wrong one is "data 52e").
    assert check.result["result"] == 0 or "data 773" in str(check.result.get("message"))
    # ... and is nowhere else: not in the log, the store (journal, audit) or the queue.
    assert password not in caplog.text
    for file in (tmp_path / "data").glob("*"):
        assert password.encode() not in file.read_bytes(), file


def test_create_remote_mailbox_keeps_an_existing_remote_mailbox_and_refuses_an_on_premises_one(
    hybrid: Service, graph: GraphStandIn, ldap: Any, directory: DCInfo
) -> None:
    person = new_user("Mary", "Jackson")
    entry, _ = joiner(hybrid, graph, ldap, directory, person)
    # Exchange converted it to a remote shared mailbox (migrated: msExchRemoteRecipientType 100).
    shared = {"msExchRecipientTypeDetails": "34359738368", "msExchRemoteRecipientType": "100"}
    ldap.modify(entry["dn"], {k: [(ldap3.MODIFY_REPLACE, [v])] for k, v in shared.items()})
    before = account(ldap, directory, person["id"])

    hybrid.accept(delivery("created", person))
    assert hybrid.settle() == ["completed"]
    after = account(ldap, directory, person["id"])
    assert {k: text(after, k) for k in shared} == {k: [v] for k, v in shared.items()}  # not reset to 1
    assert after["usnchanged"] == before["usnchanged"]

    # An account whose mailbox lives on-premises (UserMailbox) gets no second, cloud mailbox.
    ldap.modify(entry["dn"], {"msExchRecipientTypeDetails": [(ldap3.MODIFY_REPLACE, ["1"])]})
    hybrid.accept(delivery("created", person))
    assert hybrid.settle() == ["dead_lettered"]
    assert "has an on-premises mailbox" in hybrid.runtime.queue.dead_letters()[-1].description
