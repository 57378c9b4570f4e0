"""The person's manager in Active Directory (``manager``, a DN), from Halo: by the manager's anchor or mail.

Part of the AD target (``lifecycle.targets.ad`` calls it). The planner renders the mapping's ``[manager]``
into ``{"anchor": "halo:9001", "mail": "boss@contoso.com"}`` (either may be absent: Halo did not send it);
the anchor is looked for in the managed containers, as the person's own account is, and mail (or an SMTP
proxy address) in the whole domain. Every value placed in a filter is escaped; the DN written is the one the
directory returned for the manager.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ldap3  # type: ignore[import-untyped]
from ldap3.core import exceptions as ldap_errors  # type: ignore[import-untyped]
from ldap3.utils.conv import escape_filter_chars  # type: ignore[import-untyped]

from lifecycle.errors import Permanent
from lifecycle.state import Change
from lifecycle.targets import StepResult

if TYPE_CHECKING:
    from lifecycle.targets.ad import Account, ADTarget

PERSON = "(objectClass=user)(objectCategory=person)"


def resolve(target: ADTarget, attribute: str, source: dict[str, Any]) -> tuple[str | None, str]:
    """(the manager's DN or None when not found, how it was named); ("", "") when Halo named no manager."""
    if source.get("anchor"):
        how = f"{attribute}={source['anchor']}"
        clause = f"(&{PERSON}({attribute}={escape_filter_chars(str(source['anchor']))}))"
        bases = list(target.managed_containers)
    elif source.get("mail"):
        mail = escape_filter_chars(str(source["mail"]).strip())
        how = f"mail {source['mail']}"
        clause = f"(&{PERSON}(|(mail={mail})(proxyAddresses=smtp:{mail})))"
        bases = [target.base_dn]
    else:
        return "", ""
    found: list[str] = []
    for base in bases:
        found += [
            str(e["dn"]) for e in target._search(clause, ["distinguishedName"], base=base) if e["dn"] not in found
        ]
    if len(found) > 1:
        raise Permanent(f"AD {target.name}: {len(found)} accounts match the manager Halo names ({how}); make it unique")
    return (found[0] if found else None), how


def set_manager(target: ADTarget, account: Account, attribute: str, source: dict[str, Any]) -> StepResult:
    """``set_manager``: write ``manager`` when the resolved manager differs (a field Halo did not send: no change)."""
    dn, how = resolve(target, attribute, source)
    if dn == "":
        return StepResult("unchanged", dn=account.dn, message="Halo sent no manager")
    if dn is None:
        raise Permanent(f"AD {target.name}: no account matches the manager Halo names ({how}); fix it in Halo")
    if dn.lower() == account.dn.lower():
        raise Permanent(f"AD {target.name}: Halo names {account.dn} as its own manager ({how})")
    current = str(account.first("manager") or "")
    if current.lower() == dn.lower():
        return StepResult("unchanged", dn=account.dn)
    change = Change("manager", current or None, dn)
    if target.dry_run:
        return StepResult("dry_run", dn=account.dn, changes=[change])
    try:
        target._call(lambda conn: conn.modify(account.dn, {"manager": [(ldap3.MODIFY_REPLACE, [dn])]}))
    except ldap_errors.LDAPOperationResult as exc:
        raise Permanent(f"AD {target.name}: cannot set the manager of {account.dn}: {exc.description}") from None
    account.attributes["manager"] = [dn]
    return StepResult("changed", dn=account.dn, changes=[change])
