"""``lifecycle impact`` through the Halo API (the stand-in of its Users API): every listed user is planned under
both mappings, and nothing is written anywhere: no Halo write, no message, no audit record, no person record."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lifecycle import cli
from lifecycle.halo.client import HaloClient
from lifecycle.local.samba import DCInfo
from lifecycle.mapping.planner import plan
from lifecycle.mapping.schema import Mapping
from lifecycle.work import LifecycleEvent
from tests.conftest import ROOT
from tests.integration.conftest import new_user
from tests.integration.test_halo_api_with_ad import make_world
from tests.standins.halo import HaloStandIn, UserSet

pytestmark = pytest.mark.integration
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def test_impact_reads_every_user_through_the_halo_api_and_changes_nothing(
    directory: DCInfo,
    example_mapping: Mapping,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    standin = HaloStandIn(UserSet(30, first_id=9_300_000), rate_limit=100_000, rate_window=1.0).start()
    world = make_world(directory, tmp_path, example_mapping, standin)
    try:
        standin.users.add(new_user("Impact", "London", site_name="London"))
        text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
        renamed = text.replace("CN=All Staff,OU=Groups", "CN=Everyone,OU=Groups")
        assert renamed != text
        (tmp_path / "new.toml").write_text(renamed, encoding="utf-8")
        monkeypatch.setattr(cli, "_runtime", lambda: world.runtime)
        monkeypatch.setattr(world.runtime, "close", lambda: None)  # the fixture closes it
        assert cli.main(["impact", "--mapping", str(tmp_path / "new.toml"), "--json", "--examples", "2"]) == 1
        report = json.loads(capsys.readouterr().out)

        halo = world.runtime.halo
        assert isinstance(halo, HaloClient)
        listed = list(halo.list_users())
        in_scope = 0
        for user in listed:
            user_id = int(user["id"])
            event = LifecycleEvent(kind="created", user_id=user_id, occurred_at=EPOCH, source="reconcile", user=user)
            in_scope += plan(event, example_mapping, work_id="x").lifecycle != "out_of_scope"
        assert report["people"] == len(listed) and in_scope > 0
        assert report["counts"]["groups_changed"] == in_scope  # everyone in scope swaps All Staff for Everyone
        assert report["counts"]["moved"] == 0 and report["counts"]["left_scope"] == 0
        assert len(report["examples"]["groups_changed"]) == 2
        assert report["examples"]["groups_changed"][0]["join"][0].startswith("CN=Everyone,OU=Groups")
        # Read only: Halo was only read, nothing was queued, audited or recorded.
        assert not [route for route in standin.routes if route.startswith("POST /api/Users")]
        assert world.runtime.queue.receive(timeout=0) is None
        assert world.runtime.store.audit() == []
    finally:
        world.worker.close()
        world.ldap.unbind()
        type(world.runtime).close(world.runtime)
        standin.stop()

