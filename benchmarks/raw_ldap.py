"""The raw-ldap3 baselines: the same LDAP operations as a joiner, with nothing around them.

The attributes come from the planner (the create step the worker would run for the same Halo user), so the
baseline writes exactly what the worker writes: one add carrying every attribute, the password, the enabled
flag and "must change at next logon", then one member add per group, over one LDAPS connection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lifecycle.mapping.planner import PlanContext, plan
from lifecycle.mapping.schema import Mapping
from lifecycle.targets.ad import UF_NORMAL_ACCOUNT, generate_password
from lifecycle.work import LifecycleEvent, derive_work_id


@dataclass(frozen=True)
class RawJoiner:
    dn: str
    attributes: dict[str, Any]
    groups: list[str]


def raw_joiner(user: dict[str, Any], mapping: Mapping, base_dn: str) -> RawJoiner:
    """What a joiner writes for ``user`` under ``mapping``: the DN, the add's attributes (no password yet), groups."""
    from datetime import UTC, datetime

    from ldap3.utils.dn import escape_rdn  # type: ignore[import-untyped]

    event = LifecycleEvent(kind="created", user_id=user["id"], occurred_at=datetime.now(UTC), source="cli", user=user)
    work_id = derive_work_id(user_id=user["id"], kind="created", user=user, delivery_id=None, timestamp=None)
    item = plan(event, mapping, work_id=work_id, context=PlanContext({"default": base_dn}))
    create = next(s for s in item.steps if s.action == "create_user")
    groups = next(s for s in item.steps if s.action == "sync_groups").params["desired"]
    names = create.params["names"]["candidates"][0]
    attributes: dict[str, Any] = {k: v for k, v in create.params["attributes"].items() if v}
    attributes.update(
        {
            "objectClass": ["top", "person", "organizationalPerson", "user"],
            mapping.anchor: str(user["id"]),
            "sAMAccountName": names["samaccountname"],
            "userPrincipalName": names["userprincipalname"],
            "mail": names["mail"],
            "userAccountControl": str(UF_NORMAL_ACCOUNT),
            "pwdLastSet": "0",
        }
    )
    dn = f"CN={escape_rdn(create.params['cn'])},{create.params['ou']}"
    return RawJoiner(dn, attributes, list(groups))


def add_with_password(conn: Any, joiner: RawJoiner) -> float:
    """One add carrying the password and the enabled flag; returns its seconds."""
    attributes = {**joiner.attributes, "unicodePwd": f'"{generate_password(20)}"'.encode("utf-16-le")}
    started = time.perf_counter()
    conn.add(joiner.dn, attributes=attributes)
    return time.perf_counter() - started


def join(conn: Any, joiner: RawJoiner) -> list[float]:
    """The whole joiner with raw ldap3: the add, then one member add per group; returns each member add's seconds."""
    import ldap3  # type: ignore[import-untyped]

    add_with_password(conn, joiner)
    member_adds = []
    for group in joiner.groups:
        started = time.perf_counter()
        conn.modify(group, {"member": [(ldap3.MODIFY_ADD, [joiner.dn])]})
        member_adds.append(time.perf_counter() - started)
    return member_adds
