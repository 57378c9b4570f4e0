"""The one protection check every target applies: AD, home folders, scripts (and Graph for the AD side).

Pure: it decides from what the directory said about an account or a group (its DN, ``adminCount``,
``objectSid``, ``memberOf`` and which of those groups the directory reported as privileged) and from the
mapping's ``[safety]``; it reads nothing itself. DNs are compared in their canonical, unescaped form
(``lifecycle.dn``), so ``OU=\\53ervice Accounts`` is the protected ``OU=Service Accounts``. The AD target
additionally compares OU and group targets by ``objectGUID`` after the directory resolved them.

Protected whatever the configuration (MS-ADTS 3.1.1.6.1.2, "Protected Objects", the AdminSDHolder set, and
Microsoft's "Appendix B: Privileged Accounts and Groups in Active Directory"):
- any object with ``adminCount=1``;
- the accounts Administrator (RID 500) and krbtgt (502);
- the groups below, by their relative id, and every member of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lifecycle import dn as dns
from lifecycle.errors import PolicyRefused

# Domain-relative ids (S-1-5-21-<domain>-RID).
PRIVILEGED_DOMAIN_RIDS: dict[int, str] = {
    500: "Administrator",
    502: "krbtgt",
    512: "Domain Admins",
    516: "Domain Controllers",
    517: "Cert Publishers",
    518: "Schema Admins",
    519: "Enterprise Admins",
    520: "Group Policy Creator Owners",
    521: "Read-only Domain Controllers",
    526: "Key Admins",
    527: "Enterprise Key Admins",
}
# Built-in aliases (S-1-5-32-RID).
PRIVILEGED_BUILTIN_RIDS: dict[int, str] = {
    544: "Administrators",
    548: "Account Operators",
    549: "Server Operators",
    550: "Print Operators",
    551: "Backup Operators",
    552: "Replicator",
    557: "Incoming Forest Trust Builders",
    562: "Distributed COM Users",
    578: "Hyper-V Administrators",
    580: "Remote Management Users",
}


def privileged_sid(sid: str | None) -> str | None:
    """The name of the privileged well-known principal ``sid`` is, or None."""
    if not sid or not sid.startswith("S-1-5-"):
        return None
    parts = sid.split("-")
    try:
        rid = int(parts[-1])
    except ValueError:
        return None
    if sid.startswith("S-1-5-32-") and len(parts) == 5:
        return PRIVILEGED_BUILTIN_RIDS.get(rid)
    if sid.startswith("S-1-5-21-"):
        return PRIVILEGED_DOMAIN_RIDS.get(rid)
    return None


class AccountFacts(Protocol):
    """What the check reads of an account (``lifecycle.targets.ad.Account`` has it)."""

    dn: str
    attributes: dict[str, list[Any]]
    # Canonical DNs of the memberOf groups the directory reported privileged (adminCount=1 or a privileged RID).
    privileged_groups: set[str]


def _first(attributes: Mapping[str, list[Any]], name: str) -> Any:
    values = attributes.get(name.lower()) or []
    return values[0] if values else None


def key(dn: str) -> str:
    """A canonical DN as a hashable text key (for sets of groups): unescaped, case-folded."""
    try:
        return ",".join("+".join(f"{k}={v}" for k, v in rdn) for rdn in dns.parse(dn))
    except dns.InvalidDN:
        return dn.strip().casefold()


@dataclass(frozen=True)
class Policy:
    """The mapping's ``[safety]`` for one directory, its templates rendered with that directory's base DN."""

    protected_groups: tuple[str, ...] = ()
    protected_ous: tuple[str, ...] = ()
    managed_containers: tuple[str, ...] = ()
    _group_keys: frozenset[str] = field(default=frozenset(), repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_group_keys", frozenset(key(g) for g in self.protected_groups))

    @classmethod
    def from_safety(cls, safety: Any, base_dn: str) -> Policy:
        """From ``Mapping.safety``; ``managed_containers`` empty means the whole base DN."""
        from lifecycle.mapping.templates import render_dn

        context = {"base_dn": base_dn}
        containers = [render_dn(c, context) for c in safety.managed_containers] or ([base_dn] if base_dn else [])
        return cls(
            protected_groups=tuple(render_dn(g, context) for g in safety.protected_groups),
            protected_ous=tuple(render_dn(o, context) for o in safety.protected_ous),
            managed_containers=tuple(containers),
        )

    # Accounts -------------------------------------------------------------------------------------------------
    def account_refusal(self, account: AccountFacts) -> str | None:
        """Why ``account`` must not be changed, or None."""
        if str(_first(account.attributes, "adminCount") or "0") == "1":
            return f"{account.dn} is protected (adminCount=1)"
        principal = privileged_sid(_first(account.attributes, "objectSid"))
        if principal:
            return f"{account.dn} is protected (the built-in {principal} account)"
        member_of = [str(g) for g in account.attributes.get("memberof", [])]
        for group in member_of:
            if key(group) in self._group_keys:
                return f"{account.dn} is protected: member of the protected group {group}"
        privileged = sorted(getattr(account, "privileged_groups", set()) or set())
        if privileged:
            return f"{account.dn} is protected: member of the privileged group {privileged[0]}"
        for ou in self.protected_ous:
            if dns.is_under(account.dn, ou):
                return f"{account.dn} is protected: it lies in {ou}"
        return None

    def check_account(self, account: AccountFacts | None, *, what: str = "the service never changes it") -> None:
        """Raise ``PolicyRefused`` for a protected account (None: no account, nothing to protect)."""
        if account is None:
            return
        reason = self.account_refusal(account)
        if reason:
            raise PolicyRefused(f"{reason}: {what}")

    # Targets (OUs and groups) -----------------------------------------------------------------------------------
    def managed(self, dn: str) -> bool:
        """Whether ``dn`` lies under a managed container (always, when none is configured)."""
        return not self.managed_containers or any(dns.is_under(dn, c) for c in self.managed_containers)

    def ou_refusal(self, ou: str) -> str | None:
        """Why no account may be placed in ``ou`` (text-level; the AD target also compares objectGUIDs)."""
        try:
            dns.parse(ou)
        except dns.InvalidDN as exc:
            return str(exc)
        for protected in self.protected_ous:
            if dns.is_under(ou, protected):
                return f"{ou} lies in the protected {protected}: the service puts no account there"
        if not self.managed(ou):
            return f"{ou} is outside the managed containers ({'; '.join(self.managed_containers)})"
        return None

    def group_refusal(
        self, group: str, *, admin_count: Any = None, sid: str | None = None, check_managed: bool = True
    ) -> str | None:
        """Why the service must not change ``group``'s members, or None."""
        try:
            dns.parse(group)
        except dns.InvalidDN as exc:
            return str(exc)
        if key(group) in self._group_keys:
            return f"{group} is a protected group: the service never changes its members"
        if str(admin_count or "0") == "1":
            return f"{group} is protected (adminCount=1): the service never changes its members"
        principal = privileged_sid(sid)
        if principal:
            return f"{group} is the privileged built-in group {principal}: the service never changes its members"
        if check_managed and not self.managed(group):
            return f"{group} is outside the managed containers ({'; '.join(self.managed_containers)})"
        return None
