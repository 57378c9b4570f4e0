"""The delta poll against the Halo stand-in and the real DC: changes made in Halo reach AD at the next poll."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import Mapping
from lifecycle.poll import run_poll
from tests.integration.conftest import delivery, new_user
from tests.integration.test_halo_api_with_ad import HaloWorld, make_world
from tests.standins.halo import HaloStandIn, UserSet

_blocks = itertools.count(8_100_000, 10_000)


def _world(directory: DCInfo, mapping: Mapping, tmp_path: Path, *, list_ulastupdate: bool) -> Iterator[HaloWorld]:
    standin = HaloStandIn(
        UserSet(20, first_id=next(_blocks)), rate_limit=100_000, rate_window=1.0, list_ulastupdate=list_ulastupdate
    ).start()
    world = make_world(directory, tmp_path, mapping, standin)
    yield world
    world.worker.close()
    world.ldap.unbind()
    world.runtime.close()
    standin.stop()


@pytest.fixture
def poll_world(directory: DCInfo, example_mapping: Mapping, tmp_path: Path) -> Iterator[HaloWorld]:
    yield from _world(directory, example_mapping, tmp_path, list_ulastupdate=True)


def api_requests(standin: HaloStandIn) -> int:
    return sum(count for route, count in standin.routes.items() if "/api/Users" in route)


def test_a_user_changed_in_halo_reaches_ad_at_the_next_poll_and_a_quiet_poll_costs_one_request(
    poll_world: HaloWorld,
) -> None:
    world, standin = poll_world, poll_world.standin
    known = standin.users.add(new_user("Polly", "Changed", department="Sales"))
    world.accept(delivery("created", known))
    assert [r.outcome for r in world.drain()] == ["completed"]

    first = run_poll(world.runtime)
    assert first.first_run and first.sent == 0  # the mark is set; history is the reconcile's job
    before = api_requests(standin)
    quiet = run_poll(world.runtime)
    assert quiet.changed == [] and api_requests(standin) - before == 1

    standin.users.update(known["id"], {"department": "Engineering"})
    joiner = standin.users.add(new_user("Newton", "Polled"))
    changed = run_poll(world.runtime)
    assert sorted(changed.changed) == sorted([known["id"], joiner["id"]]) and changed.sent == 2
    world.drain()
    account = world.account(known["id"])
    assert account is not None and account["department"] == "Engineering"
    assert world.account(joiner["id"]) is not None
    sources = {e.requested_by.get("source") for e in world.audit(joiner["id"])}
    assert sources == {"poll"}

    # The mark moved: the next poll is quiet again, one request, and sends nothing twice.
    before = api_requests(standin)
    again = run_poll(world.runtime)
    assert again.changed == [] and api_requests(standin) - before == 1


def test_an_out_of_scope_user_changed_in_halo_is_planned_to_nothing(poll_world: HaloWorld) -> None:
    world, standin = poll_world, poll_world.standin
    run_poll(world.runtime)
    agent = standin.users.add(new_user("Agnes", "Polled", linked_agent_id=4))
    report = run_poll(world.runtime)
    assert report.changed == [agent["id"]]
    world.drain()
    assert world.account(agent["id"]) is None
    assert [e.outcome for e in world.audit(agent["id"])] == ["out_of_scope"]


def test_without_ulastupdate_in_list_items_a_quiet_poll_costs_two_requests(
    directory: DCInfo, example_mapping: Mapping, tmp_path: Path
) -> None:
    for world in _world(directory, example_mapping, tmp_path, list_ulastupdate=False):
        run_poll(world.runtime)
        before = api_requests(world.standin)
        assert run_poll(world.runtime).changed == []
        assert api_requests(world.standin) - before == 2  # the list, and the newest user to read its stamp
        changed = world.standin.users.add(new_user("Stamp", "Less"))
        assert run_poll(world.runtime).changed == [changed["id"]]


# Write-back of custom fields, and details on GET /api/Users/{id} ---------------------------------------------
def test_write_back_sets_custom_fields_and_login_only_when_the_step_names_it(
    directory: DCInfo, tmp_path: Path
) -> None:
    from lifecycle.errors import ConfigurationError
    from lifecycle.mapping.schema import parse_mapping
    from lifecycle.targets.halo_writeback import HaloWritebackTarget
    from tests.conftest import ROOT

    step = (
        '{ action = "halo_writeback", fields = { samaccountname = "samaccountname" }, customfields = ['
        '{ name = "CFEmployeeType", value = "department" }, { id = 102, value = "{{samaccountname}}-x" }] }'
    )
    joiner = 'joiner = ["create_user", "modify_properties", "move_ou", "sync_groups"]'
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    mapping = parse_mapping(text.replace(joiner, joiner[:-1] + f", {step}]"), "custom write-back")
    for world in _world(directory, mapping, tmp_path, list_ulastupdate=True):
        standin = world.standin
        user = standin.users.add(new_user("Cara", "Custom", department="Engineering"))
        world.accept(delivery("created", user))
        assert [r.outcome for r in world.drain()] == ["completed"]
        account = world.account(user["id"])
        assert account is not None
        [[written]] = standin.writes
        assert "login" not in written  # the step does not name it
        assert written["customfields"] == [
            {"name": "CFEmployeeType", "value": "Engineering"},
            {"id": 102, "value": f"{account['sAMAccountName']}-x"},
        ]
        saved = standin.users.get(user["id"])
        assert saved is not None
        values = {c.get("name") or c.get("id"): c.get("value") for c in saved["customfields"]}
        assert values["CFEmployeeType"] == "Engineering"
        # The worker asked for the user's details (custom fields come with them).
        assert world.runtime.halo is not None
        fetched = world.runtime.halo.fetch_user(user["id"])
        assert fetched is not None and fetched["customfields"]
        # login is never a default write-back field: only a step that names it writes it.
        world.runtime.settings = world.runtime.settings.model_copy(
            update={"halo_writeback_fields": {"login": "{upn}"}}
        )
        with pytest.raises(ConfigurationError, match="login"):
            HaloWritebackTarget("default", world.runtime)


def test_a_burst_larger_than_the_poll_reads_says_the_rest_is_left_to_the_reconcile(
    poll_world: HaloWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lifecycle.poll

    world, standin = poll_world, poll_world.standin
    world.runtime.settings = world.runtime.settings.model_copy(update={"halo_poll_page_size": 2})
    monkeypatch.setattr(lifecycle.poll, "MAX_PAGES", 1)
    run_poll(world.runtime)
    burst = [standin.users.add(new_user("Bulk", f"Import{n}")) for n in range(3)]
    report = run_poll(world.runtime)
    assert report.changed == [burst[2]["id"], burst[1]["id"]]  # newest first, one page of two
    assert "left to the reconcile" in report.note
