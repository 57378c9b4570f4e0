"""Fingerprints: what was last applied for a person, as a digest of the Halo fields the mapping reads.

The worker records one after each work item; the reconcile and the delta poll compare Halo's user with it to
find drift. Both depend on this module, and it on neither: it sits below them.

The fingerprint covers only the Halo fields the mapping reads, so a change to any other field (including the
ones write-back fills) is not drift. It carries Halo's ``ulastupdate`` when the user has one: Halo's list
items are partial, and an unchanged ``ulastupdate`` spares fetching the full user to compare.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from lifecycle.mapping.planner import template_context
from lifecycle.mapping.schema import Mapping as MappingFile
from lifecycle.mapping.schema import template_strings
from lifecycle.mapping.templates import compile_template
from lifecycle.work import LifecycleEvent, canonical_json

# The digest recorded when a person was matched without their Halo fields at hand.
UNKNOWN_DIGEST = "unknown"
# Template fields the planner supplies itself, not read from the Halo user.
_PLANNER_FIELDS = frozenset({"user_id", "event_kind", "base_dn"})


def _template_fields(sources: Iterable[str]) -> set[str]:
    fields: set[str] = set()
    for source in sources:
        fields |= compile_template(source).fields
    return fields


# Mappings are not hashable (lists inside); each entry keeps its mapping alive so an id is never reused.
_READ_FIELDS: dict[int, tuple[MappingFile, frozenset[str]]] = {}


def read_fields(mapping: MappingFile) -> frozenset[str]:
    """The Halo fields (template names, ``cf.<name>`` for custom fields) that decide what ``mapping`` does."""
    cached = _READ_FIELDS.get(id(mapping))
    if cached is not None and cached[0] is mapping:
        return cached[1]
    if len(_READ_FIELDS) >= 16:
        _READ_FIELDS.clear()
    fields = _read_fields(mapping)
    _READ_FIELDS[id(mapping)] = (mapping, fields)
    return fields


def _read_fields(mapping: MappingFile) -> frozenset[str]:
    naming = mapping.naming
    fields = _template_fields([*naming.samaccountname, naming.cn, *mapping.attributes.values()])
    # In the UPN and mail patterns {samaccountname} is the name the planner chose, not Halo's field.
    fields |= _template_fields([*naming.userprincipalname, *naming.mail]) - {"samaccountname"}
    fields |= _template_fields(v for template in mapping.templates.values() for v in template.values())
    ou = mapping.ou
    fields |= _template_fields([ou.default, *([ou.disabled] if ou.disabled else []), *(r.ou for r in ou.rules)])
    fields |= _template_fields(g for rule in mapping.groups.rules for g in rule.groups)
    for condition in (
        *(r.when for r in mapping.routing.rules),
        *(r.when for r in ou.rules),
        *(r.when for r in mapping.groups.rules),
    ):
        fields |= set(condition)
    lifecycles = mapping.lifecycles
    for spec in (
        *lifecycles.joiner,
        *lifecycles.mover,
        *lifecycles.leaver,
        *lifecycles.rehire,
        *(lifecycles.deleted or []),
    ):
        fields |= set(spec.when)
        fields |= _template_fields(template_strings(spec.extension_params))
    # The scope decides whether anything happens at all: leaving it is drift.
    scope = mapping.scope
    fields |= set(scope.when)
    fields |= {"isserviceaccount"} if not scope.service_accounts else set()
    fields |= {"linked_agent_id"} if not scope.agents else set()
    fields |= {"name"} if not scope.general_users else set()
    # ``inactive`` decides between mover and leaver whatever the mapping says.
    fields.add("inactive")
    return frozenset(fields - _PLANNER_FIELDS)


def user_id_of(user: Mapping[str, Any]) -> int | None:
    value = user.get("id")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _digest(mapping: MappingFile, user: Mapping[str, Any]) -> str:
    user_id = user_id_of(user) or 0
    event = LifecycleEvent(
        kind="updated", user_id=max(user_id, 1), occurred_at=datetime.now(UTC), source="reconcile", user=dict(user)
    )
    context = template_context(event, "")
    values = {name: context[name] for name in sorted(read_fields(mapping)) if context.get(name) is not None}
    return hashlib.sha256(canonical_json(values).encode("utf-8")).hexdigest()[:32]


def fingerprint(mapping: MappingFile, user: Mapping[str, Any]) -> str:
    """``<digest of the fields the mapping reads>[@<ulastupdate>]`` for a Halo user."""
    digest = _digest(mapping, user)
    stamp = user.get("ulastupdate")
    return f"{digest}@{stamp}" if isinstance(stamp, str) and stamp else digest


def applied_fingerprint(
    mapping: MappingFile, user: Mapping[str, Any] | None, facts: Mapping[str, Mapping[str, Any]]
) -> str:
    """The fingerprint the worker records after a work item: the user as Halo has it now.

    A write-back step reports what it made Halo hold (``halo_fields`` in its facts, with Halo's new
    ``ulastupdate`` when it learnt it), so the next reconciliation does not take our own write for drift.
    """
    if user is None:
        return ""
    merged = dict(user)
    for data in facts.values():
        written = data.get("halo_fields") if isinstance(data, Mapping) else None
        if isinstance(written, Mapping):
            merged.update(written)
    return fingerprint(mapping, merged)


def is_complete(mapping: MappingFile, user: Mapping[str, Any]) -> bool:
    """Whether ``user`` (a list item) carries every field the mapping reads, so it can stand for the full user."""
    for name in read_fields(mapping):
        key = "customfields" if name.startswith("cf.") else name
        if key not in user:
            return False
    return True
