"""The mapping file's schema: how Halo users become directory accounts, declaratively (TOML).

``load_mapping(path)`` validates the whole file with pydantic and compiles every template once, so a typo is
reported at start-up with the file and the field, never half-way through a person's joiner.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lifecycle.errors import ConfigurationError
from lifecycle.mapping.templates import Template, check_dn_template, compile_template, table_fields
from lifecycle.work import Action


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Not(_Strict):
    """A negated condition value: ``{ not = "x" }`` or ``{ not = ["x", "y"] }`` (the field is none of them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    values: str | list[str] = Field(alias="not")

    @property
    def options(self) -> list[str]:
        return [self.values] if isinstance(self.values, str) else list(self.values)


class Prefix(_Strict):
    """A prefix condition value: ``{ prefix = "Lon" }`` or ``{ prefix = ["Lon", "Man"] }`` (the field starts
    with one of them, case-insensitively, after trimming)."""

    prefix: str | list[str]

    @property
    def options(self) -> list[str]:
        return [self.prefix] if isinstance(self.prefix, str) else list(self.prefix)


# field -> allowed value, list of allowed values, { not = value(s) } or { prefix = value(s) }. A field the
# payload lacks matches nothing (negated or not): what it would decide stays undecided.
Condition = dict[str, str | list[str] | Not | Prefix]


class RoutingRule(_Strict):
    # The condition a user must match (see Conditions).
    when: Condition = Field(default_factory=dict)
    # The connection that serves a matching user: one name for the customer, its AD domain (a key of
    # LIFECYCLE_AD_CONNECTIONS) and/or its Microsoft 365 tenant (a key of LIFECYCLE_GRAPH_CONNECTIONS); "default"
    # is the LIFECYCLE_AD_* and LIFECYCLE_GRAPH_* one. A person stays with the connection first used for them.
    connection: str


class Routing(_Strict):
    """Which named target connection serves a user (an MSP routes by Halo client)."""

    # The connection of a user no rule matches.
    default: str = "default"
    # Tried in order; the first match decides.
    rules: list[RoutingRule] = Field(default_factory=list)


class Naming(_Strict):
    """Candidates for the account names, tried in order, then the first with a numeric suffix."""

    # sAMAccountName candidates (templates), tried in order; each is cut to 20 characters and cleaned.
    samaccountname: list[str] = Field(min_length=1)
    # UPN template(s), the n-th for the n-th login candidate (the last for the rest); ``{samaccountname}`` is the
    # chosen login.
    userprincipalname: list[str] = Field(min_length=1)
    # mail template(s), like userprincipalname; none: mail is not set by naming.
    mail: list[str] = Field(default_factory=list)
    # The account's cn (its RDN in the OU).
    cn: str = "{name}"
    # The highest numeric suffix tried (``ann.lee2`` ...) when every candidate is taken.
    max_suffix: int = Field(default=99, ge=1, le=9999)

    @field_validator("userprincipalname", "mail", mode="before", json_schema_input_type=str | list[str])
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class OuRule(_Strict):
    # The condition a user must match (see Conditions).
    when: Condition = Field(default_factory=dict)
    # The OU (a DN template) of a matching user.
    ou: str


class OuRules(_Strict):
    # The OU (a DN template) of a user no rule matches.
    default: str
    # Where ``move_ou`` with ``to = "disabled"`` parks a leaver's account.
    disabled: str | None = None
    # Tried in order; the first match decides.
    rules: list[OuRule] = Field(default_factory=list)


class GroupRule(_Strict):
    # The condition a user must match (see Conditions).
    when: Condition = Field(default_factory=dict)
    # Group DNs (templates) a matching user is a member of.
    groups: list[str] = Field(min_length=1)


class GroupRules(_Strict):
    # Every matching rule adds its groups; the groups of all rules are the managed groups.
    rules: list[GroupRule] = Field(default_factory=list)


class ManagerSource(_Strict):
    """``[manager]``: who a person's manager is in Halo, for AD's ``manager`` (``create_user``, ``set_manager``).

    Templates; the manager's Halo id is looked for by the anchor (with ``anchor_prefix``) first, else the mail
    address (``mail`` or an SMTP proxy address). A field Halo did not send changes nothing.
    """

    # The manager's Halo user id, e.g. "{cf.manager_id}".
    manager_id: str | None = None
    # The manager's mail address, e.g. "{manager_email}" (Halo's field).
    manager_mail: str | None = None


class Safety(_Strict):
    """Accounts the service never changes, beyond ``adminCount=1`` and the privileged built-in groups and
    accounts (``lifecycle.protection``), which are always protected."""

    # Members of these groups (DN templates) are never changed.
    protected_groups: list[str] = Field(default_factory=list)
    # Accounts under these OUs (DN templates) are never changed.
    protected_ous: list[str] = Field(default_factory=list)
    # Containers every OU and group the service places accounts in (or changes members of) must lie under, and
    # the only places it looks for a person's account (by the anchor) or an existing account to adopt (by mail,
    # UPN, login): an account elsewhere is never found, linked or changed. Empty: the whole base DN.
    managed_containers: list[str] = Field(default_factory=list)
    # Entra (Graph steps): users (UPN or object id) and groups (object id) never changed; directory-role holders
    # are protected whatever these say (lifecycle/targets/graph/protection.py).
    protected_cloud_users: list[str] = Field(default_factory=list)
    protected_cloud_groups: list[str] = Field(default_factory=list)
    # Where a Graph step's ``user`` and ``group_ids`` rendered from Halo fields may point (patterns, e.g.
    # "*@contoso.com"); a value written literally in the mapping, or the person's own account, needs no entry.
    cloud_users_allowed: list[str] = Field(default_factory=list)
    cloud_groups_allowed: list[str] = Field(default_factory=list)


class Scope(_Strict):
    """Who is managed at all: a Halo user outside the scope gets no account and no change.

    The three flags name the kinds of Halo user that are never people with a directory account in a usual
    set-up; each is checked on the user (a payload that lacks the field cannot prove it, so the flag does not
    exclude on an absent field) and also narrows the Users API listing (reconcile, delta poll). ``when`` adds
    conditions in the form of any step's ``when`` (any field, ``cf.<name>``, lists, ``{ not = ... }``); a
    ``client_id`` or ``site_id`` with one value also filters the listing. With no ``[scope]`` section every
    user is in scope (the mapping of an older version keeps its behaviour).
    """

    # Users linked to an agent (``linked_agent_id`` > 0); listing: ``exclude_agents``.
    agents: bool = True
    # Each site's "General User" (its name is "General User"); listing: ``exclude_generaluser``.
    general_users: bool = True
    # Halo's ``isserviceaccount``; listing: ``includeserviceaccount=false``.
    service_accounts: bool = True
    when: Condition = Field(default_factory=dict)
    # A managed person who leaves the scope: "report" (audited, listed by the reconcile, nothing changed) or
    # "leaver" (the leaver steps, through the mass-change guard).
    scope_exit: Literal["report", "leaver"] = "report"


class ConnectionSpec(_Strict):
    """``[connections.<name>]``: what the mapping knows of one target connection (an MSP's client)."""

    # Template fields for people routed to this connection: ``upn_suffix = "contoso.com"`` is ``{var.upn_suffix}``.
    vars: dict[str, str] = Field(default_factory=dict)

    @field_validator("vars")
    @classmethod
    def _names_are_fields(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"vars.{name}: a variable name is letters, digits and _ (as upn_suffix)")
        return value


class PasswordPolicy(_Strict):
    # Length of each random password the service sets.
    length: int = Field(default=20, ge=12, le=128)
    # Whether the user must change it at the next logon (``reset_password`` may override).
    must_change_at_next_logon: bool = True


class StepSpec(BaseModel):
    """One entry of a step list: an action, an optional condition, and its parameters.

    Active Directory actions take the named fields below. Any other (extension) action keeps its parameters
    as extra keys, rendered as templates by the planner and validated by the action's own model.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    # The action's name (see Actions).
    action: Action
    # The step is planned only for users matching this condition (same form as OU and group rules).
    when: Condition = Field(default_factory=dict)
    # ``apply_template``: the name of a ``[templates]`` table.
    template: str | None = None
    # ``move_ou``: the mapped OU, or ``ou.disabled``.
    to: Literal["mapped", "disabled"] = "mapped"
    # ``add_to_groups``: group DNs; ``remove_from_groups``: "managed" (the groups rules give), "all" or group DNs.
    groups: Literal["managed", "all"] | list[str] | None = None
    # ``delete_user`` (and staged extension actions): run this many days after the event; a rehire cancels it.
    after_days: int = Field(default=0, ge=0, le=3650)
    # ``reset_password``: must change at next logon (default: the password section's).
    must_change: bool | None = None

    @field_validator("action")
    @classmethod
    def _known_action(cls, value: str) -> str:
        from lifecycle.actions import action_info

        action_info(value)
        return value

    @property
    def extension_params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _params_fit_action(self) -> StepSpec:
        from lifecycle.actions import action_info

        info = action_info(self.action)
        if info.params is None and self.model_extra:
            raise ValueError(f"{self.action} takes no parameter {', '.join(sorted(self.model_extra))}")
        if self.action == "apply_template" and not self.template:
            raise ValueError("apply_template needs template = <name of a [templates] table>")
        if self.action == "add_to_groups" and not isinstance(self.groups, list):
            raise ValueError("add_to_groups needs groups = [<group DN>, ...]")
        if self.action == "remove_from_groups" and self.groups is None:
            raise ValueError('remove_from_groups needs groups = "managed", "all" or [<group DN>, ...]')
        return self


def _step_spec(value: Any) -> Any:
    return {"action": value} if isinstance(value, str) else value


class Lifecycles(_Strict):
    """Step lists for each lifecycle; ``deleted`` falls back to ``leaver``."""

    # A person new to the service (created in Halo, or first seen).
    joiner: list[StepSpec] = Field(min_length=1)
    # An update of a managed person.
    mover: list[StepSpec] = Field(min_length=1)
    # A person made inactive in Halo.
    leaver: list[StepSpec] = Field(min_length=1)
    # A leaver made active again.
    rehire: list[StepSpec] = Field(min_length=1)
    # A person deleted in Halo; none: the leaver steps.
    deleted: list[StepSpec] | None = None

    @field_validator("joiner", "mover", "leaver", "rehire", "deleted", mode="before")
    @classmethod
    def _strings_are_actions(cls, value: Any) -> Any:
        return [_step_spec(v) for v in value] if isinstance(value, list) else value


_CLOCK_TIME = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class RequestType(_Strict):
    """One kind of ticket request (``[[requests.types]]``): which tickets it is, and what they ask for.

    Conditions and templates read the ticket's fields (``tickettype_name``, ``category_1``, ``status_id``,
    ``site_name``, ...) and its custom fields as ``cf.<name>``, like a user's in the rest of the mapping.
    """

    # A unique name for the request type (letters, digits, ``.``, ``_``, ``-``).
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    # What the request asks for.
    kind: Literal["joiner", "mover", "leaver"]
    # The ticket condition that makes a ticket this request (see Conditions).
    when: Condition = Field(min_length=1)
    # Post the exact plan to the ticket and run it only once Halo's approval says so.
    approval: bool = True
    # Halo user field -> template over the ticket: the person the request is about (a joiner's names,
    # department, site; a mover's new department). A field whose template reads an absent field is left out.
    person: dict[str, str] = Field(default_factory=dict)
    # The Halo user the request concerns, as a template rendering to a Halo user id or e-mail address, e.g. a
    # custom field the form fills (``"{cf.leaving_user}"``). Required for a leaver or a mover: the ticket's own
    # user is often the manager who raised it, so it is the subject only when said so (``"{user_id}"``). A
    # joiner's only when the ticket names an existing user (default: none, a Halo user is created from ``person``).
    user: str | None = None
    # Templates rendering to a date (YYYY-MM-DD, or a date-time whose date is taken).
    start_date: str | None = None
    last_day: str | None = None
    # A joiner with a future start date: the account is created this many days before it, disabled, and
    # enabled on the start date at ``enable_at`` in the person's time zone.
    create_days_before: int = Field(default=3, ge=0, le=365)
    enable_at: str = Field(default="08:00", pattern=_CLOCK_TIME)

    @model_validator(mode="after")
    def _dates_fit_kind(self) -> RequestType:
        if self.kind != "joiner" and not (self.user or "").strip():
            raise ValueError(
                f'a {self.kind} request must say which Halo user it concerns: user = "{{cf.<field>}}" (a '
                'custom field holding the person\'s Halo id or e-mail address), or user = "{user_id}" for the '
                "ticket's own user (who raised it: often a manager, not the person)"
            )
        if self.start_date and self.kind != "joiner":
            raise ValueError("start_date is for joiner requests (a leaver has last_day)")
        if self.last_day and self.kind != "leaver":
            raise ValueError("last_day is for leaver requests")
        return self


class Requests(_Strict):
    """``[requests]``: tickets that ask for a joiner, mover or leaver (see docs/halo-setup.md, "Tickets")."""

    types: list[RequestType] = Field(min_length=1)
    # Ticket statuses that mean Halo's approval process accepted or rejected the request (the statuses its
    # steps move the ticket to), besides the approvers' own decisions on the ticket.
    approved_statuses: list[int] = Field(default_factory=list)
    rejected_statuses: list[int] = Field(default_factory=list)
    # The person's time zone (IANA name): by site name, then client name, then this default.
    time_zone: str = "UTC"
    site_time_zones: dict[str, str] = Field(default_factory=dict)
    client_time_zones: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid(self) -> Requests:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        names = [t.name for t in self.types]
        if len(set(names)) != len(names):
            raise ValueError("requests.types: each name must be unique")
        for zone in (self.time_zone, *self.site_time_zones.values(), *self.client_time_zones.values()):
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {zone!r} (use an IANA name such as Europe/London)") from None
        for kind in self.types:
            sources = [*kind.person.values(), *(s for s in (kind.user, kind.start_date, kind.last_day) if s)]
            for source in sources:
                compile_template(source)
        return self


class Mapping(_Strict):
    """The whole mapping file."""

    version: Literal[1] = 1
    # The AD attribute that holds the Halo user id and links the two.
    anchor: str = "employeeID"
    # Namespaces the anchor value ("halo:" makes it "halo:26"), so an HR number already in the attribute is
    # never taken for a Halo id. Accounts carrying the bare id (older data) are still found, but the service
    # resets no password of such an account until an operator approves it (`lifecycle link approve`).
    anchor_prefix: str = Field(default="", max_length=32, pattern=r"^[A-Za-z0-9_.:/-]*$")
    routing: Routing = Field(default_factory=Routing)
    naming: Naming
    # AD attribute -> template. A template whose field is absent from the event leaves the attribute alone.
    attributes: dict[str, str] = Field(default_factory=dict)
    # Attributes that an explicitly empty Halo field clears (by default an empty field changes nothing).
    clear_when_empty: list[str] = Field(default_factory=list)
    templates: dict[str, dict[str, str]] = Field(default_factory=dict)
    # The person's manager in Halo (AD's ``manager``; Graph's set_cloud_manager takes its own params).
    manager: ManagerSource | None = None
    # Lookup tables for the ``map`` filter: ``[tables.departments]`` ``Sales = "Sales"`` (keys case-insensitive).
    tables: dict[str, dict[str, str]] = Field(default_factory=dict)
    # Per-connection variables (``[connections.<name>.vars]``), template fields ``var.<name>`` after routing.
    connections: dict[str, ConnectionSpec] = Field(default_factory=dict)
    # Needed by a mapping with AD steps; a cloud-only mapping (Graph steps only) leaves it out.
    ou: OuRules = Field(default_factory=lambda: OuRules(default="{base_dn}"))
    groups: GroupRules = Field(default_factory=GroupRules)
    safety: Safety = Field(default_factory=Safety)
    scope: Scope = Field(default_factory=Scope)
    password: PasswordPolicy = Field(default_factory=PasswordPolicy)
    lifecycles: Lifecycles
    # Ticket requests (New Starter, Leaver): which tickets are which request, and their person.
    requests: Requests | None = None
    # Filled by load_mapping: a digest of the file, recorded in each work item.
    digest: str = ""

    @model_validator(mode="after")
    def _templates_compile_and_exist(self) -> Mapping:
        sources: list[str] = [*self.naming.samaccountname, *self.naming.userprincipalname, *self.naming.mail]
        sources += [self.naming.cn, *self.attributes.values(), self.ou.default, *(r.ou for r in self.ou.rules)]
        sources += [v for t in self.templates.values() for v in t.values()]
        sources += [g for r in self.groups.rules for g in r.groups] + ([self.ou.disabled] if self.ou.disabled else [])
        sources += self.safety.managed_containers
        sources += [s for s in (self.manager.manager_id, self.manager.manager_mail) if s] if self.manager else []
        step_sources = [s for step in self._all_steps() for s in template_strings(step.extension_params)]
        request_sources = [
            s
            for kind in (self.requests.types if self.requests else [])
            for s in [*kind.person.values(), *filter(None, (kind.user, kind.start_date, kind.last_day))]
        ]
        for source in [*sources, *step_sources]:
            self._check_names(compile_template(source))
        for source in request_sources:
            template = compile_template(source)
            if template.tables or any(f.startswith("var.") for f in template.fields):
                raise ValueError(
                    f"ticket request template {source!r}: map and var.<name> are not available in a request's"
                    " templates (they are rendered from the ticket, before routing and without [tables])"
                )
        dn_sources = [self.ou.default, *(r.ou for r in self.ou.rules), *filter(None, [self.ou.disabled])]
        dn_sources += [g for r in self.groups.rules for g in r.groups]
        dn_sources += [*self.safety.protected_groups, *self.safety.protected_ous, *self.safety.managed_containers]
        for source in dn_sources:
            check_dn_template(source)
        managed = {self.anchor.lower(), "unicodepwd", "useraccountcontrol", "objectclass", "samaccountname"}
        for name in self.attributes:
            if name.lower() in managed - {"samaccountname"}:
                raise ValueError(f"attributes.{name}: this attribute is managed by the service, not by templates")
        routed = {self.routing.default, *(r.connection for r in self.routing.rules)}
        for name in self.connections:
            if name not in routed:
                raise ValueError(
                    f"connections.{name}: no routing rule or routing.default names this connection"
                    f" (routed: {', '.join(sorted(routed))})"
                )
        self._check_targets()
        for step in self._all_steps():
            for source in step.groups if isinstance(step.groups, list) else []:
                check_dn_template(source)
            if step.action == "apply_template" and step.template not in self.templates:
                raise ValueError(f"step apply_template names template {step.template!r}, which [templates] lacks")
            if step.to == "disabled" and step.action == "move_ou" and not self.ou.disabled:
                raise ValueError('move_ou to = "disabled" needs ou.disabled')
        return self

    @cached_property
    def table_fields(self) -> dict[str, str]:
        """The ``[tables]`` as template-context entries for ``map`` (built once per mapping; never mutate)."""
        return table_fields(self.tables)

    @cached_property
    def connection_fields(self) -> dict[str, dict[str, str]]:
        """Each connection's ``var.<name>`` template fields (built once per mapping; never mutate)."""
        return {name: {f"var.{k}": v for k, v in spec.vars.items()} for name, spec in self.connections.items()}

    def _all_steps(self) -> list[StepSpec]:
        lifecycles = self.lifecycles
        return [
            *lifecycles.joiner,
            *lifecycles.mover,
            *lifecycles.leaver,
            *lifecycles.rehire,
            *(lifecycles.deleted or []),
        ]

    def _check_targets(self) -> None:
        """AD steps need ``[ou]``; cloud-only user steps need an anchor Entra can hold."""
        from lifecycle.actions import action_info

        actions = {step.action for step in self._all_steps()}
        if "ou" not in self.model_fields_set and any(action_info(a).system == "ad" for a in actions):
            raise ValueError("[ou] is missing: a mapping with Active Directory steps needs ou.default")
        if "set_manager" in actions and self.manager is None:
            raise ValueError("set_manager needs a [manager] section (manager_id and/or manager_mail)")
        cloud = {"create_cloud_user", "modify_cloud_user", "delete_cloud_user", "restore_cloud_user"}
        if not actions & cloud:
            return  # the Graph actions' models are imported only for a mapping that uses them (the cold path)
        from lifecycle.targets.graph_actions import cloud_anchor_property

        if cloud_anchor_property(self.anchor) is None:
            raise ValueError(
                f"anchor {self.anchor!r}: cloud-only user steps keep the anchor on the Entra user, which has "
                "employeeId and extensionAttribute1..15 only; use one of them"
            )

    def _check_names(self, template: Template) -> None:
        """Every table a ``map`` names exists; every ``var.<name>`` is defined for some connection."""
        for table in sorted(template.tables - set(self.tables)):
            known = ", ".join(sorted(self.tables)) or "none"
            raise ValueError(
                f"template {template.source!r}: map names table {table!r}, which [tables] lacks (known: {known})"
            )
        defined = {name for spec in self.connections.values() for name in spec.vars}
        for field in sorted(template.fields):
            if field.startswith("var.") and field[4:] not in defined:
                raise ValueError(
                    f"template {template.source!r}: {field} is not defined in any [connections.<name>.vars]"
                )


def template_strings(value: Any) -> list[str]:
    """Every string inside a parameter tree (each is a template)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in template_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in template_strings(v)]
    return []


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_mapping(text: str, source: str) -> Mapping:
    """Validate mapping TOML text; errors name ``source`` and the field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source}: not valid TOML: {exc}") from None
    try:
        mapping = Mapping.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_location(tuple(e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()[:5]
        )
        raise ConfigurationError(f"{source}: {problems}") from None
    except ConfigurationError as exc:
        raise ConfigurationError(f"{source}: {exc}") from None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return mapping.model_copy(update={"digest": digest})


def load_mapping(path: Path) -> Mapping:
    """Read and validate the mapping file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the mapping file: {exc.strerror}") from None
    return parse_mapping(text, str(path))
