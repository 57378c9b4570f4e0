"""The planner turns (event, mapping) into the exact steps the worker runs; it is pure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lifecycle.mapping.planner import PlanContext, choose_lifecycle, plan
from lifecycle.mapping.schema import Mapping, parse_mapping
from lifecycle.work import LifecycleEvent, WorkItem
from tests.conftest import BASE_DN, ROOT

CONTEXT = PlanContext({"default": BASE_DN})
GROUPS = f"OU=Groups,OU=Halo,{BASE_DN}"


def event(kind: str, user: dict[str, Any] | None, user_id: int = 26) -> LifecycleEvent:
    return LifecycleEvent(
        kind=kind,  # type: ignore[arg-type]
        user_id=user_id,
        occurred_at=datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
        source="webhook",
        user=user,
    )


def steps(item: WorkItem) -> dict[str, dict[str, Any]]:
    return {s.action: s.params for s in item.steps}


def test_the_sample_user_plans_a_joiner_with_mapped_ou_groups_names_and_attributes(
    example_mapping: Mapping, sample_user: dict[str, Any]
) -> None:
    item = plan(event("created", sample_user), example_mapping, work_id="w1", context=CONTEXT)
    assert item.lifecycle == "joiner"
    assert [s.action for s in item.steps] == ["create_user", "modify_properties", "move_ou", "sync_groups"]
    create = steps(item)["create_user"]
    assert create["ou"] == f"OU=Main,OU=Staff,OU=Halo,{BASE_DN}"
    assert create["names"]["candidates"][0] == {
        "samaccountname": "baskar.balaji",
        "userprincipalname": "baskar.balaji@corp.example.test",
        "mail": "baskar.balaji@example.test",
    }
    assert create["attributes"]["givenName"] == "Baskar"
    assert create["attributes"]["telephoneNumber"] == "9092409380"
    assert steps(item)["sync_groups"]["desired"] == [f"CN=All Staff,{GROUPS}", f"CN=Site Main,{GROUPS}"]
    assert item.anchor == "employeeID"


def test_a_field_absent_from_the_payload_is_left_out_never_cleared(example_mapping: Mapping) -> None:
    # The sample has no department and no title: neither may appear as an attribute to write or to clear.
    thin_user = {"id": 26, "firstname": "Ann", "surname": "Lee", "name": "Ann Lee"}
    params = steps(plan(event("updated", thin_user), example_mapping, work_id="w", context=CONTEXT, status="active"))
    modify = params["modify_properties"]
    assert "department" not in modify["attributes"] and "title" not in modify["attributes"]
    assert modify["clear"] == []


def test_an_empty_field_clears_only_attributes_the_mapping_allows(example_mapping: Mapping) -> None:
    user = {"id": 26, "name": "Ann Lee", "title": "", "mobilenumber": ""}
    params = steps(plan(event("updated", user), example_mapping, work_id="w", context=CONTEXT, status="active"))
    assert params["modify_properties"]["clear"] == []
    text = (
        (ROOT / "mapping.example.toml")
        .read_text()
        .replace('anchor = "employeeID"', 'anchor = "employeeID"\nclear_when_empty = ["title"]')
    )
    allowing = parse_mapping(text, "m.toml")
    params = steps(plan(event("updated", user), allowing, work_id="w", context=CONTEXT, status="active"))
    assert params["modify_properties"]["clear"] == ["title"]


def test_a_new_department_and_site_move_the_ou_and_groups(example_mapping: Mapping) -> None:
    user = {"id": 26, "name": "Ann Lee", "site_name": "London", "department": "Sales"}
    item = plan(event("updated", user), example_mapping, work_id="w", context=CONTEXT, status="active")
    assert item.lifecycle == "mover"
    assert steps(item)["move_ou"]["ou"] == f"OU=London,OU=Staff,OU=Halo,{BASE_DN}"
    assert set(steps(item)["sync_groups"]["desired"]) == {
        f"CN=All Staff,{GROUPS}",
        f"CN=Site London,{GROUPS}",
        f"CN=Sales,{GROUPS}",
    }
    assert f"CN=Site Main,{GROUPS}" in steps(item)["sync_groups"]["managed"]


def test_lifecycle_follows_the_event_and_what_was_applied_before() -> None:
    active, inactive = {"id": 1, "inactive": False}, {"id": 1, "inactive": True}
    assert choose_lifecycle(event("updated", inactive, 1), "active") == "leaver"
    assert choose_lifecycle(event("updated", active, 1), "left") == "rehire"
    assert choose_lifecycle(event("updated", active, 1), "active") == "mover"
    assert choose_lifecycle(event("updated", active, 1), "unknown") == "joiner"
    assert choose_lifecycle(event("deleted", active, 1), "active") == "deleted"
    assert choose_lifecycle(event("updated", None, 1), "active") == "fetch"


def test_leaver_steps_disable_strip_managed_groups_and_park_the_account(example_mapping: Mapping) -> None:
    user = {"id": 26, "name": "Ann Lee", "inactive": True, "site_name": "Main"}
    item = plan(event("updated", user), example_mapping, work_id="w", context=CONTEXT, status="active")
    assert [s.action for s in item.steps] == ["disable_user", "apply_template", "remove_from_groups", "move_ou"]
    assert steps(item)["move_ou"]["ou"] == f"OU=Disabled,OU=Halo,{BASE_DN}"
    assert len(steps(item)["remove_from_groups"]["groups"]) == 6


def test_deleted_runs_the_leaver_steps_then_a_staged_delete(example_mapping: Mapping) -> None:
    item = plan(event("deleted", {"id": 26, "name": "A"}), example_mapping, work_id="w", context=CONTEXT)
    assert [s.action for s in item.steps][-1] == "delete_user"
    assert item.steps[-1].params == {"after_days": 30}


def test_a_thin_event_is_planned_for_fetching_with_no_steps(example_mapping: Mapping) -> None:
    item = plan(event("updated", None), example_mapping, work_id="w", context=CONTEXT)
    assert item.lifecycle == "fetch" and item.steps == []


def test_routing_rules_pick_the_connection(example_mapping: Mapping) -> None:
    text = (
        (ROOT / "mapping.example.toml")
        .read_text()
        .replace(
            "# [[routing.rules]]", '[[routing.rules]]\nwhen = { client_name = "Contoso" }\nconnection = "contoso"\n#'
        )
    )
    mapping = parse_mapping(text, "m.toml")
    context = PlanContext({"default": BASE_DN, "contoso": "DC=contoso,DC=test"})
    item = plan(
        event("created", {"id": 5, "name": "A B", "client_name": "contoso"}), mapping, work_id="w", context=context
    )
    assert {s.target for s in item.steps} == {"contoso"}
    assert steps(item)["create_user"]["ou"].endswith("DC=contoso,DC=test")


def test_planning_is_deterministic(example_mapping: Mapping, sample_user: dict[str, Any]) -> None:
    first = plan(event("created", sample_user), example_mapping, work_id="w", context=CONTEXT)
    second = plan(event("created", dict(sample_user)), example_mapping, work_id="w", context=CONTEXT)
    assert first.model_dump_json() == second.model_dump_json()
    assert WorkItem.from_bytes(first.to_bytes()) == first


def test_work_item_bytes_are_the_utf8_of_its_json_dump(example_mapping: Mapping, sample_user: dict[str, Any]) -> None:
    # to_bytes serialises straight to bytes: the same bytes as model_dump_json() encoded, non-ASCII included,
    # so every reader of queued work (worker, dlq, console, replay, items queued by an older version) sees no change.
    user = {**sample_user, "firstname": "日本", "surname": "Straße", "title": 'Café "quoted" \\ </tag>'}
    item = plan(event("created", user), example_mapping, work_id="w", context=CONTEXT)
    assert item.to_bytes() == item.model_dump_json().encode("utf-8")
    assert "Straße".encode() in item.to_bytes()


def test_planned_work_items_equal_their_validated_form(example_mapping: Mapping, sample_user: dict[str, Any]) -> None:
    # The planner builds steps and work items without validating them again (WorkItem.planned): each must be
    # exactly what validation gives, field for field, for every lifecycle.
    cases = [
        ("created", sample_user, "unknown"),
        ("updated", {**sample_user, "site_name": "London"}, "active"),
        ("updated", {**sample_user, "inactive": True}, "active"),
        ("deleted", sample_user, "active"),
        ("updated", sample_user, "left"),
        ("updated", None, "active"),
    ]
    for kind, user, status in cases:
        item = plan(event(kind, user), example_mapping, work_id="w", context=CONTEXT, status=status)  # type: ignore[arg-type]
        assert WorkItem.model_validate_json(item.to_bytes()) == item
        assert WorkItem.model_validate(item.model_dump()) == item
        assert item.model_fields_set == WorkItem.model_validate(item.model_dump(exclude_unset=True)).model_fields_set
        for step in item.steps:
            assert step.model_fields_set == {"key", "action", "target", "params"}


def test_what_the_planner_remembers_per_mapping_follows_the_fields_it_reads(example_mapping: Mapping) -> None:
    # OU, groups and routing are remembered by the fields they read: users alternating between sites and
    # base DNs must each get their own, never the previous user's.
    users = [
        {"id": 1, "name": "A B", "firstname": "A", "surname": "B", "site_name": "Main", "department": "Sales"},
        {"id": 2, "name": "C D", "firstname": "C", "surname": "D", "site_name": "London"},
        {"id": 3, "name": "E F", "firstname": "E", "surname": "F", "site_name": "Paris", "department": "Sales"},
    ]
    other = PlanContext({"default": "DC=other,DC=test"})
    for _ in range(2):
        for context, base in ((CONTEXT, BASE_DN), (other, "DC=other,DC=test")):
            found = [steps(plan(event("created", u), example_mapping, work_id="w", context=context)) for u in users]
            assert [f["create_user"]["ou"] for f in found] == [
                f"OU=Main,OU=Staff,OU=Halo,{base}",
                f"OU=London,OU=Staff,OU=Halo,{base}",
                f"OU=Staff,OU=Halo,{base}",
            ]
            groups = f"OU=Groups,OU=Halo,{base}"
            assert [f["sync_groups"]["desired"] for f in found] == [
                [f"CN=All Staff,{groups}", f"CN=Site Main,{groups}", f"CN=Sales,{groups}"],
                [f"CN=All Staff,{groups}", f"CN=Site London,{groups}"],
                [f"CN=All Staff,{groups}", f"CN=Sales,{groups}"],
            ]
