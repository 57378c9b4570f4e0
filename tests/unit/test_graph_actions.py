"""The Microsoft 365 action vocabulary: params validated at load time, documented, and off the ingress path."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lifecycle.actions import registry
from lifecycle.errors import ConfigurationError
from lifecycle.mapping.planner import plan
from lifecycle.mapping.schema import load_mapping, parse_mapping
from lifecycle.targets.graph_actions import ACTIONS
from lifecycle.work import LifecycleEvent
from tests.conftest import EVENTS, ROOT

MINIMAL = """
version = 1
[naming]
samaccountname = ["{firstname}"]
userprincipalname = "{samaccountname}@x.test"
[ou]
default = "OU=Staff,{base_dn}"
[lifecycles]
mover = ["modify_properties"]
leaver = ["disable_user"]
rehire = ["enable_user"]
"""


def with_joiner(steps: str) -> str:
    return MINIMAL + f"joiner = [{steps}]\n"


def test_every_m365_action_is_registered_with_a_params_model() -> None:
    table = registry()
    for action in ACTIONS:
        assert table[action.name] is action and action.params is not None


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ('{ action = "assign_licenses", skus = [] }', "skus"),
        ('{ action = "assign_licenses", skus = ["SPE_E3"], usage_location = "GBR" }', "usage_location"),
        ('{ action = "set_auto_reply", internal_message = "x", start = "2030-01-01T00:00:00Z" }', "both start and end"),
        ('{ action = "add_to_cloud_groups", group_ids = [] }', "group_ids"),
        ('{ action = "disable_lync", state = "off" }', "state"),
        ('{ action = "create_remote_mailbox" }', "routing_domain"),
    ],
)
def test_a_wrong_step_is_refused_when_the_mapping_is_planned_or_loaded(step: str, message: str) -> None:
    try:
        mapping = parse_mapping(with_joiner(step), "m.toml")
    except ConfigurationError as exc:
        assert message in str(exc)
        return
    event = LifecycleEvent(
        kind="created", user_id=1, occurred_at=datetime.now(UTC), source="runbook", user={"id": 1, "firstname": "A"}
    )
    with pytest.raises(ConfigurationError, match=message):
        plan(event, mapping, work_id="w")


def test_the_planner_renders_templates_and_drops_a_photo_whose_field_is_absent() -> None:
    mapping = load_mapping(EVENTS / "mapping-m365.toml")
    user = {"id": 7, "name": "Ada Lovelace", "firstname": "Ada", "surname": "Lovelace", "site_name": "Main"}
    event = LifecycleEvent(kind="created", user_id=7, occurred_at=datetime.now(UTC), source="runbook", user=user)
    steps = {s.action: s for s in plan(event, mapping, work_id="w").steps}
    assert steps["assign_licenses"].system == "graph"
    assert steps["assign_licenses"].params["usage_location"] == "GB"
    assert steps["assign_licenses"].params["skus"] == [{"sku": "SPE_E3", "disabled_plans": ["SHAREPOINTENTERPRISE"]}]
    assert steps["create_remote_mailbox"].system == "ad"
    assert "base64" not in steps["set_photo"].params  # no photo in the event: the step changes nothing
    assert "add_to_cloud_groups" in steps  # the unconditional one; the Sales one is skipped by its `when`


def test_the_example_mapping_still_loads_and_its_m365_examples_are_valid() -> None:
    load_mapping(ROOT / "mapping.example.toml")
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    examples = [line.lstrip("# ").rstrip(",") for line in text.splitlines() if line.startswith("#   { action")]
    assert len(examples) >= 10
    for example in examples:
        parse_mapping(with_joiner(example), "example")


def test_the_deployment_doc_names_a_graph_permission_for_every_graph_action() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    section = doc.split("## Microsoft 365 actions: Graph permissions per action", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    for action in ACTIONS:
        row = next((r for r in rows if f"`{action.name}`" in r), None)
        if action.system == "graph":
            assert row is not None, action.name
            assert re.search(r"`[A-Za-z-]+\.(ReadWrite|Read|EnableDisableAccount|RevokeSessions|Send)(\.All)?`", row)
        else:
            assert f"`{action.name}`" in section, action.name


def test_the_ingress_path_never_loads_the_graph_sdk_msal_or_pillow(tmp_path: Path) -> None:
    body = json.dumps(
        {
            "event": "created",
            "user_id": 5,
            "user": {"id": 5, "name": "A B", "firstname": "A", "surname": "B", "photo_base64": "AAAA"},
        }
    )
    script = f"""
import sys, json
from lifecycle.ingress import Ingress, Request
from lifecycle.runtime import Runtime
from lifecycle.settings import Settings
from lifecycle.mapping.schema import load_mapping
mapping_file = {str(EVENTS / "mapping-m365.toml")!r}
settings = Settings(mapping_file=mapping_file, data_dir={str(tmp_path)!r}, webhook_auth="none")
request = Request("POST", {body!r}.encode(), {{"Content-Type": "application/json"}}, {{"dry_run": "true"}})
answer = Ingress(Runtime(settings)).events(request)
assert answer.status == 200, answer.body
assert b"assign_licenses" in answer.body
loaded = {{m.split(".")[0] for m in sys.modules}}
heavy = sorted(loaded & {{"msgraph", "msgraph_core", "kiota_http", "msal", "PIL", "requests"}})
print(json.dumps(heavy))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_reply_text_is_cut_in_linear_time_and_reads_as_the_tag_stripping_expression_did() -> None:
    import concurrent.futures
    import html as html_module

    from lifecycle.targets.graph.mailboxes import text_of

    def by_expression(value: str) -> str:
        return " ".join(html_module.unescape(re.sub(r"<[^>]+>", " ", value)).split())

    samples = ["<html><body><div>Gone &amp; away</div></body></html>", "a < b and c > d", "<<a>b", "x <> y", "<open"]
    for sample in samples:
        assert text_of(sample) == by_expression(sample), sample
    # Halo text of 200,000 "<" without a ">": the expression rescans the rest from each one (quadratic, hours);
    # one pass with str.find is milliseconds. A run still going after 20 s fails instead of hanging.
    hostile = "<" * 200_000
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        assert pool.submit(text_of, hostile).result(timeout=20) == hostile
    finally:
        pool.shutdown(wait=False)
