"""Create the OUs and groups a mapping names, so a fresh directory (the throwaway DC) can take its joiners.

Used by ``make run`` and the tests; harmless against a real directory (it only adds what is missing), but
against production the OUs and groups are normally created by the directory's owners.
"""

from __future__ import annotations

from typing import Any

from ldap3.core import exceptions as ldap_errors  # type: ignore[import-untyped]
from ldap3.utils.dn import to_dn  # type: ignore[import-untyped]

from lifecycle.mapping.schema import Mapping
from lifecycle.mapping.templates import render
from lifecycle.targets.ad import ADTarget, normalize_dn

GLOBAL_SECURITY_GROUP = -2147483646


def mapping_containers(mapping: Mapping, base_dn: str) -> tuple[list[str], list[str]]:
    """(every OU, every group) that ``mapping`` names, as DNs under ``base_dn``."""
    context = {"base_dn": base_dn}
    ous = [mapping.ou.default, *(r.ou for r in mapping.ou.rules), *mapping.safety.protected_ous]
    if mapping.ou.disabled:
        ous.append(mapping.ou.disabled)
    groups = [g for rule in mapping.groups.rules for g in rule.groups]
    rendered_ous = list(dict.fromkeys(render(o, context) for o in ous))
    rendered_groups = list(dict.fromkeys(render(g, context) for g in groups))
    return rendered_ous, rendered_groups


def ensure_containers(target: ADTarget, mapping: Mapping) -> list[str]:
    """Add the OUs (parents first) and global security groups the mapping needs; returns the DNs added."""
    base = normalize_dn(target.base_dn)
    ous, groups = mapping_containers(mapping, target.base_dn)
    added: list[str] = []

    def add(dn: str, attributes: dict[str, Any]) -> None:
        try:
            target._call(lambda conn: conn.add(dn, attributes=attributes))
            added.append(dn)
        except ldap_errors.LDAPEntryAlreadyExistsResult:
            pass

    wanted_ous: list[str] = []
    for ou in [*ous, *(",".join(to_dn(g)[1:]) for g in groups)]:
        parts = to_dn(ou)
        for i in range(len(parts) - 1, -1, -1):
            dn = ",".join(parts[i:])
            below_base = normalize_dn(dn).endswith(base) and normalize_dn(dn) != base
            if below_base and dn.upper().startswith("OU=") and dn not in wanted_ous:
                wanted_ous.append(dn)
    for dn in wanted_ous:
        add(dn, {"objectClass": ["top", "organizationalUnit"]})
    for dn in groups:
        name = to_dn(dn)[0].split("=", 1)[1]
        add(
            dn,
            {
                "objectClass": ["top", "group"],
                "sAMAccountName": name.replace(" ", "_")[:20],
                "groupType": str(GLOBAL_SECURITY_GROUP),
            },
        )
    return added
