"""Cloud-side protection: the Entra accounts and groups no Graph step may change, checked before any write.

Halo fields are written by people with far fewer rights than a tenant administrator, and a step's ``user``
and ``group_ids`` can be rendered from them. So, before a group of Graph steps writes anything:

- the cloud user must not hold a directory role (directly or through a role-assignable group: both show in
  ``transitiveMemberOf``), be a member of a group in ``safety.protected_cloud_groups``, or be listed in
  ``safety.protected_cloud_users``;
- a ``user`` param is the person's own correlated account (the AD account's cloud user, by
  userPrincipalName or ``onPremisesImmutableId``), a value written literally in the mapping, or within
  ``safety.cloud_users_allowed`` (patterns such as ``*@contoso.com``);
- a group a step adds to or removes from (by id) is written literally in the mapping or listed in
  ``safety.cloud_groups_allowed``, is not protected and is not role-assignable.

The check is Graph's own and self-contained (it reads ``transitiveMemberOf`` in the same batch as the user);
a refusal is a ``PolicyRefused``: the step is journaled as refused and the item dead-lettered with the reason,
which the worker audits.
"""

from __future__ import annotations

import base64
import fnmatch
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lifecycle.errors import PolicyRefused

if TYPE_CHECKING:
    from lifecycle.mapping.schema import Mapping
    from lifecycle.targets import StepContext
    from lifecycle.targets.graph.state import Snapshot
    from lifecycle.work import Step

# Actions whose group ids come from the step (the rest address only the user).
_GROUP_PARAMS = {"add_to_cloud_groups": ("group_ids",), "remove_from_cloud_groups": ("group_ids",)}
_SYNC_PARAMS = ("desired", "managed")


@dataclass(frozen=True)
class CloudProtection:
    protected_users: frozenset[str]
    protected_groups: frozenset[str]
    users_allowed: tuple[str, ...]
    groups_allowed: tuple[str, ...]
    literals: frozenset[str]  # every string the mapping's steps hold without a template (lowercased)

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> CloudProtection:
        safety = mapping.safety
        steps = [
            *mapping.lifecycles.joiner,
            *mapping.lifecycles.mover,
            *mapping.lifecycles.leaver,
            *mapping.lifecycles.rehire,
            *(mapping.lifecycles.deleted or []),
        ]
        literals = {v.lower() for step in steps for v in _strings(step.extension_params) if "{" not in v}
        return cls(
            protected_users=frozenset(u.lower() for u in safety.protected_cloud_users),
            protected_groups=frozenset(g.lower() for g in safety.protected_cloud_groups),
            users_allowed=tuple(p.lower() for p in safety.cloud_users_allowed),
            groups_allowed=tuple(p.lower() for p in safety.cloud_groups_allowed),
            literals=frozenset(literals),
        )

    # The user ----------------------------------------------------------------------------------------------
    def check_user(self, context: StepContext, snap: Snapshot) -> None:
        """Refuse a protected or privileged cloud user, or one a rendered ``user`` param should not reach."""
        user = snap.user
        where = f"Graph: the cloud user {user.upn or user.id}"
        if {user.id.lower(), user.upn.lower()} & self.protected_users:
            raise PolicyRefused(f"{where} is listed in safety.protected_cloud_users: the service never changes it")
        for entry in snap.transitive_member_of or []:
            kind = str(entry.get("@odata.type", "")).lower()
            name = entry.get("displayName") or entry.get("id")
            if kind.endswith("directoryrole"):
                raise PolicyRefused(f"{where} holds the directory role {name!r}: the service never changes it")
            if str(entry.get("id", "")).lower() in self.protected_groups:
                raise PolicyRefused(f"{where} is a member of the protected cloud group {name!r}")
        named = context.step.params.get("user")
        # The allow-list first: a cloud-only mapping has no AD to ask for the correlated account.
        if named and not self._user_allowed(str(named), user.upn) and not self._own_account(context, snap):
            raise PolicyRefused(
                f"{where} (the step's user {named!r}) is not this person's correlated account, not written in the "
                "mapping and not within safety.cloud_users_allowed"
            )

    def _own_account(self, context: StepContext, snap: Snapshot) -> bool:
        if not any(step.system == "ad" for step in context.item.steps):
            return False  # a cloud-only work item: no AD account to correlate with (and no AD to ask)
        account = context.ad_account()
        if account is None:
            return False
        upn = str(account.first("userPrincipalName") or "").lower()
        if upn and upn == snap.user.upn.lower():
            return True
        guid = account.first("objectGUID")
        if guid and snap.user.immutable_id:
            immutable = base64.b64encode(uuid.UUID(str(guid)).bytes_le).decode("ascii")
            return immutable == snap.user.immutable_id
        return False

    def _user_allowed(self, named: str, upn: str) -> bool:
        named = named.lower()
        if named in self.literals:
            return True
        return any(fnmatch.fnmatchcase(v, p) for p in self.users_allowed for v in (named, upn.lower()))

    # Groups ------------------------------------------------------------------------------------------------
    def check_groups(self, step: Step, snap: Snapshot) -> None:
        """Refuse a step that names a group it may not change (``"all"`` is filtered by the planner)."""
        for group_id in (g.lower() for g in _named_groups(step)):
            group = snap.groups.get(group_id) or (snap.member_of or {}).get(group_id)
            name = group.name if group is not None else group_id
            if group_id in self.protected_groups:
                raise PolicyRefused(f"Graph: {name} is a protected cloud group: the service never changes its members")
            if group is not None and group.role_assignable:
                raise PolicyRefused(
                    f"Graph: {name} is role-assignable: its members hold directory roles, which the service never "
                    "grants or removes"
                )
            if group_id not in self.literals and not any(fnmatch.fnmatchcase(group_id, p) for p in self.groups_allowed):
                raise PolicyRefused(
                    f"Graph: the group {name} was rendered from Halo fields and is not within "
                    "safety.cloud_groups_allowed"
                )


def _named_groups(step: Step) -> Iterator[str]:
    for name in _GROUP_PARAMS.get(step.action, ()):
        value = step.params.get(name)
        if isinstance(value, list):
            yield from (str(v) for v in value)
    if step.action == "sync_cloud_groups":
        for name in _SYNC_PARAMS:
            yield from (str(v) for v in step.params.get(name, []))


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
