"""Many tenants: one deployment serving an MSP's customers, each Halo client routed to its own Microsoft 365 tenant.

Two tenants in one Graph stand-in (one server, as Graph is: the token decides the directory), the real msal and
msgraph-sdk, the worker end to end: no cross-talk, a throttled tenant slows nobody else, a person never moves to
another tenant without an operator, and a connection that does not exist is never served by another tenant.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lifecycle import tenancy
from lifecycle.commands.dlq import _dead_letter_view
from lifecycle.guard import MassChangeGuard
from lifecycle.mapping.schema import load_mapping
from lifecycle.queue.embedded import EmbeddedQueue
from lifecycle.runtime import Runtime
from lifecycle.targets.graph import client_for
from lifecycle.worker import Worker
from tests.conftest import EVENTS, make_settings
from tests.integration.conftest import delivery, new_user
from tests.integration.m365.conftest import CLIENT_ID, CLIENT_SECRET, GROUP_A, Service, graph_overrides
from tests.standins.graph import E3, GraphStandIn

pytestmark = pytest.mark.integration

MAPPING = EVENTS / "mapping-m365-tenants.toml"
FABRIKAM = "fabrikam-tenant"


class Clock:
    """The queue's, the worker's and the throttled tenant's clock: a test moves time instead of sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def wall(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


@dataclass
class Tenants:
    service: Service
    contoso: GraphStandIn  # the default tenant, and connection "contoso"
    fabrikam: GraphStandIn  # connection "fabrikam"
    clock: Clock
    reasons: list[str] = field(default_factory=list)

    def run(self) -> list[str]:
        """Process every message that is due now (a throttled one waits for the clock)."""
        outcomes: list[str] = []
        while (message := self.service.runtime.queue.receive(timeout=0.2)) is not None:
            result = self.service.worker.process_message(message)
            outcomes.append(result.outcome)
            self.reasons.append(result.reason)
        return outcomes


@pytest.fixture
def tenants(graph: GraphStandIn, tmp_path: Path) -> Iterator[Tenants]:
    fabrikam = graph.add_tenant(FABRIKAM)
    # One multi-tenant app registration, consented in both customers' tenants.
    fabrikam.clients[CLIENT_ID] = CLIENT_SECRET
    for directory in (graph, fabrikam):
        directory.add_group("All staff", id=GROUP_A)
    settings = make_settings(
        tmp_path,
        mapping_file=MAPPING,
        **graph_overrides(
            graph,
            graph_connections={"contoso": {"tenant_id": graph.tenant}, "fabrikam": {"tenant_id": FABRIKAM}},
            retry_cap_seconds=300.0,
        ),
    )
    clock = Clock()
    runtime = Runtime(settings, mapping=load_mapping(MAPPING))
    runtime.__dict__["queue"] = EmbeddedQueue(settings.data_dir / "queue.sqlite3", clock=clock.wall)
    service = Service(runtime, Worker(runtime, clock=clock.wall))
    yield Tenants(service, graph, fabrikam, clock)
    service.worker.close()
    runtime.close()


def person(first: str, client: str, **fields: Any) -> dict[str, Any]:
    domain = f"{client.lower()}.test"
    return new_user(first, "Test", client_name=client, emailaddress=f"{first.lower()}@{domain}", **fields)


def about(directory: GraphStandIn, *ids: str) -> list[str]:
    """Paths of the requests a directory received that name one of these users."""
    return [e.path for e in directory.log if any(i in e.path for i in ids)]


def test_two_clients_reach_only_their_own_tenants_and_a_throttled_tenant_slows_only_its_own_people(
    tenants: Tenants,
) -> None:
    contoso, fabrikam = tenants.contoso, tenants.fabrikam
    ann = person("Ann", "Contoso")
    bob, cy = person("Bob", "Fabrikam"), person("Cy", "Fabrikam")
    ann_cloud = contoso.add_user(ann["emailaddress"])
    bob_cloud, cy_cloud = fabrikam.add_user(bob["emailaddress"]), fabrikam.add_user(cy["emailaddress"])
    # Fabrikam's tenant throttles this app (Graph throttles per app and tenant pair) for a minute.
    fabrikam.fail("*", r".*", 429, retry_after=60)

    for user in (bob, ann, cy):
        tenants.service.accept(delivery("created", user))
    outcomes = tenants.run()

    # Contoso's person was served while Fabrikam's tenant was throttled: its two people wait, rescheduled.
    assert sorted(outcomes) == ["completed", "retry", "retry"]
    assert ann_cloud.licenses == {E3: []} and ann_cloud.id in contoso.groups[GROUP_A].members
    assert tenants.service.runtime.queue.counts()["scheduled"] == 2  # type: ignore[attr-defined]
    # One request reached Fabrikam (the throttled one); Cy's item was rescheduled without sending anything, so no
    # worker waited and no retry counted against the tenant's quota.
    assert len(fabrikam.http_requests()) == 1 and fabrikam.http_requests()[0].status == 429
    assert bob_cloud.licenses == {} and cy_cloud.licenses == {}
    retries = [r for r in tenants.reasons if r]
    assert len(retries) == 2 and all(r.startswith(f"Graph [fabrikam, tenant {FABRIKAM}]:") for r in retries), retries

    # A minute later (the clock moves; nothing sleeps) Fabrikam's people are served, in Fabrikam only.
    tenants.clock.offset += 61
    client_for(tenants.service.runtime.settings.graph_settings("fabrikam")).clock = tenants.clock.monotonic
    assert tenants.run() == ["completed", "completed"]
    assert bob_cloud.licenses == {E3: []} and cy_cloud.licenses == {E3: []}
    assert {bob_cloud.id, cy_cloud.id} <= fabrikam.groups[GROUP_A].members

    # No cross-talk: each directory heard only of its own people, and each tenant issued its own token.
    assert about(contoso, bob_cloud.id, cy_cloud.id, "bob@", "cy@") == []
    assert about(fabrikam, ann_cloud.id, "ann@") == []
    assert contoso.groups[GROUP_A].members == {ann_cloud.id}
    assert len(fabrikam.token_requests) == 1 and len(contoso.token_requests) == 1
    # The audit names the connection of every step.
    audit = tenants.service.runtime.store.audit()
    targets = {(e.user_id, e.target) for e in audit if e.action == "assign_licenses"}
    assert targets == {(ann["id"], "graph:contoso"), (bob["id"], "graph:fabrikam"), (cy["id"], "graph:fabrikam")}


def test_a_person_whose_client_changes_is_held_and_nothing_is_written_in_either_tenant_until_approved(
    tenants: Tenants,
) -> None:
    contoso, fabrikam = tenants.contoso, tenants.fabrikam
    dan = person("Dan", "Contoso")
    dan_contoso = contoso.add_user(dan["emailaddress"])
    tenants.service.accept(delivery("created", dan))
    assert tenants.run() == ["completed"]
    contoso.clear_log()

    # Halo now says Dan is Fabrikam's (a mistaken edit, or a real move): his leaver routes to Fabrikam's tenant,
    # where someone else may own the address.
    dan_fabrikam = fabrikam.add_user(dan["emailaddress"])
    moved = {**dan, "client_name": "Fabrikam", "inactive": True}
    tenants.service.accept(delivery("updated", moved))
    assert tenants.run() == ["held"]
    assert fabrikam.log == [] and contoso.log == []
    assert dan_fabrikam.enabled and dan_contoso.enabled
    store = tenants.service.runtime.store
    (held,) = store.held()
    assert "connection 'contoso' (tenant contoso-tenant)" in held.reason
    assert f"connection 'fabrikam' (tenant {FABRIKAM})" in held.reason

    # An operator approves the move: the leaver runs in Fabrikam's tenant, and Dan is Fabrikam's from then on.
    guard = MassChangeGuard(tenants.service.runtime.settings, store)
    guard.approve(held.held_id, tenants.service.runtime.queue, by="ops@msp.test", source="cli")
    assert tenants.run() == ["completed"]
    assert dan_fabrikam.enabled is False and dan_contoso.enabled is True
    assert about(contoso, dan_contoso.id, "dan@") == []
    moves = [e for e in store.audit(user_id=dan["id"]) if e.action == "connection"]
    assert [e.outcome for e in moves] == ["held", "changed"] and "ops@msp.test" in moves[-1].message


def test_a_deletion_that_carries_no_routing_field_follows_the_persons_tie_and_is_not_held_for_the_default(
    tenants: Tenants,
) -> None:
    contoso, fabrikam = tenants.contoso, tenants.fabrikam
    fay = person("Fay", "Fabrikam")
    # Her cloud user carries the anchor, so a deletion that names only her id finds her.
    fay_fabrikam = fabrikam.add_user(fay["emailaddress"], extra={"employeeId": str(fay["id"])})
    tenants.service.accept(delivery("created", fay))
    assert tenants.run() == ["completed"]
    fabrikam.clear_log()

    # Halo deleted Fay before telling us: the event has her id and nothing the routing rules read (client_name).
    # The mapping alone would send her to routing.default, a connection she was never tied to, and hold her for an
    # operator every time; her tie (Fabrikam) decides instead. A dry run shows it so.
    deletion = delivery("deleted", {"id": fay["id"]})
    preview = tenants.service.post(deletion, dry_run="true")
    assert preview.status == 200, preview.body
    (planned,) = json.loads(preview.body)["plans"]
    assert {step["target"] for step in planned["steps"]} == {"fabrikam"}
    tenants.service.accept(deletion)
    assert tenants.run() == ["completed"]

    store = tenants.service.runtime.store
    assert store.held() == []
    assert fay_fabrikam.enabled is False
    assert contoso.log == []  # the default connection's tenant heard nothing of her
    deleted = [e for e in store.audit(user_id=fay["id"]) if e.action in ("disable_cloud_account", "revoke_sessions")]
    assert [e.target for e in deleted] == ["graph:fabrikam", "graph:fabrikam"]
    assert [e.outcome for e in deleted] == ["changed", "changed"]
    assert tenancy.bound(store, fay["id"]) == tenancy.Binding("fabrikam", FABRIKAM)


def test_a_client_routed_to_a_connection_with_no_tenant_is_refused_and_never_served_by_the_default_tenant(
    tenants: Tenants,
) -> None:
    eve = person("Eve", "Northwind")
    tenants.contoso.add_user(eve["emailaddress"])
    tenants.service.accept(delivery("created", eve))
    assert tenants.run() == ["dead_lettered"]
    (dead,) = tenants.service.runtime.queue.dead_letters()
    assert "no Graph connection named 'northwind'" in dead.description
    assert _dead_letter_view(dead)["connection"] == "northwind"  # what `lifecycle dlq list` shows
    assert tenants.contoso.log == [] and tenants.fabrikam.log == []


def test_doctor_checks_each_tenants_consent_and_permissions_on_its_own(tenants: Tenants) -> None:
    from types import SimpleNamespace

    from pydantic import SecretStr

    from lifecycle.commands.doctor import graph_checks, needed_graph_permissions
    from lifecycle.settings_models import GraphConnection

    runtime = tenants.service.runtime
    needed = needed_graph_permissions(runtime.mapping)
    tenants.contoso.granted[CLIENT_ID] = set(needed)
    tenants.fabrikam.granted[CLIENT_ID] = {"User.Read.All"}
    # A customer whose administrator has not consented yet: the app has no service principal in its tenant.
    tenants.contoso.add_tenant("tailspin-tenant")
    # A second app that only sends password mail (LIFECYCLE_PASSWORD_MAIL_CONNECTION) needs Mail.Send, nothing else.
    tenants.contoso.clients["sender-app"] = "sender-secret-value"
    tenants.contoso.granted["sender-app"] = {"Mail.Send"}
    sender = GraphConnection(
        tenant_id=tenants.contoso.tenant, client_id="sender-app", client_secret=SecretStr("sender-secret-value")
    )
    connections = {
        **runtime.settings.graph_connections,
        "tailspin": GraphConnection(tenant_id="tailspin-tenant"),
        "sender": sender,
    }
    settings = runtime.settings.model_copy(
        update={"graph_connections": connections, "password_mail_connection": "sender"}
    )

    checks = {c.name: c for c in graph_checks(SimpleNamespace(settings=settings, mapping=runtime.mapping))}

    assert checks["Microsoft Graph"].status == "ok" and checks["Microsoft Graph [contoso]"].status == "ok"
    fabrikam = checks["Microsoft Graph [fabrikam]"]
    assert fabrikam.status == "failed" and FABRIKAM in fabrikam.detail
    assert "LicenseAssignment.ReadWrite.All" in fabrikam.detail and "GroupMember.ReadWrite.All" in fabrikam.detail
    tailspin = checks["Microsoft Graph [tailspin]"]
    assert tailspin.status == "failed" and "AADSTS700016" in tailspin.detail
    assert f"/tailspin-tenant/adminconsent?client_id={CLIENT_ID}" in tailspin.fix
    assert checks["Microsoft Graph [northwind]"].status == "skipped"
    assert checks["Microsoft Graph [sender]"].status == "ok", checks["Microsoft Graph [sender]"]


def test_while_a_tenant_asks_for_a_short_wait_its_other_requests_are_rescheduled_and_other_tenants_are_not(
    tenants: Tenants,
) -> None:
    from lifecycle.errors import Retryable
    from lifecycle.targets.graph import Request, Response

    settings = tenants.service.runtime.settings
    fabrikam = client_for(settings.graph_settings("fabrikam"))
    contoso = client_for(settings.graph_settings("contoso"))
    tenants.fabrikam.add_user("zoe@fabrikam.test")
    tenants.contoso.add_user("zoe@contoso.test")
    # A worker just got "429, Retry-After: 5" from Fabrikam and waits in place; meanwhile another worker's request
    # for Fabrikam is not sent (it would count against the quota) but handed back to be rescheduled, at once.
    fabrikam.note(Response(429, {"retry-after": "5"}, None))
    with pytest.raises(Retryable) as held_back:
        fabrikam.send(Request("GET", "/users/zoe@fabrikam.test"))
    assert held_back.value.retry_after is not None and 4 < held_back.value.retry_after <= 5
    assert "Retry-After 5 s" in str(held_back.value)
    assert tenants.fabrikam.log == []
    assert contoso.send(Request("GET", "/users/zoe@contoso.test")).ok
    # Once the wait is over (the clock moves), Fabrikam is asked again.
    fabrikam.clock = tenants.clock.monotonic
    tenants.clock.offset += 5
    assert fabrikam.send(Request("GET", "/users/zoe@fabrikam.test")).ok


def test_an_unreachable_tenant_is_tried_once_then_left_alone_for_a_while_and_the_others_go_on(
    tenants: Tenants,
) -> None:
    settings = tenants.service.runtime.settings
    tenants.service.runtime.settings = settings.model_copy(update={"graph_timeout_seconds": 1.0})
    tenants.service.worker.settings = tenants.service.runtime.settings
    ann = person("Ann", "Contoso")
    bob, cy = person("Bob", "Fabrikam"), person("Cy", "Fabrikam")
    ann_cloud = tenants.contoso.add_user(ann["emailaddress"])
    tenants.fabrikam.add_user(bob["emailaddress"])
    tenants.fabrikam.add_user(cy["emailaddress"])
    # Fabrikam's sign-in endpoint accepts connections and never answers (an outage on its side).
    tenants.contoso.stall(f"^/{FABRIKAM}/")

    for user in (bob, ann, cy):
        tenants.service.accept(delivery("created", user))
    outcomes = tenants.run()

    # Contoso's person was served; Fabrikam was tried once (one item waited for the timeout). Every later try of its
    # items (Cy's, and Bob's coming back after its short backoff) was rescheduled at once, without contacting it.
    assert outcomes.count("completed") == 1 and ann_cloud.licenses == {E3: []}
    retries = [r for r in tenants.reasons if r]
    assert len(retries) == len(outcomes) - 1 >= 2
    assert all(r.startswith(f"Graph [fabrikam, tenant {FABRIKAM}]:") for r in retries), retries
    assert sum("had no answer within 1 s" in r and "nothing is sent" not in r for r in retries) == 1
    assert all("could not be reached" in r and "nothing is sent to it" in r for r in retries[1:])
    assert tenants.contoso.log and tenants.fabrikam.log == []


def test_when_the_tenants_gate_closes_between_two_writes_the_applied_ones_are_reported_as_changed(
    cloud: Service, graph: GraphStandIn
) -> None:
    from lifecycle.targets.graph import Response
    from tests.integration.m365.conftest import GROUP_B, b64, picture

    graph.add_group("All staff", id=GROUP_A)
    graph.add_group("Sales", id=GROUP_B)
    person = new_user("Pia", "Photo", emailaddress="pia.photo@contoso.test", photo_base64=b64(picture(64, 64)))
    account = graph.add_user(person["emailaddress"], usage_location="GB")
    client = client_for(cloud.runtime.settings)
    send = client.send

    def throttled_meanwhile(request: Any, **options: Any) -> Any:
        if request.content is not None:  # the photo upload, after the licence and the groups were written
            client.note(Response(429, {"retry-after": "3"}, None))  # another worker's request was throttled
        return send(request, **options)

    client.send = throttled_meanwhile  # type: ignore[method-assign]
    cloud.accept(delivery("created", person))
    message = cloud.runtime.queue.receive(timeout=5)
    assert message is not None
    result = cloud.worker.process_message(message)

    # The photo waits for the tenant; what was written before it is reported as this attempt's change.
    assert result.outcome == "retry" and "Retry-After 3 s" in result.reason
    outcomes = {e.action: e.outcome for e in cloud.runtime.store.audit(user_id=person["id"])}
    assert outcomes["assign_licenses"] == "changed" and outcomes["add_to_cloud_groups"] == "changed"
    assert account.licenses and account.id in graph.groups[GROUP_A].members and account.photo is None
