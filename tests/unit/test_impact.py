"""``lifecycle impact``: a mapping change is reviewed like code. Each person is planned under the mapping in
force and under the new one (the pure planner), and the report counts who would be created, moved, regrouped,
stripped of a licence or dropped from the scope, without touching anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lifecycle.cli import main
from lifecycle.impact import compare
from lifecycle.mapping.planner import PlanContext
from lifecycle.mapping.schema import Mapping, parse_mapping
from tests.conftest import ROOT

BASE = "DC=corp,DC=example,DC=test"
JOINER = 'joiner = ["create_user", "modify_properties", "move_ou", "sync_groups"]'
LICENSED = (
    'joiner = ["create_user", "modify_properties", "move_ou", "sync_groups", '
    '{ action = "assign_licenses", when = { department = "Sales" }, skus = ["SPE_E3"] }]'
)


def _mapping(text: str) -> Mapping:
    return parse_mapping(text, "impact-test.toml")


@pytest.fixture
def current_text() -> str:
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    assert JOINER in text
    return text.replace(JOINER, LICENSED)


def _proposed(current: str) -> str:
    """London moves to a UK OU, Sales loses its group and its licence, and client Acme leaves the scope."""
    text = current.replace('ou = "OU=London,OU=Staff,OU=Halo,{base_dn}"', 'ou = "OU=UK,OU=Staff,OU=Halo,{base_dn}"')
    text = text.replace(LICENSED, JOINER)
    text = text.replace(
        '[[groups.rules]]\nwhen = { department = "Sales" }\ngroups = ["CN=Sales,OU=Groups,OU=Halo,{base_dn}"]\n', ""
    )
    return text.replace('scope_exit = "report"', 'scope_exit = "report"\nwhen = { client_name = { not = "Acme" } }')


def _user(user_id: int, **fields: Any) -> dict[str, Any]:
    return {"id": user_id, "name": f"Person {user_id}", "firstname": "P", "surname": str(user_id), **fields}


PEOPLE = [
    (_user(1, site_name="London", department="Sales", client_name="Demo"), "active"),
    (_user(2, site_name="Main", department="Engineering", client_name="Demo"), "active"),
    (_user(3, site_name="Main", department="Engineering", client_name="Acme"), "active"),
    (_user(4, site_name="London", department="Sales", client_name="Demo", inactive=True), "left"),
    (_user(5, site_name="Main", department="Support", client_name="Demo"), "unknown"),
]


def test_the_report_counts_each_kind_of_change_with_examples(current_text: str) -> None:
    current, new = _mapping(current_text), _mapping(_proposed(current_text))
    report = compare(PEOPLE, current, new, context=PlanContext({"default": BASE}), examples=5)  # type: ignore[arg-type]
    assert report.people == 5 and report.left == 1
    assert report.counts == {
        "created": 0, "rehired": 0, "moved": 1, "groups_changed": 1, "licences_lost": 1, "left_scope": 1
    }  # fmt: skip
    assert report.unchanged == 3  # users 2 and 5, and 4 (left: the leaver's disabled OU is the same)
    (moved,) = report.examples["moved"]
    assert moved["user_id"] == 1 and "OU=London" in moved["change"] and "OU=UK" in moved["change"]
    (groups,) = report.examples["groups_changed"]
    assert groups["leave"] == [f"CN=Sales,OU=Groups,OU=Halo,{BASE}"] and groups["join"] == []
    assert report.examples["licences_lost"][0]["licences"] == ["SPE_E3"]
    assert report.examples["left_scope"][0]["user_id"] == 3
    # The other way round the same change is a creation (Acme enters the scope).
    back = compare(PEOPLE, new, current, context=PlanContext({"default": BASE}))  # type: ignore[arg-type]
    assert back.counts["created"] == 1 and back.examples["created"][0]["user_id"] == 3


def test_people_recorded_as_left_are_replayed_as_they_last_were(current_text: str) -> None:
    """Issue 14: people who left were not compared at all; a mapping that re-enables them or moves their disabled
    account is now reported."""
    current, proposed = _mapping(current_text), _mapping(_proposed(current_text))
    context = PlanContext({"default": BASE})
    left = [
        # A leaver (inactive in Halo) of the client the proposed mapping drops from the scope.
        (_user(11, site_name="Main", department="Support", client_name="Acme", inactive=True), "left"),
        # Recorded as left but active in Halo again: the next event rehires them, if the scope allows.
        (_user(12, site_name="Main", department="Support", client_name="Acme"), "left"),
        (_user(13, site_name="Main", department="Support", client_name="Demo", inactive=True), "left"),
    ]
    # The mapping that scopes Acme out, replaced by today's: user 12 would be re-enabled, user 11's leaver
    # steps would apply again, user 13 is unchanged.
    report = compare(left, proposed, current, context=context)  # type: ignore[arg-type]
    assert report.people == 3 and report.left == 3 and report.unchanged == 1
    assert report.counts["rehired"] == 1 and report.examples["rehired"][0]["user_id"] == 12
    assert "rehire" in report.examples["rehired"][0]["change"]
    assert [e["user_id"] for e in report.examples["moved"]] == [11]
    # The other way round: user 12 would no longer be re-enabled, user 11's leaver no longer applies.
    back = compare(left, current, proposed, context=context)  # type: ignore[arg-type]
    assert back.counts["rehired"] == 0 and sorted(e["user_id"] for e in back.examples["left_scope"]) == [11, 12]
    # A new disabled OU moves every left person's account.
    moved_text = current_text.replace(
        'disabled = "OU=Disabled,OU=Halo,{base_dn}"', 'disabled = "OU=Gone,OU=Halo,{base_dn}"'
    )
    moved = compare(left, current, _mapping(moved_text), context=context)  # type: ignore[arg-type]
    assert moved.counts["moved"] == 2 and moved.unchanged == 1  # 11 and 13 (disabled); 12 is a rehire in both
    assert f"OU=Gone,OU=Halo,{BASE}" in moved.examples["moved"][0]["change"]
    assert "1 recorded as left" not in moved.summary() and "3 recorded as left" in moved.summary()


def test_the_same_mapping_changes_nothing_and_examples_are_capped(current_text: str) -> None:
    current = _mapping(current_text)
    many = [(_user(100 + i, site_name="London", department="Sales", client_name="Demo"), "active") for i in range(20)]
    assert compare(many, current, current).unchanged == 20  # type: ignore[arg-type]
    moved = compare(many, current, _mapping(_proposed(current_text)), examples=3)  # type: ignore[arg-type]
    assert moved.counts["moved"] == 20 and len(moved.examples["moved"]) == 3


def test_the_cli_reports_from_a_users_file_changes_nothing_and_exits_1_on_changes(
    current_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "current.toml").write_text(current_text, encoding="utf-8")
    (tmp_path / "new.toml").write_text(_proposed(current_text), encoding="utf-8")
    (tmp_path / "users.json").write_text(json.dumps({"users": [u for u, _ in PEOPLE]}), encoding="utf-8")
    data = tmp_path / "data"
    monkeypatch.setenv("LIFECYCLE_MAPPING_FILE", str(tmp_path / "current.toml"))
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(data))
    monkeypatch.setenv("LIFECYCLE_AD_BASE_DN", BASE)
    argv = ["impact", "--mapping", str(tmp_path / "new.toml"), "--users", str(tmp_path / "users.json"), "--json"]
    assert main(argv) == 1
    report = json.loads(capsys.readouterr().out)
    # Nobody is "left" in the store: user 4 (inactive in Halo) is planned as it comes, and is unchanged.
    assert report["counts"]["moved"] == 1 and report["counts"]["left_scope"] == 1 and report["left"] == 0
    assert main(["impact", "--mapping", str(tmp_path / "current.toml"), "--users", str(tmp_path / "users.json")]) == 0
    assert "0  would move" in capsys.readouterr().out
    # Nothing was queued or recorded: the data folder holds empty stores only.
    from lifecycle.runtime import Runtime

    runtime = Runtime()
    try:
        assert runtime.queue.receive(timeout=0) is None
        assert runtime.store.audit() == [] and runtime.store.get_person(1) is None
    finally:
        runtime.close()


def test_a_bad_new_mapping_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.toml").write_text("version = 1\n[ou]\ndefault = '<SID=S-1-5-21-1-2-3-512>'\n", encoding="utf-8")
    assert main(["impact", "--mapping", str(tmp_path / "bad.toml"), "--users", "/nonexistent"]) == 3  # invalid config
    err = capsys.readouterr().err
    assert err.startswith("lifecycle: error: ") and "bad.toml" in err and len(err.strip().splitlines()) == 1
