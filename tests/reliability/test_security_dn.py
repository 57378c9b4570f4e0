"""Issue 14, DNs and protection, against the real Samba DC: a hostile Halo field or an escaped spelling never
reaches a protected OU or group, and privileged groups are protected whatever the configuration.

Every test here failed on the code before: DN templates took Halo fields unescaped, protected OUs and groups
were compared as strings with their escapes kept (``OU=\\53ervice Accounts`` passed, and the directory
resolved it to the protected OU), and groups were never checked for ``adminCount=1`` or a privileged RID.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import ldap3  # type: ignore[import-untyped]
import pytest

from lifecycle.errors import Permanent, PolicyRefused
from lifecycle.mapping.schema import Mapping, parse_mapping
from lifecycle.protection import Policy
from lifecycle.targets.ad import ADTarget, Anchor
from tests.conftest import ROOT
from tests.integration.conftest import delivery, new_user
from tests.reliability.conftest import Harness, record_figures

pytestmark = [pytest.mark.integration, pytest.mark.slow]
GLOBAL_SECURITY_GROUP = -2147483646


def _add(ldap: Any, dn: str, classes: list[str], attributes: dict[str, Any] | None = None) -> None:
    with contextlib.suppress(ldap3.core.exceptions.LDAPEntryAlreadyExistsResult):
        ldap.add(dn, classes, attributes or {})


@pytest.fixture
def directory_objects(harness: Callable[..., Harness]) -> Iterator[dict[str, str]]:
    """The protected OU (with a sub-OU), a protected group, an adminCount=1 group and an unmanaged group."""
    probe = harness()
    ldap, base = probe.ldap, probe.info.base_dn
    dns = {
        "service": f"OU=Service Accounts,OU=Halo,{base}",
        "service_sub": f"OU=Sub,OU=Service Accounts,OU=Halo,{base}",
        "tier0": f"CN=Dept Tier0Admins,OU=Groups,OU=Halo,{base}",
        "admincount": f"CN=Ops Elevated,OU=Groups,OU=Halo,{base}",
        "unmanaged": f"CN=Finance Share,CN=Users,{base}",
        "staff": f"OU=Staff,OU=Halo,{base}",
    }
    _add(ldap, dns["service"], ["top", "organizationalUnit"])
    _add(ldap, dns["service_sub"], ["top", "organizationalUnit"])
    for name in ("tier0", "admincount", "unmanaged"):
        _add(ldap, dns[name], ["top", "group"], {"groupType": GLOBAL_SECURITY_GROUP})
    ldap.modify(dns["admincount"], {"adminCount": [(ldap3.MODIFY_REPLACE, ["1"])]})
    yield dns


def _users_under(service: Harness, container: str) -> set[str]:
    service.ldap.search(container, "(objectClass=user)", ldap3.SUBTREE, attributes=["cn"])
    return {str(e["dn"]) for e in service.ldap.response if e.get("type") == "searchResEntry"}


def _anchor(service: Harness, person: dict[str, Any]) -> Anchor:
    mapping = service.runtime.mapping
    return Anchor.for_user(mapping.anchor, mapping.anchor_prefix, person["id"])


def _drain(service: Harness) -> None:
    assert service.worker is not None
    while (message := service.runtime.queue.receive(timeout=0)) is not None:
        service.worker.process_message(message)


def _target(service: Harness, dns: dict[str, str], *, managed: bool = True) -> ADTarget:
    base = service.info.base_dn
    policy = Policy(
        protected_groups=(dns["tier0"],),
        protected_ous=(dns["service"],),
        managed_containers=(f"OU=Halo,{base}",) if managed else (),
    )
    return ADTarget("default", service.runtime.settings.ad_connection("default"), policy=policy)


def _joined(service: Harness, first: str, last: str) -> tuple[dict[str, Any], dict[str, Any]]:
    person = new_user(first, last)
    assert service.post(delivery("created", person)).status == 202
    _drain(service)
    account = service.account(person["id"])
    assert account is not None
    return person, account


def test_an_escaped_spelling_of_a_protected_ou_is_refused_because_the_directory_resolves_it(
    harness: Callable[..., Harness], directory_objects: dict[str, str]
) -> None:
    service = harness()
    dns = directory_objects
    person, account = _joined(service, "Ou", "Escape")
    target = _target(service, dns)
    try:
        found = target.find(_anchor(service, person))
        assert found is not None
        base = service.info.base_dn
        spellings = [
            f"OU=\\53ervice Accounts,OU=Halo,{base}",  # \53 is 'S'
            f"ou=service accounts,ou=halo,{base.lower()}",
            f"OU=Sub,OU=\\53ervice Accounts,OU=Halo,{base}",
        ]
        for ou in spellings:
            with pytest.raises(PolicyRefused, match="protected"):
                target.move_ou({"ou": ou}, found)
        with pytest.raises(PolicyRefused, match="extended DN"):
            target.move_ou({"ou": f"<GUID={found.first('objectGUID')}>"}, found)
    finally:
        target.close()
    after = service.account(person["id"])
    assert after is not None and after["dn"] == account["dn"]  # never moved
    record_figures("security_dn_escaped_ou", spellings_refused=len(spellings) + 1)


def test_an_escaped_spelling_of_a_protected_group_and_privileged_groups_are_refused_whatever_the_config(
    harness: Callable[..., Harness], directory_objects: dict[str, str]
) -> None:
    service = harness()
    dns = directory_objects
    base = service.info.base_dn
    person, _ = _joined(service, "Group", "Escape")
    target = _target(service, dns)
    unconfigured = _target(service, dns, managed=False)
    attempts = {
        "escaped protected group": (target, f"CN=Dept Tier0\\41dmins,OU=Groups,OU=Halo,{base}"),
        "adminCount=1 group": (unconfigured, dns["admincount"]),
        "Domain Admins (RID 512), not configured": (unconfigured, f"CN=Domain Admins,CN=Users,{base}"),
        "Administrators (S-1-5-32-544)": (unconfigured, f"CN=Administrators,CN=Builtin,{base}"),
        "Account Operators (548)": (unconfigured, f"CN=Account Operators,CN=Builtin,{base}"),
        "outside the managed containers": (target, dns["unmanaged"]),
    }
    try:
        for name, (ad, group) in attempts.items():
            found = ad.find(_anchor(service, person))
            assert found is not None
            with pytest.raises(PolicyRefused) as refused:
                ad.add_to_groups({"groups": [group]}, found)
            assert "protected" in str(refused.value) or "outside" in str(refused.value), name
        # A managed, ordinary group still works, so the refusals above are not a broken connection.
        found = target.find(_anchor(service, person))
        assert found is not None
        result, _ = target.add_to_groups({"groups": [f"CN=Sales,OU=Groups,OU=Halo,{base}"]}, found)
        assert result.outcome == "changed"
    finally:
        target.close()
        unconfigured.close()
    account = service.account(person["id"])
    assert account is not None
    member_of = {str(g).lower() for g in account.get("memberOf", [])}
    for _, group in attempts.values():
        assert not any(g.startswith(group.split(",")[0].lower().replace("\\41", "a")) for g in member_of), group
    assert f"cn=sales,ou=groups,ou=halo,{base.lower()}" in member_of
    record_figures("security_dn_protected_groups", refused=len(attempts))


def test_a_member_of_a_privileged_group_is_protected_even_without_admincount(
    harness: Callable[..., Harness], directory_objects: dict[str, str]
) -> None:
    service = harness()
    dns = directory_objects
    person, account = _joined(service, "Priv", "Member")
    service.ldap.modify(dns["admincount"], {"member": [(ldap3.MODIFY_ADD, [account["dn"]])]})
    try:
        assert service.post(delivery("updated", {**person, "inactive": True})).status == 202
        _drain(service)
    finally:
        service.ldap.modify(dns["admincount"], {"member": [(ldap3.MODIFY_DELETE, [account["dn"]])]})
    after = service.account(person["id"])
    assert after is not None and int(after["userAccountControl"]) & 2 == 0  # still enabled
    refused = [e for e in service.audit(person["id"]) if e.outcome == "refused"]
    assert refused and "privileged group" in refused[0].message


def _team_mapping(example: str) -> Mapping:
    text = example.replace('ou = "OU=Main,OU=Staff,OU=Halo,{base_dn}"', 'ou = "OU={department},OU=Halo,{base_dn}"')
    return parse_mapping(text, "team-ou.toml")


def test_a_comma_or_an_escape_in_a_halo_field_cannot_add_rdns_or_reach_a_protected_ou(
    harness: Callable[..., Harness], directory_objects: dict[str, str]
) -> None:
    mapping = _team_mapping((ROOT / "mapping.example.toml").read_text(encoding="utf-8"))
    service = harness(mapping=mapping)
    dns = directory_objects
    hostile = [
        "Sub,OU=\\53ervice Accounts",  # on the old code: OU=Sub,OU=\53ervice Accounts,... (exists, protected)
        "Sub,OU=Service Accounts",
        "\\53ervice Accounts",
    ]
    people = [new_user("Dn", f"Inject{i}", department=value) for i, value in enumerate(hostile)]
    before = _users_under(service, dns["service"])
    for person in people:
        assert service.post(delivery("created", person)).status == 202
    _drain(service)
    for person in people:
        account = service.account(person["id"])
        assert account is None or not str(account["dn"]).lower().endswith(dns["service"].lower()), account
        outcomes = {e.outcome for e in service.audit(person["id"])}
        assert "changed" not in outcomes, outcomes
    # The directory holds nothing new under the protected OU (compared with before this test, so that what
    # another test may have put there neither fails nor passes this one).
    assert _users_under(service, dns["service"]) == before
    record_figures("security_dn_field_injection", attempts=len(hostile))


def test_the_example_mapping_manages_only_its_own_containers_and_a_missing_ou_is_permanent(
    harness: Callable[..., Harness],
) -> None:
    service = harness()
    base = service.info.base_dn
    policy = Policy.from_safety(service.runtime.mapping.safety, base)
    assert policy.managed_containers == (f"OU=Halo,{base}",)
    target = ADTarget("default", service.runtime.settings.ad_connection("default"), policy=policy)
    try:
        with pytest.raises(Permanent, match="does not exist"):
            target._check_target_ou(f"OU=Nowhere,OU=Halo,{base}")
        with pytest.raises(PolicyRefused, match="outside the managed containers"):
            target._check_target_ou(f"CN=Users,{base}")
    finally:
        target.close()


def test_one_protection_check_runs_before_any_non_ad_step_whatever_the_step_order(
    harness: Callable[..., Harness], directory_objects: dict[str, str], tmp_path: Any
) -> None:
    """A mover whose first step is a script (it could as well be Graph or write-back) for a member of an
    adminCount=1 group: the worker's check refuses it before the target is even built, so a target without a
    check of its own (or an older one that looked at adminCount only) can never act for a protected person."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    ran = tmp_path / "ran.txt"
    (scripts / "probe_scripts.py").write_text(
        f"def probe(event, args):\n    open({str(ran)!r}, 'a').write('ran\\n')\n", encoding="utf-8"
    )
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    mover = 'mover = ["modify_properties", "move_ou", "sync_groups"]'
    assert mover in text
    mapping = parse_mapping(
        text.replace(mover, 'mover = [{ action = "run_script", script = "probe" }, "modify_properties"]'), "probe.toml"
    )
    service = harness(
        mapping=mapping, scripts_dir=scripts, scripts={"probe": {"kind": "python", "target": "probe_scripts:probe"}}
    )
    person, account = _joined(service, "Probe", "Elevated")
    service.ldap.modify(directory_objects["admincount"], {"member": [(ldap3.MODIFY_ADD, [account["dn"]])]})
    try:
        assert service.post(delivery("updated", {**person, "title": "Changed"})).status == 202
        _drain(service)
    finally:
        service.ldap.modify(directory_objects["admincount"], {"member": [(ldap3.MODIFY_DELETE, [account["dn"]])]})
    assert not ran.exists()
    refused = [e for e in service.audit(person["id"]) if e.outcome == "refused"]
    assert [e.action for e in refused] == ["run_script"]
    assert "privileged group" in refused[0].message and "the service never changes it" in refused[0].message
