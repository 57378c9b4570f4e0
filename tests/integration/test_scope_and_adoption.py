"""Scope, guarded joiners and existing directories, through the ingress and the worker against the real DC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import Mapping, Scope
from lifecycle.runtime import Runtime
from lifecycle.worker import Worker
from tests.integration.conftest import World, admin_connection, dc_settings, delivery, new_user


def _world(info: DCInfo, mapping: Mapping, tmp_path: Path, **settings: Any) -> Iterator[World]:
    runtime = Runtime(
        dc_settings(info, tmp_path, retry_base_seconds=0.05, retry_cap_seconds=0.2, **settings), mapping=mapping
    )
    worker = Worker(runtime)
    conn = admin_connection(info)
    yield World(info, runtime, worker, conn)
    worker.close()
    conn.unbind()
    runtime.close()


@pytest.fixture
def client_world(directory: DCInfo, example_mapping: Mapping, tmp_path: Path) -> Iterator[World]:
    """The example mapping limited to Halo client 12."""
    scope = Scope.model_validate({**example_mapping.scope.model_dump(), "when": {"client_id": "12"}})
    yield from _world(directory, example_mapping.model_copy(update={"scope": scope}), tmp_path)


def test_an_agent_a_service_account_and_another_clients_user_get_no_account(client_world: World) -> None:
    agent = new_user("Agnes", "Agent", client_id=12, linked_agent_id=7)
    service = new_user("Svc", "Backup", client_id=12, isserviceaccount=True)
    stranger = new_user("Olga", "Other", client_id=13)
    member = new_user("Mia", "Member", client_id=12, linked_agent_id=0, isserviceaccount=False)
    answer = client_world.accept([delivery("created", u) for u in (agent, service, stranger, member)])
    assert len(answer["accepted"]) == 4  # accepted, planned to nothing, audited
    client_world.drain()
    reasons = {"linked to agent 7": agent, "isserviceaccount": service, "client_id = '13'": stranger}
    for reason, user in reasons.items():
        assert client_world.account(user["id"]) is None
        audit = client_world.audit(user["id"])
        assert [(e.action, e.outcome) for e in audit] == [("scope", "out_of_scope")]
        assert reason in audit[0].message
    assert client_world.account(member["id"]) is not None


@pytest.fixture
def guarded_world(directory: DCInfo, example_mapping: Mapping, tmp_path: Path) -> Iterator[World]:
    yield from _world(directory, example_mapping, tmp_path, guard_max_joiners=2, guard_window_seconds=3600)


def test_a_burst_of_joiners_past_the_limit_is_held_and_none_of_the_rest_created_until_approved(
    guarded_world: World,
) -> None:
    from lifecycle.guard import MassChangeGuard

    world = guarded_world
    users = [new_user("Burst", f"Joiner{i}") for i in range(5)]
    world.accept([delivery("created", u) for u in users])
    world.drain()
    created = [u for u in users if world.account(u["id"]) is not None]
    assert len(created) == 2
    held = world.runtime.store.held()
    assert sorted(h.user_id for h in held) == sorted(u["id"] for u in users if u not in created)
    assert {h.lifecycle for h in held} == {"joiner"}
    for user in users:
        if user not in created:
            assert [e.outcome for e in world.audit(user["id"])] == ["held"]
    # Approving one releases exactly that one; rejecting another drops it for good.
    guard = MassChangeGuard(world.runtime.settings, world.runtime.store)
    guard.approve(held[0].held_id, world.runtime.queue, by="alice", source="test")
    guard.reject(held[1].held_id, by="bob", source="test")
    world.drain()
    assert world.account(held[0].user_id) is not None
    assert world.account(held[1].user_id) is None
    assert world.account(held[2].user_id) is None
