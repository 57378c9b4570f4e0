"""Many tenants: each connection has mass-change windows of its own, and a person stays with their connection."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from lifecycle import tenancy
from lifecycle.guard import MassChangeGuard
from lifecycle.mapping.schema import Mapping
from lifecycle.settings import Settings
from lifecycle.state.embedded import EmbeddedStore
from lifecycle.work import Step, WorkItem
from tests.unit.test_mass_change_guard import Clock, leaver

SETTINGS = Settings(
    guard_max_count=2,
    guard_window_seconds=600,
    graph_tenant_id="msp-tenant",
    graph_connections={"contoso": {"tenant_id": "contoso-tenant"}, "fabrikam": {"tenant_id": "fabrikam-tenant"}},
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    s = EmbeddedStore(tmp_path / "store.sqlite3", clock=Clock())
    yield s
    s.close()


def routed(item: WorkItem, connection: str) -> WorkItem:
    steps = [Step(**{**s.model_dump(), "target": connection}) for s in item.steps]
    return item.model_copy(update={"steps": steps})


def test_a_burst_of_leavers_in_one_customer_holds_only_that_customers_items_and_the_reason_names_it(
    example_mapping: Mapping, store: EmbeddedStore
) -> None:
    guard = MassChangeGuard(SETTINGS, store, clock=Clock())
    contoso = [routed(leaver(example_mapping, n), "contoso") for n in range(1, 4)]
    verdicts = [guard.check(item, None, item).action for item in contoso]
    assert verdicts == ["run", "run", "held"]
    (held,) = store.held()
    assert "connection 'contoso' (tenant contoso-tenant)" in held.reason
    # Fabrikam's leavers (and the default connection's) have windows of their own.
    fabrikam = routed(leaver(example_mapping, 10), "fabrikam")
    assert guard.check(fabrikam, None, fabrikam).action == "run"
    default = leaver(example_mapping, 20)
    assert guard.check(default, None, default).action == "run"
    # What `lifecycle held list` and the console show: each customer's window apart from the default one.
    status = guard.status()
    assert status["count"] == 1
    assert status["connections"] == {"contoso": {"count": 2, "joiners": 0}, "fabrikam": {"count": 1, "joiners": 0}}


def test_a_person_is_bound_to_their_first_connection_and_a_move_or_a_re_pointed_tenant_is_held(
    example_mapping: Mapping, store: EmbeddedStore
) -> None:
    now = datetime.now(UTC)
    first = routed(leaver(example_mapping, 5), "contoso")
    assert tenancy.admit(store, SETTINGS, first, first, now=now) is None
    assert tenancy.bound(store, 5) == tenancy.Binding("contoso", "contoso-tenant")
    assert tenancy.admit(store, SETTINGS, first, first, now=now) is None

    moved = routed(leaver(example_mapping, 5), "fabrikam").model_copy(update={"work_id": "w-5-moved"})
    verdict = tenancy.admit(store, SETTINGS, moved, moved, now=now)
    assert verdict is not None and verdict[0] == "held"
    # The same connection name pointed at another tenant id is a move too.
    repointed = SETTINGS.model_copy(
        update={"graph_connections": {"contoso": SETTINGS.graph_connections["fabrikam"]}}
    )
    again = first.model_copy(update={"work_id": "w-5-again"})
    verdict = tenancy.admit(store, repointed, again, again, now=now)
    assert verdict is not None and verdict[0] == "held" and "tenant fabrikam-tenant" in verdict[2]
    assert tenancy.bound(store, 5) == tenancy.Binding("contoso", "contoso-tenant")
    # In dry-run nothing is held or bound: the audit says it would be.
    dry = SETTINGS.model_copy(update={"dry_run": True})
    other = moved.model_copy(update={"work_id": "w-5-dry"})
    verdict = tenancy.admit(store, dry, other, other, now=now)
    assert verdict is not None and verdict[:2] == ("skipped", "dry_run")
    assert len(store.held()) == 2


def test_check_config_finds_a_tenant_no_app_can_reach_and_a_client_id_without_its_credential(tmp_path: Path) -> None:
    from lifecycle.config_check import check_settings

    settings = Settings(
        ad_base_dn="DC=corp,DC=example,DC=test",
        graph_connections={
            "contoso": {"tenant_id": "contoso-tenant"},
            "fabrikam": {"tenant_id": "fabrikam-tenant", "client_id": "app", "client_secret_env": "NO_SUCH_SETTING"},
        },
    )
    problems = {f.field: f.problem for f in check_settings(settings) if f.field.startswith("LIFECYCLE_GRAPH_CONN")}
    assert "managed identity cannot reach another tenant" in problems["LIFECYCLE_GRAPH_CONNECTIONS[contoso]"]
    assert "without its credential" in problems["LIFECYCLE_GRAPH_CONNECTIONS[fabrikam].client_id"]
    assert "NO_SUCH_SETTING is not set" in problems["LIFECYCLE_GRAPH_CONNECTIONS[fabrikam].client_secret_env"]
    # One multi-tenant app (the default client id and credential) reaches every tenant: nothing to report.
    fine = settings.model_copy(
        update={
            "graph_client_id": "app",
            "graph_client_secret": SecretStr("s"),
            "graph_connections": {"contoso": settings.graph_connections["contoso"]},
        }
    )
    assert [f for f in check_settings(fine) if f.field.startswith("LIFECYCLE_GRAPH_CONN")] == []


def test_a_connection_names_one_tenant_and_an_unresolved_key_vault_secret_is_never_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not common/organizations"):
        Settings(graph_connections={"x": {"tenant_id": "common"}})
    monkeypatch.setenv("FABRIKAM_GRAPH_SECRET", "@Microsoft.KeyVault(VaultName=v;SecretName=fabrikam)")
    settings = Settings(
        graph_client_id="app",
        graph_connections={"fabrikam": {"tenant_id": "fabrikam-tenant", "client_secret_env": "FABRIKAM_GRAPH_SECRET"}},
    )
    with pytest.raises(ValueError, match="unresolved Key Vault reference"):
        settings.graph_settings("fabrikam")
    with pytest.raises(KeyError, match="no Graph connection named 'northwind'"):
        settings.graph_settings("northwind")
    monkeypatch.setenv("FABRIKAM_GRAPH_SECRET", "the-secret")
    fabrikam = settings.graph_settings("fabrikam")
    assert (fabrikam.graph_tenant_id, fabrikam.graph_client_id) == ("fabrikam-tenant", "app")
    assert fabrikam.graph_client_secret.get_secret_value() == "the-secret"
    assert "the-secret" in settings.secret_values()  # redacted from logs and audit records like every secret

def test_an_event_with_no_field_to_route_on_follows_the_tie_and_one_that_carries_them_does_not(
    store: EmbeddedStore,
) -> None:
    from lifecycle.mapping.planner import PlanContext, plan
    from lifecycle.mapping.schema import load_mapping
    from lifecycle.work import LifecycleEvent
    from tests.conftest import EVENTS

    mapping = load_mapping(EVENTS / "mapping-m365-tenants.toml")
    now = datetime.now(UTC)

    def event(user_id: int, **fields: str) -> LifecycleEvent:
        return LifecycleEvent(
            kind="deleted", user_id=user_id, occurred_at=now, source="webhook", user={"id": user_id, **fields}
        )

    def targets(item: WorkItem) -> set[str]:
        return {step.target for step in item.steps}

    thin = event(7)
    item = plan(thin, mapping, work_id="w-7", status="active")
    assert targets(item) == {"default"}  # the mapping alone: routing.default
    # No tie yet: the mapping decides (the first item ties the person where it sends them).
    assert tenancy.tied_mapping(store, mapping, thin) is None
    tenancy.bind(store, 7, tenancy.Binding("fabrikam", "fabrikam-tenant"))
    tied = tenancy.plan_by_tie(store, mapping, item, PlanContext())
    assert targets(tied) == {"fabrikam"} and tied.mapping_digest == mapping.digest
    assert [s.action for s in tied.steps] == [s.action for s in item.steps]
    # An event that carries a field the rules read routes the person itself: elsewhere is a move, held by admit.
    contoso = event(7, client_name="Contoso")
    assert tenancy.tied_mapping(store, mapping, contoso) is None
    moved = plan(contoso, mapping, work_id="w-7-moved", status="active")
    assert tenancy.plan_by_tie(store, mapping, moved, PlanContext()) is moved
    verdict = tenancy.admit(store, SETTINGS, moved, moved, now=now)
    assert verdict is not None and verdict[0] == "held"
