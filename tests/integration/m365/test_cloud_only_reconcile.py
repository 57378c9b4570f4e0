"""Changes made to Halo users reach cloud-only people with no webhook: the delta poll and the reconcile (issue 17).

Halo documents webhooks for ticket events only, so a leaver made inactive in Halo reaches us through the delta
poll or the reconcile. These run them against the Halo stand-in and the Graph stand-in with the cloud-only
mapping (tests/events/mapping-cloud-only.toml) and no AD at all: the AD URL points nowhere that answers, so any
LDAP read would fail the test. The work they send goes through the worker, as a webhook's would.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lifecycle.poll import run_poll
from lifecycle.reconcile import run_reconcile
from tests.conftest import EVENTS, make_settings
from tests.integration.conftest import delivery, new_user
from tests.integration.m365.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    GROUP_A,
    Service,
    graph_overrides,
    make_service,
)
from tests.integration.test_halo_api_with_ad import halo_client
from tests.standins.graph import GraphStandIn
from tests.standins.halo import HaloStandIn, UserSet

pytestmark = pytest.mark.integration
MAPPING = EVENTS / "mapping-cloud-only.toml"
_blocks = itertools.count(9_300_000, 10_000)


@dataclass
class World:
    service: Service
    halo: HaloStandIn
    graph: GraphStandIn


def _world(graph: GraphStandIn, tmp_path: Path, mapping: Path = MAPPING, **settings: Any) -> Iterator[World]:
    from lifecycle.mapping.schema import load_mapping

    for tenant in graph.tenants.values():
        tenant.add_group("All staff", id=GROUP_A)
    halo = HaloStandIn(UserSet(0, first_id=next(_blocks)), rate_limit=100_000, rate_window=1.0).start()
    values: dict[str, Any] = {
        "halo_api_url": halo.url,
        "halo_client_id": halo.client_id,
        "halo_client_secret": halo.client_secret,
        "halo_ca_file": halo.ca_file,
        "halo_page_size": 100,
        "reconcile_mode": "apply",
        **graph_overrides(graph),
    }
    values.update(settings)
    made = make_service(
        make_settings(tmp_path, mapping_file=mapping, ad_url="ldaps://192.0.2.1:1", **values), load_mapping(mapping)
    )
    made.runtime.__dict__["halo"] = halo_client(halo)
    yield World(made, halo, graph)
    made.worker.close()
    made.runtime.close()
    halo.stop()


@pytest.fixture
def world(graph: GraphStandIn, tmp_path: Path) -> Iterator[World]:
    yield from _world(graph, tmp_path, halo_missing_users="leaver")


def joined(world: World, first: str, last: str, tenant: GraphStandIn | None = None, **fields: Any) -> dict[str, Any]:
    """A Halo user whose joiner ran through the ingress and the worker (an Entra user carrying the anchor)."""
    user = world.halo.users.add(new_user(first, last, department="Sales", title="Analyst", **fields))
    world.service.accept(delivery("created", user))
    assert world.service.settle() == ["completed"]
    assert (tenant or world.graph).anchored(f"halo:{user['id']}") is not None
    return user


def test_a_halo_user_made_inactive_is_disabled_in_entra_by_the_next_reconcile_with_no_ad(world: World) -> None:
    # Failed on the old code: the reconcile refused a cloud-only mapping ("no AD step ... not reconciled").
    stays, leaves = joined(world, "Stella", "Stays"), joined(world, "Lea", "Leaves")
    quiet = run_reconcile(world.service.runtime)
    assert quiet.count("unchanged") == 2 and quiet.enqueued == 0
    assert any("cloud-only mapping" in note for note in quiet.notes)

    world.halo.users.update(leaves["id"], {"inactive": True})
    report = run_reconcile(world.service.runtime)
    assert report.count("leaver") == 1 and report.enqueued == 1
    assert world.service.settle() == ["completed"]
    [left] = world.graph.deleted.values()
    assert not left.enabled and left.extra["employeeId"] == f"halo:{leaves['id']}"
    kept = world.graph.anchored(f"halo:{stays['id']}")
    assert kept is not None and kept.enabled
    # Applied: the next run finds nothing to do.
    assert run_reconcile(world.service.runtime).enqueued == 0


def test_a_halo_user_made_inactive_is_disabled_in_entra_by_the_next_delta_poll_with_no_ad(world: World) -> None:
    # The poll never read AD: this proves it serves a cloud-only mapping as it is.
    leaves = joined(world, "Paul", "Polled")
    assert run_poll(world.service.runtime).first_run
    world.halo.users.update(leaves["id"], {"inactive": True})
    report = run_poll(world.service.runtime)
    assert report.changed == [leaves["id"]] and report.sent == 1
    assert world.service.settle() == ["completed"]
    [left] = world.graph.deleted.values()
    assert not left.enabled and left.extra["employeeId"] == f"halo:{leaves['id']}"


def test_a_cloud_user_no_longer_in_halo_is_a_leaver_and_an_anchored_unknown_one_is_matched_not_joined(
    world: World,
) -> None:
    # Pages of two users: the tenant's listing is read to its last @odata.nextLink.
    world.graph.page_size = 2
    stays, goes = joined(world, "Mira", "Stays"), joined(world, "Gus", "Goes")
    # An Entra user already carrying a Halo user's anchor, never seen by the worker: matched, no joiner.
    known = world.halo.users.add(new_user("Ann", "Chored", department="Sales"))
    world.graph.add_user("ann.chored@contoso.test", extra={"employeeId": f"halo:{known['id']}"})
    # An active Halo user with no Entra user: a joiner.
    fresh = world.halo.users.add(new_user("Nia", "New", department="Sales"))
    world.halo.users.delete(goes["id"])

    report = run_reconcile(world.service.runtime)
    assert report.count("matched") == 1 and report.matches[0].user_id == known["id"]
    assert report.count("joiner") == 1 and report.count("leaver") == 1 and report.missing_checked == 1
    assert sorted(world.service.settle()) == ["completed", "completed"]
    gone = [u for u in world.graph.deleted.values() if u.extra.get("employeeId") == f"halo:{goes['id']}"]
    assert len(gone) == 1 and not gone[0].enabled
    created = world.graph.anchored(f"halo:{fresh['id']}")
    assert created is not None and created.enabled
    assert world.graph.anchored(f"halo:{stays['id']}") is not None
    again = run_reconcile(world.service.runtime)
    assert again.enqueued == 0 and again.count("leaver") == 0


def test_a_missing_cloud_user_is_only_reported_by_default(graph: GraphStandIn, tmp_path: Path) -> None:
    # A missing field (here: a whole user) never clears anything unless the operator chose so.
    for world in _world(graph, tmp_path):
        goes = joined(world, "Rita", "Reported")
        world.halo.users.delete(goes["id"])
        report = run_reconcile(world.service.runtime)
        assert report.count("missing") == 1 and report.enqueued == 0
        assert world.service.settle() == []
        user = world.graph.anchored(f"halo:{goes['id']}")
        assert user is not None and user.enabled


def test_a_burst_of_missing_cloud_users_is_held_by_the_mass_change_guard(graph: GraphStandIn, tmp_path: Path) -> None:
    for world in _world(graph, tmp_path, halo_missing_users="deleted", guard_max_count=2):
        users = [joined(world, "Burst", f"Cloud{n}") for n in range(4)]
        for user in users:
            world.halo.users.delete(user["id"])
        report = run_reconcile(world.service.runtime)
        assert report.count("deleted") == 4
        assert sorted(world.service.settle()) == ["completed", "completed", "held", "held"]
        assert sum(1 for u in world.graph.users.values() if u.extra.get("employeeId", "").startswith("halo:")) == 2


def test_each_tenant_is_read_with_its_own_connection_and_a_person_is_matched_only_in_their_own_tenant(
    graph: GraphStandIn, tmp_path: Path
) -> None:
    # An MSP's two customers, each in its own tenant (routing by the Halo client), and one with no tenant at all.
    fabrikam = graph.add_tenant("fabrikam-tenant")
    fabrikam.clients[CLIENT_ID] = CLIENT_SECRET
    mapping = tmp_path / "cloud-tenants.toml"
    routing = (
        '\n[routing]\ndefault = "contoso"\n'
        '[[routing.rules]]\nwhen = { client_name = "Fabrikam" }\nconnection = "fabrikam"\n'
        '[[routing.rules]]\nwhen = { client_name = "Northwind" }\nconnection = "northwind"\n'
    )
    mapping.write_text(MAPPING.read_text().replace("\n[lifecycles]", routing + "\n[lifecycles]", 1))
    connections = {"contoso": {"tenant_id": graph.tenant}, "fabrikam": {"tenant_id": fabrikam.tenant}}
    for world in _world(graph, tmp_path, mapping, halo_missing_users="leaver", graph_connections=connections):
        ann = joined(world, "Ann", "Contoso", graph, client_name="Contoso")
        bob = joined(world, "Bob", "Fabrikam", fabrikam, client_name="Fabrikam")
        # Fabrikam's tenant holds a user carrying the anchor of Contoso's Dora: not Dora's account (wrong
        # tenant), so Dora gets a joiner in Contoso and the decoy is never touched.
        dora = world.halo.users.add(new_user("Dora", "Contoso", department="Sales", client_name="Contoso"))
        decoy = fabrikam.add_user("dora@fabrikam.test", extra={"employeeId": f"halo:{dora['id']}"})
        world.halo.users.delete(bob["id"])
        graph.clear_log()
        fabrikam.clear_log()

        report = run_reconcile(world.service.runtime)
        assert report.count("matched") == 0 and report.count("joiner") == 1 and report.count("leaver") == 1
        assert any("no Graph tenant for northwind" in note for note in report.notes), report.notes
        # Each tenant's users were listed once in the run, with that tenant's own token (the stand-in keeps a
        # log per tenant: the token decides the directory a request reaches).
        for tenant in (graph, fabrikam):
            listings = [e for e in tenant.log if e.method == "GET" and e.path == "/users" and "$filter" not in e.query]
            assert len(listings) == 1, tenant.tenant
        assert sorted(world.service.settle()) == ["completed", "completed"]

        left = fabrikam.anchored(f"halo:{bob['id']}")
        assert left is not None and not left.enabled
        created = graph.anchored(f"halo:{dora['id']}")
        assert created is not None and created.enabled and decoy.enabled and decoy.id not in graph.users
        kept = graph.anchored(f"halo:{ann['id']}")
        assert kept is not None and kept.enabled
