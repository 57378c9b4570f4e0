"""A field the payload lacks decides nothing: no OU move and no group change hangs on it (pure planner)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lifecycle.mapping.planner import PlanContext, plan
from lifecycle.mapping.schema import Mapping
from lifecycle.work import LifecycleEvent, WorkItem
from tests.conftest import BASE_DN

GROUPS = f"OU=Groups,OU=Halo,{BASE_DN}"


def mover(mapping: Mapping, **user: Any) -> WorkItem:
    event = LifecycleEvent(
        kind="updated",
        user_id=7,
        occurred_at=datetime(2026, 11, 30, tzinfo=UTC),
        source="webhook",
        user={"id": 7, **user},
    )
    return plan(event, mapping, work_id="w", context=PlanContext({"default": BASE_DN}), status="active")


def test_without_a_site_the_mover_neither_moves_the_account_nor_touches_site_groups(example_mapping: Mapping) -> None:
    item = mover(example_mapping, firstname="Pat", department="Sales")
    assert [s.action for s in item.steps] == ["modify_properties", "sync_groups"]
    sync = item.steps[1].params
    assert sync["desired"] == [f"CN=All Staff,{GROUPS}", f"CN=Sales,{GROUPS}"]
    assert f"CN=Site Main,{GROUPS}" not in sync["managed"] and f"CN=Site London,{GROUPS}" not in sync["managed"]
    assert f"CN=Engineering,{GROUPS}" in sync["managed"]  # the department was sent: its groups are decided


def test_with_every_field_sent_the_mover_plans_the_move_and_every_group(example_mapping: Mapping) -> None:
    item = mover(example_mapping, firstname="Pat", department="Sales", site_name="London")
    assert [s.action for s in item.steps] == ["modify_properties", "move_ou", "sync_groups"]
    assert item.steps[1].params["ou"] == f"OU=London,OU=Staff,OU=Halo,{BASE_DN}"
    assert f"CN=Site Main,{GROUPS}" in item.steps[2].params["managed"]


def test_an_empty_site_is_sent_and_decides_the_default_ou(example_mapping: Mapping) -> None:
    item = mover(example_mapping, site_name="", department="")
    assert item.steps[1].params["ou"] == f"OU=Staff,OU=Halo,{BASE_DN}"


def test_a_leaver_still_leaves_every_managed_group_whatever_the_payload_lacks(example_mapping: Mapping) -> None:
    event = LifecycleEvent(
        kind="updated",
        user_id=7,
        occurred_at=datetime(2026, 11, 30, tzinfo=UTC),
        source="webhook",
        user={"id": 7, "inactive": True},
    )
    item = plan(event, example_mapping, work_id="w", context=PlanContext({"default": BASE_DN}), status="active")
    removal = next(s for s in item.steps if s.action == "remove_from_groups")
    assert f"CN=Site Main,{GROUPS}" in removal.params["groups"] and len(removal.params["groups"]) == 6
