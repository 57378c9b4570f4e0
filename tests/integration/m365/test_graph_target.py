"""Microsoft 365 steps through the real msgraph-sdk and msal against the Graph/Entra stand-in (cloud-only users).

Every step of the mapping used here names its cloud user ("{emailaddress}"), so no AD is needed; the hybrid
paths and the AD-side actions are in test_m365_hybrid.py.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest

from lifecycle.errors import ConfigurationError, Permanent
from lifecycle.mapping.schema import load_mapping
from lifecycle.settings import Settings
from lifecycle.targets.graph import PasswordMailer, Request, client_for
from tests.conftest import EVENTS, make_settings
from tests.integration.conftest import delivery, new_user
from tests.integration.m365.conftest import (
    CLIENT_ID,
    GROUP_A,
    GROUP_B,
    Service,
    graph_overrides,
    make_service,
    picture,
)
from tests.standins.graph import E3, EXCHANGE, SHAREPOINT, SKYPE, TEAMS, VISIO, GraphStandIn

pytestmark = pytest.mark.integration


def cloud_user(graph: GraphStandIn, first: str, last: str, **fields: Any) -> dict[str, Any]:
    user = new_user(first, last, emailaddress=f"{first}.{last}@contoso.test".lower(), **fields)
    return user


def custom(**values: str) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in values.items()]


def successes(graph: GraphStandIn, method: str, suffix: str) -> int:
    return sum(1 for e in graph.log if e.method == method and e.path.endswith(suffix) and 200 <= e.status < 300)


def test_a_joiner_gets_usage_location_first_then_the_mapped_licence_and_a_second_delivery_writes_nothing(
    cloud: Service, graph: GraphStandIn
) -> None:
    graph.add_group("All staff", id=GROUP_A)
    graph.add_group("Sales", id=GROUP_B)
    person = cloud_user(graph, "Ada", "Lovelace")
    cloud_account = graph.add_user(person["emailaddress"])
    assert cloud_account.usage_location is None

    cloud.accept(delivery("created", person))
    assert cloud.settle() == ["completed"]

    assert cloud_account.usage_location == "GB"
    assert cloud_account.licenses == {E3: [SHAREPOINT]}
    assert cloud_account.id in graph.groups[GROUP_A].members and cloud_account.id in graph.groups[GROUP_B].members
    writes = [(e.method, e.path) for e in graph.writes()]
    # usageLocation is set before the licence (Graph refuses a licence without it), in one chained batch.
    assert writes.index(("PATCH", f"/users/{cloud_account.id}")) < writes.index(
        ("POST", f"/users/{cloud_account.id}/assignLicense")
    )
    joiner_requests = len(graph.http_requests())
    # One read batch, one write batch, and (once per process) the tenant's SKU names.
    assert joiner_requests <= 3, [(e.method, e.path) for e in graph.http_requests()]
    print(f"\nGraph requests per joiner (first of the process): {joiner_requests}")

    # The same state in a new delivery: read, find nothing to change, write nothing.
    graph.clear_log()
    cloud.accept(delivery("created", person))
    assert cloud.settle() == ["completed"]
    assert graph.writes() == []
    assert len(graph.http_requests()) == 1
    print(f"Graph requests per repeated joiner: {len(graph.http_requests())}")


def test_a_leaver_loses_licences_teams_sessions_groups_and_sign_in_and_keeps_an_auto_reply_in_few_requests(
    cloud: Service, graph: GraphStandIn
) -> None:
    person = cloud_user(graph, "Grace", "Leaver", customfields=custom(Manager="Alan Turing"))
    account = graph.add_user(
        person["emailaddress"], usage_location="GB", licenses={E3: [], VISIO: []}, photo=b"\xff\xd8old"
    )
    groups = [graph.add_group(f"Team {n}") for n in range(10)]
    dynamic = graph.add_group("Everyone (dynamic)", group_types=["DynamicMembership"], membership_rule="true")
    synced = graph.add_group("Synced from AD", synced=True)
    for group in [*groups, dynamic, synced]:
        group.members.add(account.id)
    assert account.mailbox is not None

    cloud.accept(delivery("updated", {**person, "inactive": True}))
    assert cloud.settle() == ["completed"]

    # Visio goes; the licence with the mailbox stays, without Teams and Skype (the cloud "disable Lync").
    assert account.licenses == {E3: sorted([TEAMS, SKYPE])}
    assert account.mailbox is not None
    assert account.sessions_valid_from is not None
    assert account.enabled is False
    assert account.photo is None
    assert all(account.id not in g.members for g in groups)
    # Groups Graph cannot change are reported, not fought.
    assert account.id in dynamic.members and account.id in synced.members
    audit = {e.action: e for e in cloud.runtime.store.audit(user_id=person["id"])}
    assert "dynamic membership" in audit["remove_from_cloud_groups"].message
    assert "synced from on-premises AD" in audit["remove_from_cloud_groups"].message
    leaver_requests = graph.http_requests()
    assert len(leaver_requests) <= 3, [(e.method, e.path) for e in leaver_requests]
    print(
        f"\nGraph requests per leaver (licences, Teams, sessions, auto-reply, 12 groups, photo): {len(leaver_requests)}"
    )
    # The auto-reply was written before the licence went (the licence takes the mailbox with it).
    writes = [e.path for e in graph.writes()]
    assert writes.index(f"/users/{account.id}/mailboxSettings") < writes.index(f"/users/{account.id}/assignLicense")
    reply = next(e.body for e in graph.writes() if e.path.endswith("/mailboxSettings"))["automaticRepliesSetting"]
    assert reply["status"] == "alwaysEnabled"
    assert reply["internalReplyMessage"] == "Grace Leaver has left; please contact Alan Turing."

    graph.clear_log()
    cloud.accept(delivery("updated", {**person, "inactive": True}))
    assert cloud.settle() == ["completed"]
    assert graph.writes() == []


def test_a_scheduled_auto_reply_is_set_once_although_exchange_answers_with_html(
    cloud: Service, graph: GraphStandIn
) -> None:
    person = cloud_user(
        graph,
        "Sched",
        "Uled",
        customfields=custom(leave_start="2030-01-01T08:00:00Z", leave_end="2030-02-01T08:00:00Z"),
    )
    account = graph.add_user(person["emailaddress"], usage_location="GB", licenses={E3: []})
    cloud.accept(delivery("updated", {**person, "inactive": True}))
    assert cloud.settle() == ["completed"]
    reply = next(e.body for e in graph.writes() if e.path.endswith("/mailboxSettings"))["automaticRepliesSetting"]
    assert reply["status"] == "scheduled"
    assert reply["scheduledStartDateTime"] == {"dateTime": "2030-01-01T08:00:00", "timeZone": "UTC"}
    assert account.mailbox is not None
    stored = account.mailbox["automaticRepliesSetting"]
    assert stored["internalReplyMessage"].startswith("<html>")  # as Exchange keeps it

    # A second delivery compares what a reader sees (text, times), not markup: nothing is written.
    graph.clear_log()
    cloud.accept(delivery("updated", {**person, "inactive": True}))
    assert cloud.settle() == ["completed"]
    assert graph.writes() == []


def test_a_429_storm_with_retry_after_ends_in_exactly_one_licence_assignment(
    cloud: Service, graph: GraphStandIn
) -> None:
    person = cloud_user(graph, "Storm", "Trooper")
    account = graph.add_user(person["emailaddress"], usage_location="GB")
    graph.add_group("All staff", id=GROUP_A)
    graph.add_group("Sales", id=GROUP_B)
    # The whole batch throttled once (the middleware waits Retry-After), then the licence three times in a row.
    graph.fail("POST", r"^/\$batch$", 429, times=1, retry_after=1)
    graph.fail("POST", r"/assignLicense$", 429, times=3, retry_after=1)

    cloud.accept(delivery("created", person))
    outcomes = cloud.settle()

    assert outcomes[-1] == "completed" and "retry" in outcomes
    assert graph.pending_faults() == 0
    assert account.licenses == {E3: [SHAREPOINT]}
    assert successes(graph, "POST", "/assignLicense") == 1
    assert [e.status for e in graph.log if e.path.endswith("/assignLicense")] == [429, 429, 429, 200]


def test_a_503_after_a_committed_post_ends_in_exactly_one_membership_and_one_licence(
    graph: GraphStandIn, tmp_path: Path
) -> None:
    mapping = load_mapping(EVENTS / "mapping-m365-cloud.toml")
    cloud = make_service(make_settings(tmp_path, **graph_overrides(graph, graph_max_retries=3)), mapping)
    person = cloud_user(graph, "Twice", "Posted")
    account = graph.add_user(person["emailaddress"], usage_location="GB")
    graph.add_group("All staff", id=GROUP_A)
    graph.add_group("Sales", id=GROUP_B)
    graph.fail("POST", GROUP_A + r"/members/\$ref$", 503, commit=True)
    graph.fail("POST", r"/assignLicense$", 503, commit=True)

    cloud.accept(delivery("created", person))
    assert cloud.settle() == ["completed"]

    assert graph.groups[GROUP_A].members == {account.id}
    assert account.licenses == {E3: [SHAREPOINT]}
    member_adds = [e.status for e in graph.log if e.path == f"/groups/{GROUP_A}/members/$ref"]
    # Committed, answered 503, resent: "already exists" is the desired state, not a failure.
    assert member_adds == [503, 400]
    assert [e.status for e in graph.log if e.path.endswith("/assignLicense")] == [503, 200]
    cloud.worker.close()
    cloud.runtime.close()


def test_dynamic_synced_and_mail_enabled_groups_are_reported_as_not_manageable_and_not_retried(
    cloud: Service, graph: GraphStandIn
) -> None:
    # Ids within the mapping's safety.cloud_groups_allowed: the test is about what Graph cannot change.
    dynamic = graph.add_group(
        "Dynamic",
        id="0a1b2c3d-0000-4000-8000-0000000000d1",
        group_types=["DynamicMembership"],
        membership_rule="(user.department -eq 1)",
    )
    mail = graph.add_group(
        "Distribution list", id="0a1b2c3d-0000-4000-8000-0000000000d2", mail_enabled=True, security_enabled=False
    )
    person = cloud_user(graph, "Dyna", "Mic", customfields=custom(group_a=dynamic.id, group_b=mail.id))
    graph.add_user(person["emailaddress"], usage_location="GB")

    cloud.accept(delivery("created", person))
    assert cloud.settle() == ["completed"]

    assert not [e for e in graph.log if "/members/" in e.path]
    entry = next(e for e in cloud.runtime.store.audit(user_id=person["id"]) if e.action == "add_to_cloud_groups")
    assert entry.outcome == "unchanged"
    assert "dynamic membership" in entry.message and "distribution list" in entry.message


def test_an_unknown_cloud_group_or_user_is_dead_lettered_with_a_reason_and_a_leaver_without_one_is_a_no_op(
    cloud: Service, graph: GraphStandIn
) -> None:
    person = cloud_user(graph, "No", "Group", customfields=custom(group_a="0a1b2c3d-0000-4000-8000-00000000dead"))
    graph.add_user(person["emailaddress"], usage_location="GB")
    graph.add_group("Sales", id=GROUP_B)
    cloud.accept(delivery("created", person))
    assert cloud.settle() == ["dead_lettered"]
    letters = cloud.runtime.queue.dead_letters()
    assert "the cloud group 0a1b2c3d-0000-4000-8000-00000000dead does not exist" in letters[0].description

    ghost = cloud_user(graph, "Ghost", "Writer")
    cloud.accept(delivery("created", ghost))
    assert cloud.settle() == ["dead_lettered"]
    assert "no cloud user" in cloud.runtime.queue.dead_letters()[-1].description

    cloud.accept(delivery("updated", {**ghost, "inactive": True}))
    assert cloud.settle() == ["completed"]
    assert graph.writes() == [e for e in graph.writes() if "Ghost" not in e.path]


def test_create_mailbox_waits_for_the_mailbox_without_holding_a_worker_then_gives_up_with_a_reason(
    cloud: Service, graph: GraphStandIn
) -> None:
    graph.mailbox_provisioning = "manual"
    graph.add_group("All staff", id=GROUP_A)
    graph.add_group("Sales", id=GROUP_B)
    person = cloud_user(graph, "Mail", "Box", customfields=custom(mailbox="yes"))
    account = graph.add_user(person["emailaddress"], usage_location="GB", licenses={E3: [EXCHANGE]})
    cloud.accept(delivery("created", person))

    def polled_twice() -> bool:
        return sum(1 for e in graph.log if e.path.endswith("/mailboxSettings") and e.status == 404) >= 2

    assert set(cloud.settle(until=polled_twice)) == {"retry"}
    assert account.licenses[E3] == [SHAREPOINT]  # the Exchange plan is enabled: provisioning started
    graph.provision_mailbox(person["emailaddress"])
    assert cloud.settle()[-1] == "completed"
    entry = next(e for e in cloud.runtime.store.audit(user_id=person["id"]) if e.action == "create_mailbox")
    assert (entry.outcome, entry.message) == ("unchanged", "the mailbox answers")

    late = cloud_user(graph, "Never", "Ready", customfields=custom(mailbox="yes"))
    stuck = graph.add_user(late["emailaddress"], usage_location="GB", licenses={E3: []})
    stuck.mailbox, stuck.mailbox_pending = None, True
    two_hours_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    stuck.plan_times = dict.fromkeys(stuck.plan_times, two_hours_ago)
    cloud.accept(delivery("created", late))
    assert cloud.settle()[-1] == "dead_lettered"
    assert (
        "has not answered 120 min after the Exchange plan was assigned"
        in cloud.runtime.queue.dead_letters()[-1].description
    )


def test_a_photo_from_an_allowed_https_url_becomes_a_small_jpeg_profile_photo(
    graph: GraphStandIn, tmp_path: Path
) -> None:
    graph.photos["ada.png"] = picture(1600, 1200)
    mapping = load_mapping(EVENTS / "mapping-m365-cloud.toml")
    settings = make_settings(
        tmp_path, **graph_overrides(graph, photo_allowed_hosts=["127.0.0.1"], photo_max_bytes=20_000_000)
    )
    service = make_service(settings, mapping)
    graph.add_group("All staff", id=GROUP_A)
    graph.add_group("Sales", id=GROUP_B)
    person = cloud_user(graph, "Photo", "Url", photo_url=f"{graph.url}/photos/ada.png")
    account = graph.add_user(person["emailaddress"], usage_location="GB")
    try:
        service.accept(delivery("created", person))
        assert service.settle() == ["completed"]
        assert account.photo is not None and account.photo[:3] == b"\xff\xd8\xff"
        import io

        from PIL import Image

        assert max(Image.open(io.BytesIO(account.photo)).size) == 648

        stranger = cloud_user(graph, "Photo", "Elsewhere", photo_url="https://photos.example.org/x.png")
        graph.add_user(stranger["emailaddress"], usage_location="GB")
        service.accept(delivery("created", stranger))
        assert service.settle() == ["dead_lettered"]
        assert "not in LIFECYCLE_PHOTO_ALLOWED_HOSTS" in service.runtime.queue.dead_letters()[-1].description
    finally:
        service.worker.close()
        service.runtime.close()


def test_dry_run_reports_the_changes_and_writes_nothing(graph: GraphStandIn, tmp_path: Path) -> None:
    mapping = load_mapping(EVENTS / "mapping-m365-cloud.toml")
    service = make_service(make_settings(tmp_path, dry_run=True, **graph_overrides(graph)), mapping)
    graph.add_group("All staff", id=GROUP_A)
    graph.add_group("Sales", id=GROUP_B)
    person = cloud_user(graph, "Dry", "Run")
    graph.add_user(person["emailaddress"], usage_location="GB")
    try:
        service.accept(delivery("created", person))
        assert service.settle() == ["completed"]
        assert graph.writes() == []
        entries = {e.action: e for e in service.runtime.store.audit(user_id=person["id"])}
        assert entries["assign_licenses"].outcome == "dry_run"
        assert entries["assign_licenses"].changes[0].after == "assigned, disabled plans: " + SHAREPOINT
    finally:
        service.worker.close()
        service.runtime.close()


def test_the_token_comes_from_a_certificate_and_a_wrong_secret_is_a_permanent_error_naming_the_cause(
    graph: GraphStandIn, tmp_path: Path
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "halo-lifecycle")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "app.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    graph.certificates["cert-app"] = cert
    user = graph.add_user("cert@contoso.test")
    settings = Settings(
        **{
            **graph_overrides(graph),
            "graph_client_id": "cert-app",
            "graph_client_secret": "",
            "graph_certificate_file": pem,
        }
    )
    client = client_for(settings)
    answer = client.send(Request("GET", f"/users/{user.id}"))
    assert answer.status == 200 and answer.body["userPrincipalName"] == "cert@contoso.test"
    assert graph.token_requests[-1]["client_assertion_type"].endswith("jwt-bearer")
    # The token is cached: a second call asks Entra nothing.
    tokens = len(graph.token_requests)
    client.send(Request("GET", f"/users/{user.id}"))
    assert len(graph.token_requests) == tokens

    wrong = Settings(**{**graph_overrides(graph), "graph_client_id": CLIENT_ID, "graph_client_secret": "wrong"})
    with pytest.raises(Permanent, match="invalid_client"):
        client_for(Settings(**{**wrong.model_dump(), "graph_base_url": graph.graph_url + "/"})).send(
            Request("GET", f"/users/{user.id}")
        )


def test_the_managed_identity_gets_the_token_when_no_app_is_configured(
    graph: GraphStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{graph.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", graph.identity_header)
    monkeypatch.setenv("AZURE_CLIENT_ID", "mi-client-id")
    user = graph.add_user("mi@contoso.test")
    settings = Settings(**{**graph_overrides(graph), "graph_client_id": "", "graph_tenant_id": ""})
    answer = client_for(settings).send(Request("GET", f"/users/{user.id}"))
    assert answer.status == 200
    assert graph.token_requests[-1] == {"managed_identity": "mi-client-id"}


class _Directory:
    def __init__(self, manager_mail: str | None) -> None:
        self.manager_mail = manager_mail

    def delivery_facts(self, dn: str) -> dict[str, str]:
        facts = {"name": "Ada Lovelace", "upn": "ada.lovelace@corp.example.test", "sam": "ada.lovelace"}
        if self.manager_mail:
            facts.update(manager_mail=self.manager_mail, manager_name="Charles Babbage")
        return facts


def test_a_password_is_mailed_to_the_manager_once_and_never_logged(
    graph: GraphStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    sender = graph.add_user("it-accounts@contoso.test")
    settings = Settings(**graph_overrides(graph, password_delivery="graph_mail", password_mail_sender=sender.upn))
    password = "Zq9#unique-Secret-42"
    graph.fail("POST", r"/sendMail$", 429, times=1, retry_after=1)
    with caplog.at_level(logging.DEBUG):
        PasswordMailer(settings, lambda: _Directory("charles@contoso.test"))("CN=Ada,OU=Staff", password)
    assert len(graph.sent_mail) == 1
    mail = graph.sent_mail[0]
    assert mail["saveToSentItems"] is False
    assert mail["message"]["toRecipients"] == [{"emailAddress": {"address": "charles@contoso.test"}}]
    assert password in mail["message"]["body"]["content"] and "Charles Babbage" in mail["message"]["body"]["content"]
    assert password not in mail["message"]["subject"]
    assert password not in caplog.text

    # A 503 may mean "sent": not resent blindly, and the reason says what to do.
    graph.fail("POST", r"/sendMail$", 503, commit=True)
    with pytest.raises(Permanent, match="may or may not have been mailed"):
        PasswordMailer(settings, lambda: _Directory("charles@contoso.test"))("CN=Ada,OU=Staff", password)
    assert len(graph.sent_mail) == 2
    with pytest.raises(Permanent, match="no manager with a mail address"):
        PasswordMailer(settings, lambda: _Directory(None))("CN=Ada,OU=Staff", password)
    assert password not in caplog.text


def test_with_a_separate_sender_identity_the_mail_goes_out_with_its_token_and_not_the_services(
    graph: GraphStandIn,
) -> None:
    """Issue 15: least privilege for the password mail. The sender app (its own registration, holding only
    Mail.Send) is a LIFECYCLE_GRAPH_CONNECTIONS entry named by LIFECYCLE_PASSWORD_MAIL_CONNECTION; the
    service's own app never sends. The stand-in records the ``appid`` of the token each sendMail carried."""
    mailer_id, mailer_secret = "7a3e9c11-0000-4000-8000-0000000a11e7", "mail-only-app-secret-value"
    graph.clients[mailer_id] = mailer_secret
    graph.granted[mailer_id] = {"Mail.Send"}
    sender = graph.add_user("it-accounts@contoso.test")
    connection = {"tenant_id": graph.tenant, "client_id": mailer_id, "client_secret": mailer_secret}
    settings = Settings(
        **graph_overrides(
            graph,
            password_delivery="graph_mail",
            password_mail_sender=sender.upn,
            password_mail_connection="mailer",
            graph_connections={"mailer": connection},
        )
    )
    PasswordMailer(settings, lambda: _Directory("charles@contoso.test"))("CN=Ada,OU=Staff", "Zq9#unique-Secret-43")
    [mail] = graph.sent_mail
    assert mail["appid"] == mailer_id and mail["from"] == sender.upn
    assert {r.get("client_id") for r in graph.token_requests} == {mailer_id}  # the service's app asked for none

    # Without the setting, the service's own app sends (today's behaviour, and the default).
    plain = Settings(**graph_overrides(graph, password_delivery="graph_mail", password_mail_sender=sender.upn))
    PasswordMailer(plain, lambda: _Directory("charles@contoso.test"))("CN=Ada,OU=Staff", "Zq9#unique-Secret-44")
    assert graph.sent_mail[-1]["appid"] == plain.graph_client_id != mailer_id
    # A name that is no Graph connection is a configuration error naming what to add.
    wrong = settings.model_copy(update={"password_mail_connection": "mail-sender"})
    with pytest.raises(ConfigurationError, match="not a key of LIFECYCLE_GRAPH_CONNECTIONS"):
        PasswordMailer(wrong, lambda: _Directory("charles@contoso.test"))
