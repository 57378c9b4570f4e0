"""The planner: (event, mapping) -> work item. Pure: no I/O, no clock, no randomness.

What it returns is exactly what ``?dry_run=true`` and ``lifecycle plan`` show, and what the worker runs:
every template is rendered here, every OU and group is resolved to a DN, every naming candidate is listed.
Only what needs the directory (which candidate is free, what differs from the account) is left to the worker.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from typing import Any, Literal

from lifecycle.actions import action_info
from lifecycle.mapping.candidates import CandidateNames
from lifecycle.mapping.compiled import Memo, fields_read
from lifecycle.mapping.extension_steps import extension_step
from lifecycle.mapping.schema import Condition, Mapping, Not, Prefix, Scope, StepSpec
from lifecycle.mapping.templates import OptionalRenderer, optional_renderer, plain_field, render_dn
from lifecycle.work import Lifecycle, LifecycleEvent, Step, WorkItem

PersonStatus = Literal["active", "left", "unknown"]


@dataclass(frozen=True)
class PlanContext:
    """Static facts the planner needs besides the mapping: each connection's base DN."""

    base_dns: MappingABC[str, str] = field(default_factory=dict)

    def base_dn(self, connection: str) -> str:
        return self.base_dns.get(connection, "")


def _custom_field_key(name: str) -> str:
    return "cf." + re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _scalar(value: Any) -> str | None:
    if value is None or isinstance(value, (list, dict)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def flat_fields(record: MappingABC[str, Any]) -> dict[str, str | None]:
    """A Halo record (user or ticket) as the flat name -> text dictionary templates and rules read.

    Scalar fields keep their names; custom fields are ``cf.<name>`` (and ``cf.<label>``), display value first.
    Absent fields are absent keys.
    """
    # Copied whole (in C, in order), then what is not text is converted in place or removed: most fields are text.
    context: dict[str, Any] = dict(record)
    for key, value in record.items():
        kind = type(value)
        if kind is str:
            continue
        if kind is int:  # ids (bool is a subclass, never this exact type)
            context[key] = str(value)
            continue
        if kind is bool:  # flags (inactive, isserviceaccount): _scalar's text, without its other checks
            context[key] = "true" if value else "false"
            continue
        if kind is float:  # Halo's site_id and other numbers sent as 18.0
            context[key] = str(int(value)) if value.is_integer() else str(value)
            continue
        text = _scalar(value)
        if text is None:
            del context[key]
        else:
            context[key] = text
    for custom in record.get("customfields") or []:
        if not isinstance(custom, dict):
            continue
        value = custom.get("display") if isinstance(custom.get("display"), str) else custom.get("value")
        text = _scalar(value)
        for name in (custom.get("name"), custom.get("label")):
            if isinstance(name, str) and name.strip() and text is not None:
                context.setdefault(_custom_field_key(name), text)
    return context


def template_context(event: LifecycleEvent, base_dn: str) -> dict[str, str | None]:
    """The flat name -> text dictionary templates and rules read. Absent fields are absent keys."""
    context = flat_fields(event.user or {})
    context["user_id"] = str(event.user_id)
    context["event_kind"] = event.kind
    context["base_dn"] = base_dn
    return context


def _holds(allowed: str | list[str] | Not | Prefix, value: str) -> bool:
    """One field's condition against its (present) value, case-insensitively."""
    if isinstance(allowed, Prefix):
        text = value.strip().lower()
        return any(text.startswith(o.strip().lower()) for o in allowed.options)
    negated = isinstance(allowed, Not)
    options = allowed.options if isinstance(allowed, Not) else [allowed] if isinstance(allowed, str) else allowed
    found = value.strip().lower() in {o.strip().lower() for o in options}
    return found != negated


def matches(condition: Condition, context: MappingABC[str, str | None]) -> bool:
    """True when every field of ``condition`` equals (case-insensitively) one of its allowed values, none of
    them for ``{ not = ... }``, or starts with one of them for ``{ prefix = ... }``. A field absent from
    ``context`` matches nothing, negated or not."""
    for name, allowed in condition.items():
        value = context.get(name)
        if value is None or not _holds(allowed, value):
            return False
    return True


def _describe(allowed: str | list[str] | Not | Prefix) -> str:
    if isinstance(allowed, Not):
        return f"not {allowed.values!r}"
    if isinstance(allowed, Prefix):
        return f"prefix {allowed.prefix!r}"
    return repr(allowed)


@dataclass(frozen=True)
class ScopeVerdict:
    """Whether a Halo user is managed: ``in``, ``out`` (``reason`` names the failed condition) or ``undecided``
    (the payload lacks a field a scope condition reads; ``reason`` names it)."""

    verdict: Literal["in", "out", "undecided"]
    reason: str = ""


def scope_list_params(scope: Scope) -> dict[str, str]:
    """The Users API filters that narrow a listing to the scope (Halo's names; its OpenAPI describes them).

    Only filters that exclude no one the scope keeps: the per-user check still runs on every listed user.
    """
    params: dict[str, str] = {}
    if not scope.agents:
        params["exclude_agents"] = "true"
    if not scope.general_users:
        params["exclude_generaluser"] = "true"
    if not scope.service_accounts:
        params["includeserviceaccount"] = "false"
        params["includenonserviceaccount"] = "true"
    for name in ("client_id", "site_id"):
        allowed = scope.when.get(name)
        if isinstance(allowed, list) and len(allowed) == 1:
            allowed = allowed[0]
        if isinstance(allowed, str) and allowed.strip().isdigit():
            params[name] = allowed.strip()
    return params


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1", "yes"))


def _positive_id(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return isinstance(value, (int, float)) and value > 0


def scope_verdict(scope: Scope, user: MappingABC[str, Any], context: MappingABC[str, str | None]) -> ScopeVerdict:
    """The mapping's ``[scope]`` applied to one Halo user (``context`` is its template context)."""
    if not scope.service_accounts and _truthy(user.get("isserviceaccount")):
        return ScopeVerdict("out", "isserviceaccount is true (scope.service_accounts = false)")
    if not scope.agents and _positive_id(user.get("linked_agent_id")):
        return ScopeVerdict("out", f"linked to agent {user.get('linked_agent_id')} (scope.agents = false)")
    name = user.get("name")
    if not scope.general_users and isinstance(name, str) and name.strip().lower() == "general user":
        return ScopeVerdict("out", "a site's General User (scope.general_users = false)")
    for field_name, allowed in scope.when.items():
        value = context.get(field_name)
        if value is None:
            return ScopeVerdict("undecided", f"the payload lacks {field_name}, which scope.when reads")
        if not _holds(allowed, value):
            return ScopeVerdict("out", f"scope.when: {field_name} = {value!r}, wanted {_describe(allowed)}")
    return _IN_SCOPE


_IN_SCOPE = ScopeVerdict("in")


# An attribute table compiled: (attribute, the field its template is when it is just "{field}" else None, the
# template as a function, whether an empty value clears the attribute).
AttributeRenderers = tuple[tuple[str, str | None, OptionalRenderer, bool], ...]


def _attribute_renderers(table: MappingABC[str, str], clearable: frozenset[str]) -> AttributeRenderers:
    return tuple(
        (name, plain_field(source), optional_renderer(source), name.lower() in clearable)
        for name, source in table.items()
    )


def _render_attributes(
    renderers: AttributeRenderers, context: MappingABC[str, str | None]
) -> tuple[dict[str, str], list[str]]:
    """Rendered attribute values and the attributes to clear.

    A template whose field is absent is skipped; one that renders empty clears the attribute only when the
    mapping lists it in ``clear_when_empty``. Either way nothing is cleared by accident.
    """
    values: dict[str, str] = {}
    clear: list[str] = []
    get = context.get
    for attribute, field_name, render_one, clears in renderers:
        # Most attributes are one field as it is ("{firstname}"): read without calling its renderer.
        text = get(field_name) if field_name is not None else render_one(context)
        if text is None:
            continue
        value = text.strip()
        if value:
            values[attribute] = value
        elif clears:
            clear.append(attribute)
    return values, clear


def choose_lifecycle(event: LifecycleEvent, status: PersonStatus) -> Lifecycle:
    """Which step list an event runs, from the event and what is known of the person."""
    if event.is_thin:
        return "fetch"
    if event.kind == "deleted":
        return "deleted"
    if (event.user or {}).get("inactive") is True:
        return "leaver"
    if status == "left":
        return "rehire"
    if event.kind == "created" or status == "unknown":
        # An update for a person never seen (a lost create webhook) creates the account if it is missing;
        # create_user is an ensure, so an existing account is found by its anchor and left as it is.
        return "joiner"
    return "mover"


def _connection(mapping: Mapping, context: MappingABC[str, str | None]) -> str:
    for rule in mapping.routing.rules:
        if matches(rule.when, context):
            return rule.connection
    return mapping.routing.default


def _mapped_ou(mapping: Mapping, context: MappingABC[str, str | None]) -> str:
    for rule in mapping.ou.rules:
        if matches(rule.when, context):
            return render_dn(rule.ou, context)
    return render_dn(mapping.ou.default, context)


def _undecided(condition: Condition, context: MappingABC[str, str | None]) -> bool:
    """A rule whose condition reads a field the payload did not carry: nothing can be said about it."""
    return any(context.get(name) is None for name in condition)


def _decided_ou(mapping: Mapping, context: MappingABC[str, str | None]) -> str | None:
    """The mapped OU, or None when a rule before the first match reads an absent field (a missing site must
    not move anyone to the default OU)."""
    for rule in mapping.ou.rules:
        if _undecided(rule.when, context):
            return None
        if matches(rule.when, context):
            return render_dn(rule.ou, context)
    return render_dn(mapping.ou.default, context)


def _decided_groups(mapping: Mapping, context: MappingABC[str, str | None]) -> tuple[list[str], list[str]]:
    """Like ``_groups``, leaving out the groups of rules that read an absent field: neither joined nor left."""
    desired, managed = _groups(mapping, context)
    unknown = {render_dn(g, context) for r in mapping.groups.rules if _undecided(r.when, context) for g in r.groups}
    return [g for g in desired if g not in unknown], [g for g in managed if g not in unknown]


def _groups(mapping: Mapping, context: MappingABC[str, str | None]) -> tuple[list[str], list[str]]:
    """(groups the rules give this person, every group any rule manages), as DNs in rule order."""
    desired: list[str] = []
    managed: list[str] = []
    for rule in mapping.groups.rules:
        dns = [render_dn(g, context) for g in rule.groups]
        managed += [dn for dn in dns if dn not in managed]
        if matches(rule.when, context):
            desired += [dn for dn in dns if dn not in desired]
    return desired, managed


def _tuples(pair: tuple[list[str], list[str]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(pair[0]), tuple(pair[1])


class _Compiled:
    """The planner's view of one mapping, built once (``_compiled``): templates compiled to functions, and the
    parts that depend on a few fields only (routing, OU, groups, name patterns) remembered by those fields."""

    def __init__(self, mapping: Mapping) -> None:
        naming = mapping.naming
        clearable = frozenset(a.lower() for a in mapping.clear_when_empty)
        self.attributes = _attribute_renderers(mapping.attributes, clearable)
        self.templates = {name: _attribute_renderers(table, clearable) for name, table in mapping.templates.items()}
        self.cn = optional_renderer(naming.cn)
        self.names = CandidateNames(naming)
        manager = mapping.manager
        self.manager_id = optional_renderer(manager.manager_id) if manager and manager.manager_id else None
        self.manager_mail = optional_renderer(manager.manager_mail) if manager and manager.manager_mail else None
        self.connection = Memo(
            fields_read([r.when for r in mapping.routing.rules], []), lambda c: _connection(mapping, c)
        )
        ou = mapping.ou
        ou_fields = fields_read([r.when for r in ou.rules], [ou.default, *(r.ou for r in ou.rules)], dn=True)
        self.mapped_ou = Memo(ou_fields, lambda c: _mapped_ou(mapping, c))
        self.decided_ou = Memo(ou_fields, lambda c: _decided_ou(mapping, c))
        rules = mapping.groups.rules
        group_fields = fields_read([r.when for r in rules], [g for r in rules for g in r.groups], dn=True)
        self.groups = Memo(group_fields, lambda c: _tuples(_groups(mapping, c)))
        self.decided_groups = Memo(group_fields, lambda c: _tuples(_decided_groups(mapping, c)))
        self._mapping = mapping
        self._routed: dict[tuple[str, str], dict[str, str]] = {}
        lifecycles = mapping.lifecycles
        # Each lifecycle's steps as (condition, function of the plan). Keys come from the position in the list,
        # so skipping a step (its ``when`` does not match) never renames the steps after it.
        self.lifecycles = {
            name: tuple((spec.when, _builder(spec, i + 1, mapping, self)) for i, spec in enumerate(specs))
            for name, specs in (
                ("joiner", lifecycles.joiner),
                ("mover", lifecycles.mover),
                ("leaver", lifecycles.leaver),
                ("rehire", lifecycles.rehire),
                ("deleted", lifecycles.deleted or lifecycles.leaver),
            )
        }


    def routed(self, connection: str, base_dn: str) -> dict[str, str]:
        """What the context gains after routing, in this order: the connection's base DN (``base_dn`` is
        already a key: it keeps its place), the mapping's lookup tables (for ``map``) and the connection's
        ``var.<name>`` fields; built once per connection and base DN (never mutate)."""
        found = self._routed.get((connection, base_dn))
        if found is None:
            mapping = self._mapping
            found = {"base_dn": base_dn, **mapping.table_fields, **mapping.connection_fields.get(connection, {})}
            if len(self._routed) >= 256:  # base DNs come from settings: a handful
                self._routed.clear()
            self._routed[(connection, base_dn)] = found
        return found


# id(mapping) -> (the mapping, its compiled form); the mapping is kept so its id cannot be reused meanwhile.
_COMPILED: dict[int, tuple[Mapping, _Compiled]] = {}


def _compiled(mapping: Mapping) -> _Compiled:
    """The compiled form of ``mapping`` (a frozen model: built on its first plan, reused by every later one)."""
    entry = _COMPILED.get(id(mapping))
    if entry is not None and entry[0] is mapping:
        return entry[1]
    compiled = _Compiled(mapping)
    if len(_COMPILED) >= 32:  # tests and reloads build many mappings; a service plans with one or two
        _COMPILED.clear()
    _COMPILED[id(mapping)] = (mapping, compiled)
    return compiled


class _Planning:
    """One plan's connection and template context, with what its steps share (the rendered attributes:
    ``create_user`` and ``modify_properties`` render the same templates)."""

    __slots__ = ("_attributes", "compiled", "connection", "values")

    def __init__(self, compiled: _Compiled, connection: str, values: dict[str, str | None]) -> None:
        self.compiled = compiled
        self.connection = connection
        self.values = values
        self._attributes: tuple[dict[str, str], list[str]] | None = None

    def attributes(self) -> tuple[dict[str, str], list[str]]:
        """The mapping's attribute values and the attributes to clear (``_render_attributes``), rendered once
        per plan: the first caller gets them, every later one its own copies."""
        found = self._attributes
        if found is None:
            found = self._attributes = _render_attributes(self.compiled.attributes, self.values)
            return found
        return dict(found[0]), list(found[1])


def _manager(mapping: Mapping, compiled: _Compiled, context: MappingABC[str, str | None]) -> dict[str, str]:
    """The manager Halo names (``[manager]``): the anchor value of its Halo id, and its mail; absent: left out."""
    found: dict[str, str] = {}
    manager_id = compiled.manager_id(context) if compiled.manager_id else None
    if manager_id and manager_id.strip():
        found["anchor"] = f"{mapping.anchor_prefix}{manager_id.strip()}"
    mail = compiled.manager_mail(context) if compiled.manager_mail else None
    if mail and mail.strip():
        found["mail"] = mail.strip()
    return found


StepBuilder = Callable[[_Planning], Step | None]


def _builder(spec: StepSpec, index: int, mapping: Mapping, compiled: _Compiled) -> StepBuilder:
    """One step of a lifecycle as a function of the plan (None: the step is left out). What depends on the
    mapping alone (the action, its journal key, templates, password policy) is looked up here, once."""
    action = spec.action
    info = action_info(action)
    if info.params is not None:
        cloud = action == "create_cloud_user"

        def extension(planning: _Planning) -> Step:
            context = planning.values
            names = compiled.names(context) if cloud else None
            return extension_step(spec, index, info, planning.connection, context, names)

        return extension
    step = Step.planner(key=f"{index:02d}-{action}", action=action)

    def fixed(params: Callable[[_Planning], dict[str, Any]]) -> StepBuilder:
        return lambda planning: step(planning.connection, params(planning))

    password = mapping.password
    if action == "create_user":
        mapped_ou, cn, names = compiled.mapped_ou, compiled.cn, compiled.names
        length, must_change = password.length, password.must_change_at_next_logon
        with_manager = mapping.manager is not None

        def create_user(planning: _Planning) -> Step:
            context = planning.values
            # The values do not depend on clear_when_empty (only the list of attributes to clear does).
            values = planning.attributes()[0]
            params = {
                "ou": mapped_ou(context),
                "cn": cn(context) or f"Halo user {context['user_id']}",
                "names": names(context),
            }
            if with_manager:  # the manager Halo names, set at creation (absent without one: plans as they were)
                params["manager"] = _manager(mapping, compiled, context)
            params["attributes"] = values
            params["password"] = {"length": length, "must_change": must_change}
            return step(planning.connection, params)

        return create_user
    if action == "set_manager":
        return fixed(lambda planning: {"manager": _manager(mapping, compiled, planning.values)})
    if action in ("modify_properties", "apply_template"):
        template = spec.template

        def attributes(planning: _Planning) -> Step:
            if action == "modify_properties":
                values, clear = planning.attributes()
            else:
                values, clear = _render_attributes(compiled.templates[template or ""], planning.values)
            params: dict[str, Any] = {"attributes": values, "clear": clear}
            if template:
                params["template"] = template
            return step(planning.connection, params)

        return attributes
    if action == "move_ou":
        disabled, decided_ou = mapping.ou.disabled or "", compiled.decided_ou
        to_disabled = spec.to == "disabled"

        def move_ou(planning: _Planning) -> Step | None:
            ou = render_dn(disabled, planning.values) if to_disabled else decided_ou(planning.values)
            if ou is None:
                return None  # the payload lacks a field an OU rule reads: leave the account where it is
            return step(planning.connection, {"ou": ou})

        return move_ou
    if action == "sync_groups":
        decided_groups = compiled.decided_groups

        def sync_groups(planning: _Planning) -> Step:
            desired, managed = decided_groups(planning.values)
            return step(planning.connection, {"desired": list(desired), "managed": list(managed)})

        return sync_groups
    listed = spec.groups or []
    if action == "add_to_groups" or (action == "remove_from_groups" and listed not in ("managed", "all")):
        return fixed(lambda planning: {"groups": [render_dn(g, planning.values) for g in listed]})
    if action == "remove_from_groups":
        if listed == "all":
            return fixed(lambda planning: {"groups": "all"})
        return fixed(lambda planning: {"groups": list(compiled.groups(planning.values)[1])})
    if action == "delete_user":
        return fixed(lambda planning: {"after_days": spec.after_days})
    if action == "reset_password":
        must_change = spec.must_change if spec.must_change is not None else password.must_change_at_next_logon
        return fixed(lambda planning: {"length": password.length, "must_change": must_change})
    return fixed(lambda planning: {})


def plan(
    event: LifecycleEvent,
    mapping: Mapping,
    *,
    work_id: str,
    context: PlanContext | None = None,
    status: PersonStatus = "unknown",
) -> WorkItem:
    """The work item for ``event`` under ``mapping``.

    Args:
        event: the normalised Halo event.
        mapping: the validated mapping.
        work_id: the deterministic id of this work (see ``lifecycle.work.derive_work_id``).
        context: base DNs of the connections.
        status: what the service last applied for this person ("left" after a leaver), which decides
            between mover and rehire.
    """
    context = context or PlanContext()
    lifecycle = choose_lifecycle(event, status)
    note = ""
    fields = template_context(event, "")  # built once: scope, routing and every template read it
    if lifecycle != "fetch" and not (status == "active" and lifecycle in ("leaver", "deleted")):
        # A managed person's leaver or deletion always runs: deprovisioning never waits on the scope.
        lifecycle, note = _scoped(mapping.scope, event, status, lifecycle, fields)
    steps: list[Step] = []
    if lifecycle not in ("fetch", "out_of_scope"):
        compiled = _compiled(mapping)
        connection = compiled.connection(fields)
        values = fields  # no longer read as it was: it becomes the steps' context (same keys, same order)
        values.update(compiled.routed(connection, context.base_dn(connection)))
        planning = _Planning(compiled, connection, values)
        for when, build in compiled.lifecycles.get(lifecycle, ()):
            if when and not matches(when, values):
                continue
            step = build(planning)
            if step is not None:
                steps.append(step)
    return WorkItem.planned(
        work_id=work_id,
        lifecycle=lifecycle,
        event=event,
        steps=steps,
        planned_for_status=status,
        anchor=mapping.anchor,
        anchor_prefix=mapping.anchor_prefix,
        mapping_digest=mapping.digest,
        note=note,
    )


def _scoped(
    scope: Scope,
    event: LifecycleEvent,
    status: PersonStatus,
    lifecycle: Lifecycle,
    fields: MappingABC[str, str | None],
) -> tuple[Lifecycle, str]:
    """The lifecycle once the scope is applied (``fields``: the event's template context), and the note that
    says why it changed."""
    verdict = scope_verdict(scope, event.user or {}, fields)
    if verdict.verdict == "in":
        return lifecycle, ""
    if status == "active":
        if verdict.verdict == "undecided":
            return lifecycle, ""  # a managed person stays managed until a field proves otherwise
        if scope.scope_exit == "leaver":
            return "leaver", f"left the scope ({verdict.reason}): scope_exit = leaver"
        return "out_of_scope", f"a managed person left the scope ({verdict.reason}); scope_exit = report: no change"
    return "out_of_scope", verdict.reason
