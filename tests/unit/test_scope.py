"""The mapping's [scope]: who is managed at all, decided by the pure planner before anything is read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from lifecycle.errors import ConfigurationError
from lifecycle.mapping.planner import PlanContext, plan, scope_list_params
from lifecycle.mapping.schema import Mapping, Scope, parse_mapping
from lifecycle.work import LifecycleEvent
from tests.conftest import BASE_DN, ROOT

CONTEXT = PlanContext({"default": BASE_DN})


def event(kind: str, user: dict[str, Any]) -> LifecycleEvent:
    return LifecycleEvent(
        kind=kind,  # type: ignore[arg-type]
        user_id=int(user["id"]),
        occurred_at=datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
        source="webhook",
        user=user,
    )


def staff(**fields: Any) -> dict[str, Any]:
    return {"id": 40, "name": "Ann Lee", "firstname": "Ann", "surname": "Lee", "site_name": "Main", **fields}


def scoped(mapping: Mapping, **scope: Any) -> Mapping:
    return mapping.model_copy(update={"scope": Scope.model_validate({**mapping.scope.model_dump(), **scope})})


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"linked_agent_id": 3}, "linked to agent 3"),
        ({"isserviceaccount": True}, "isserviceaccount"),
        ({"name": "General User"}, "General User"),
    ],
)
def test_the_example_scope_plans_nothing_for_agents_service_accounts_and_general_users(
    example_mapping: Mapping, fields: dict[str, Any], reason: str
) -> None:
    item = plan(event("created", staff(**fields)), example_mapping, work_id="w", context=CONTEXT)
    assert item.lifecycle == "out_of_scope"
    assert item.steps == []
    assert reason in item.note


def test_an_ordinary_member_of_staff_is_in_the_example_scope(example_mapping: Mapping) -> None:
    user = staff(linked_agent_id=0, isserviceaccount=False)
    assert plan(event("created", user), example_mapping, work_id="w", context=CONTEXT).lifecycle == "joiner"


def test_scope_conditions_take_lists_custom_fields_and_negation(example_mapping: Mapping) -> None:
    mapping = scoped(example_mapping, when={"client_id": ["12", "14"], "cf.employee_type": {"not": "Contractor"}})
    contractor = [{"name": "Employee Type", "value": "Contractor"}]
    employee = [{"name": "Employee Type", "value": "Employee"}]
    cases = [
        (staff(client_id=14, customfields=employee), "joiner"),
        (staff(client_id=13, customfields=employee), "out_of_scope"),
        (staff(client_id=12, customfields=contractor), "out_of_scope"),
    ]
    for user, lifecycle in cases:
        item = plan(event("created", user), mapping, work_id="w", context=CONTEXT)
        assert item.lifecycle == lifecycle, user
    item = plan(event("created", staff(client_id=13, customfields=employee)), mapping, work_id="w", context=CONTEXT)
    assert "client_id = '13'" in item.note


def test_a_field_the_scope_reads_that_the_payload_lacks_creates_no_one(example_mapping: Mapping) -> None:
    mapping = scoped(example_mapping, when={"client_id": "12"})
    item = plan(event("created", staff()), mapping, work_id="w", context=CONTEXT)
    assert item.lifecycle == "out_of_scope"
    assert "lacks client_id" in item.note
    # ...but it never drops a managed person: absent is not "out".
    managed = plan(event("updated", staff()), mapping, work_id="w", context=CONTEXT, status="active")
    assert managed.lifecycle == "mover"


def test_a_managed_person_who_leaves_the_scope_is_reported_by_default_or_made_a_leaver(
    example_mapping: Mapping,
) -> None:
    user = staff(isserviceaccount=True)
    reported = plan(event("updated", user), example_mapping, work_id="w", context=CONTEXT, status="active")
    assert reported.lifecycle == "out_of_scope" and "left the scope" in reported.note
    leaver_mapping = scoped(example_mapping, scope_exit="leaver")
    left = plan(event("updated", user), leaver_mapping, work_id="w", context=CONTEXT, status="active")
    assert left.lifecycle == "leaver"
    assert left.steps[0].action == "disable_user"


def test_a_managed_persons_leaver_and_deletion_run_whatever_the_scope_says(example_mapping: Mapping) -> None:
    user = staff(isserviceaccount=True, inactive=True)
    leaver = plan(event("updated", user), example_mapping, work_id="w", context=CONTEXT, status="active")
    deleted = plan(event("deleted", user), example_mapping, work_id="w", context=CONTEXT, status="active")
    assert (leaver.lifecycle, deleted.lifecycle) == ("leaver", "deleted")
    # A person who already left is not re-enabled by a rehire out of scope.
    rehire = plan(event("updated", staff(isserviceaccount=True)), example_mapping, work_id="w", status="left")
    assert rehire.lifecycle == "out_of_scope"


def test_the_listing_uses_halos_own_filters_where_the_scope_fixes_them(example_mapping: Mapping) -> None:
    assert scope_list_params(example_mapping.scope) == {
        "exclude_agents": "true",
        "exclude_generaluser": "true",
        "includeserviceaccount": "false",
        "includenonserviceaccount": "true",
    }
    one_client = scoped(example_mapping, when={"client_id": ["12"], "site_id": {"not": "3"}})
    params = scope_list_params(one_client.scope)
    assert params["client_id"] == "12" and "site_id" not in params
    assert scope_list_params(Scope()) == {}


def test_without_a_scope_section_everyone_is_in_scope() -> None:
    text = (ROOT / "mapping.example.toml").read_text()
    start = text.index("[scope]")
    text = text[:start] + text[text.index("[routing]") :]
    mapping = parse_mapping(text, "old.toml")
    item = plan(event("created", staff(linked_agent_id=3)), mapping, work_id="w", context=CONTEXT)
    assert item.lifecycle == "joiner"


def test_a_scope_typo_is_reported_with_its_field() -> None:
    text = (ROOT / "mapping.example.toml").read_text().replace('scope_exit = "report"', 'scope_exit = "delete"')
    with pytest.raises(ConfigurationError, match=r"scope\.scope_exit"):
        parse_mapping(text, "bad.toml")
