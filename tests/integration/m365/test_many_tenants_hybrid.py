"""Many tenants with AD: one connection name serves a customer's AD domain and its own Microsoft 365 tenant.

A real AD (Samba) behind the connection "contoso" (LIFECYCLE_AD_CONNECTIONS) and Contoso's tenant in the Graph
stand-in behind the same name (LIFECYCLE_GRAPH_CONNECTIONS): the account is created in AD, and the Graph steps
wait for directory sync into Contoso's tenant, never the default tenant, which holds a user with the same UPN.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import parse_mapping
from lifecycle.settings_models import GraphConnection
from tests.conftest import EVENTS
from tests.integration.conftest import admin_connection, dc_settings, delivery, new_user
from tests.integration.m365.conftest import CLIENT_ID, CLIENT_SECRET, GROUP_A, Service, graph_overrides, make_service
from tests.integration.m365.test_m365_hybrid import account, sync_to_cloud
from tests.standins.graph import E3, SHAREPOINT, GraphStandIn

pytestmark = pytest.mark.integration

CONTOSO = "contoso-customer-tenant"


@pytest.fixture
def msp(directory: DCInfo, graph: GraphStandIn, tmp_path: Path) -> Iterator[tuple[Service, GraphStandIn]]:
    contoso = graph.add_tenant(CONTOSO)
    contoso.clients[CLIENT_ID] = CLIENT_SECRET
    text = (EVENTS / "mapping-m365.toml").read_text(encoding="utf-8")
    routed = text.replace(
        '# [[routing.rules]]           # an MSP: one domain per Halo client\n# when = { client_name = "Contoso" }\n'
        '# connection = "contoso"',
        '[[routing.rules]]\nwhen = { client_name = "Contoso" }\nconnection = "contoso"',
    )
    assert routed != text
    base = dc_settings(directory, tmp_path, **graph_overrides(graph))
    settings = base.model_copy(
        update={
            "ad_connections": {"contoso": base.ad_connection("default")},
            "graph_connections": {"contoso": GraphConnection(tenant_id=CONTOSO)},
        }
    )
    service = make_service(settings, parse_mapping(routed, "mapping-m365.toml (routed)"))
    yield service, contoso
    service.worker.close()
    service.runtime.close()


@pytest.fixture
def ldap(directory: DCInfo) -> Iterator[Any]:
    conn = admin_connection(directory)
    yield conn
    conn.unbind()


def test_a_customers_joiner_is_created_in_its_ad_and_licensed_in_its_own_tenant_only(
    msp: tuple[Service, GraphStandIn], graph: GraphStandIn, ldap: Any, directory: DCInfo
) -> None:
    service, contoso = msp
    contoso.add_group("All staff", id=GROUP_A)
    graph.add_group("All staff", id=GROUP_A)
    person = new_user("Grete", "Hermann", client_name="Contoso")
    service.accept(delivery("created", person))
    # AD first (connection "contoso"); the Graph steps wait for the cloud user in Contoso's tenant.
    assert set(service.settle(until=lambda: any(e.status == 404 for e in contoso.log))) <= {"retry"}
    entry = account(ldap, directory, person["id"])
    # The default tenant has a user with the same UPN (another customer's, or a stale one): it must not be touched.
    decoy = graph.add_user(entry["userprincipalname"][0].decode(), usage_location="GB")
    cloud = sync_to_cloud(contoso, entry)
    assert service.settle()[-1] == "completed"

    assert cloud.licenses == {E3: [SHAREPOINT]} and cloud.id in contoso.groups[GROUP_A].members
    assert decoy.licenses == {} and graph.writes() == [] and graph.log == []
    targets = {e.target for e in service.runtime.store.audit(user_id=person["id"]) if e.step != "-"}
    assert targets <= {"contoso", "ad:contoso", "graph:contoso"} and "graph:contoso" in targets
