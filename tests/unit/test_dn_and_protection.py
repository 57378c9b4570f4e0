"""DNs are built, not concatenated, and one protection check decides for AD, home folders and scripts.

Each test here failed on the code before issue 14: Halo fields went into DN templates unescaped, protected
DNs were compared with their escapes kept, and scripts looked at ``adminCount`` only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from lifecycle import dn as dns
from lifecycle.errors import ConfigurationError, PolicyRefused
from lifecycle.mapping.planner import PlanContext, plan
from lifecycle.mapping.schema import parse_mapping
from lifecycle.mapping.templates import MissingField, UnsafeDN, render_dn, table_fields
from lifecycle.protection import Policy, privileged_sid
from lifecycle.targets import StepContext
from lifecycle.targets.ad import Account
from lifecycle.targets.files_actions import FileRoot
from lifecycle.targets.homefolders import HomeFolderTarget
from lifecycle.targets.script_actions import ScriptEntry
from lifecycle.targets.scripts import ScriptTarget
from lifecycle.work import LifecycleEvent, Step, WorkItem
from tests.conftest import ROOT

BASE = "DC=corp,DC=example,DC=test"
SERVICE_OU = f"OU=Service Accounts,OU=Halo,{BASE}"
TIER0 = f"CN=Dept Tier0Admins,OU=Groups,OU=Halo,{BASE}"


def test_a_comma_or_an_escape_in_a_field_stays_one_value_of_one_rdn() -> None:
    context = {"department": "x,OU=Service Accounts", "base_dn": BASE}
    rendered = render_dn("OU={department},OU=Halo,{base_dn}", context)
    assert rendered == f"OU=x\\,OU\\=Service Accounts,OU=Halo,{BASE}"
    assert dns.rdn_count(rendered) == 2 + dns.rdn_count(BASE)
    sneaky = render_dn("OU={team},OU=Halo,{base_dn}", {"team": "\\53ervice Accounts", "base_dn": BASE})
    assert dns.parse(sneaky)[0] == (("ou", "\\53ervice accounts"),)  # a literal backslash, not an 'S'
    for value in ("#x", " lead", "trail ", "a+b", 'q"<>;=', "nul\x00"):
        first = dns.parse(render_dn("CN={v},{base_dn}", {"v": value, "base_dn": BASE}))[0]
        assert first == (("cn", value.casefold().strip(" ")),)


def test_the_rdn_filter_is_added_once_and_base_dn_stays_a_dn() -> None:
    assert render_dn("OU={a|rdn},{base_dn}", {"a": "x,y", "base_dn": BASE}) == f"OU=x\\,y,{BASE}"
    # A filter after rdn cannot undo the escape: rdn is added again as the last filter.
    undo = render_dn("OU={a|rdn|replace:\\:},{base_dn}", {"a": "x,OU=y", "base_dn": BASE})
    assert dns.rdn_count(undo) == 1 + dns.rdn_count(BASE)


def test_a_rendered_dn_is_reused_only_for_the_same_inputs_and_a_refusal_is_never_remembered() -> None:
    # render_dn remembers results by the fields the template reads plus base_dn (the planner renders the same
    # group DNs for every joiner); a different value or base DN renders anew, and an unsafe one fails each time.
    template = "OU={department},OU=Halo,{base_dn}"
    assert render_dn(template, {"department": "Sales", "base_dn": BASE}) == f"OU=Sales,OU=Halo,{BASE}"
    assert render_dn(template, {"department": "Sales", "base_dn": BASE, "site": "x"}) == f"OU=Sales,OU=Halo,{BASE}"
    assert render_dn(template, {"department": "HR", "base_dn": BASE}) == f"OU=HR,OU=Halo,{BASE}"
    assert render_dn("OU=Staff,{base_dn}", {"base_dn": "DC=a"}) == "OU=Staff,DC=a"
    assert render_dn("OU=Staff,{base_dn}", {"base_dn": "DC=b"}) == "OU=Staff,DC=b"
    # map reads the mapping's tables from the context, besides the field: never answered from memory.
    mapped = "OU={department|map:t},{base_dn}"
    for table, ou in (({"sales": "Vertrieb"}, "Vertrieb"), ({"sales": "Ventes"}, "Ventes")):
        assert render_dn(mapped, {"department": "Sales", "base_dn": BASE, **table_fields({"t": table})}) == (
            f"OU={ou},{BASE}"
        )
    for _ in range(2):
        with pytest.raises(UnsafeDN):
            render_dn("OU=Staff,{base_dn}", {"base_dn": "DC=a,"})
        with pytest.raises(MissingField):
            render_dn(template, {"base_dn": BASE})
        with pytest.raises(UnsafeDN, match="extended DN"):
            render_dn("{base_dn}", {"base_dn": "<SID=S-1-5-21-1-2-3-512>"})


def test_a_rendered_dn_must_parse_and_extended_dns_are_refused() -> None:
    with pytest.raises(UnsafeDN, match="extended DN"):
        render_dn("{base_dn}", {"base_dn": "<SID=S-1-5-21-1-2-3-512>"})
    with pytest.raises(UnsafeDN):
        render_dn("OU=Staff,{base_dn}", {"base_dn": f"{BASE},"})
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    for bad in ("<SID=S-1-5-21-1-2-3-512>", "<GUID=0b0e2f3c-0000-0000-0000-000000000000>"):
        with pytest.raises(ConfigurationError, match="extended DN"):
            parse_mapping(text.replace('"OU=Staff,OU=Halo,{base_dn}"', f'"{bad}"'), "bad.toml")


def test_planned_ous_carry_halo_fields_escaped() -> None:
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    text = text.replace('ou = "OU=Main,OU=Staff,OU=Halo,{base_dn}"', 'ou = "OU={cf.team},OU=Staff,OU=Halo,{base_dn}"')
    mapping = parse_mapping(text, "team.toml")
    event = LifecycleEvent(
        kind="created",
        user_id=7,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        source="webhook",
        user={
            "id": 7,
            "firstname": "Eve",
            "surname": "Il",
            "site_name": "Main",
            "customfields": [{"name": "Team", "value": "x,OU=Service Accounts,OU=Halo"}],
        },
    )
    item = plan(event, mapping, work_id="w", context=PlanContext({"default": BASE}))
    ou = next(s for s in item.steps if s.action == "create_user").params["ou"]
    assert ou == f"OU=x\\,OU\\=Service Accounts\\,OU\\=Halo,OU=Staff,OU=Halo,{BASE}"
    assert not dns.is_under(ou, SERVICE_OU)


def test_protected_dns_compare_unescaped_whatever_the_spelling() -> None:
    policy = Policy(protected_groups=(TIER0,), protected_ous=(SERVICE_OU,))
    for spelling in (
        f"OU=\\53ervice Accounts,OU=Halo,{BASE}",
        f"ou=service accounts,ou=halo,{BASE.lower()}",
        f"OU=Sub,OU=  Service Accounts ,OU=Halo,{BASE}",
    ):
        assert policy.ou_refusal(spelling), spelling
    assert policy.group_refusal(f"CN=Dept Tier0\\41dmins,OU=Groups,OU=Halo,{BASE}")
    assert policy.group_refusal("<GUID=00000000-0000-0000-0000-000000000000>")
    assert policy.ou_refusal("<SID=S-1-5-21-1-2-3-512>")
    assert policy.group_refusal(f"CN=Other,OU=Groups,OU=Halo,{BASE}") is None


def test_privileged_groups_and_accounts_are_protected_whatever_the_configuration() -> None:
    domain = "S-1-5-21-1111-2222-3333"
    for rid in (500, 502, 512, 518, 519):
        assert privileged_sid(f"{domain}-{rid}")
    for rid in (544, 548, 549, 550, 551, 552):
        assert privileged_sid(f"S-1-5-32-{rid}")
    assert privileged_sid(f"{domain}-513") is None and privileged_sid(f"{domain}-1105") is None
    policy = Policy()
    assert policy.group_refusal(f"CN=x,{BASE}", sid=f"{domain}-512")
    assert policy.group_refusal(f"CN=x,{BASE}", admin_count="1")
    administrator = Account(f"CN=Administrator,CN=Users,{BASE}", {"objectsid": [f"{domain}-500"]})
    assert policy.account_refusal(administrator)
    member = Account(f"CN=M,OU=Staff,{BASE}", {"memberof": [TIER0]}, privileged_groups={"cn=x"})
    assert policy.account_refusal(member)


def test_groups_and_ous_outside_the_managed_containers_are_refused() -> None:
    policy = Policy(managed_containers=(f"OU=Halo,{BASE}",))
    assert policy.ou_refusal(f"OU=Staff,OU=Halo,{BASE}") is None
    assert "outside the managed containers" in (policy.ou_refusal(f"CN=Users,{BASE}") or "")
    assert "outside" in (policy.group_refusal(f"CN=Finance,CN=Users,{BASE}") or "")
    assert policy.group_refusal(f"CN=Finance,CN=Users,{BASE}", check_managed=False) is None


def _context(who: Account, action: str, params: dict[str, object]) -> StepContext:
    step = Step(key="02-x", action=action, system="script", target="default", params=params)
    event = LifecycleEvent(
        kind="updated", user_id=9, occurred_at=datetime(2026, 1, 1, tzinfo=UTC), source="webhook", user={"id": 9}
    )
    return StepContext(
        item=WorkItem(work_id="w-9", lifecycle="mover", event=event, steps=[step]),
        step=step,
        dry_run=True,
        ad_account=lambda: who,
    )


@pytest.mark.parametrize(
    "who",
    [
        Account(f"CN=T,OU=Staff,OU=Halo,{BASE}", {"memberof": [f"CN=Dept Tier0\\41dmins,OU=Groups,OU=Halo,{BASE}"]}),
        Account(f"CN=S,OU=\\53ervice Accounts,OU=Halo,{BASE}", {}),
        Account(f"CN=P,OU=Staff,OU=Halo,{BASE}", {"memberof": [f"CN=Ops,{BASE}"]}, privileged_groups={"x"}),
    ],
    ids=["escaped protected group", "escaped protected OU", "privileged group"],
)
def test_scripts_and_home_folders_apply_the_same_protection_as_ad(tmp_path: Path, who: Account) -> None:
    policy = Policy(protected_groups=(TIER0,), protected_ous=(SERVICE_OU,))
    scripts = ScriptTarget(
        "default", {"s": ScriptEntry(kind="python", target="x:y")}, scripts_dir=tmp_path, policy=policy
    )
    with pytest.raises(PolicyRefused, match="protected"):
        scripts.run(_context(who, "run_script", {"script": "s", "args": {}}))
    files = HomeFolderTarget("default", {"home": FileRoot(path=str(tmp_path))}, policy=policy)
    with pytest.raises(PolicyRefused, match="protected"):
        files.run(_context(who, "delete_home_folder", {"path": f"{tmp_path}/x"}))
