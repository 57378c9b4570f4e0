"""Finds the configuration mistakes that load without an error but fail later, or silently do the wrong thing.

``Settings`` and ``load_mapping`` refuse what cannot work at all (a wrong type, an unknown action). What they let
through is what a newcomer gets wrong first: a misspelled ``LIFECYCLE_`` variable (read as unset), a routing rule
naming a connection that is not defined, a CA file that is not there, ``ldap://`` without StartTLS, Graph
credentials without a tenant, a base DN that is not a DN, a template or ``when`` field Halo never sends. Each
finding names the file, the line where it can be found and the field, and suggests the fix (the nearest known
name for a misspelling).

Pure: reads files and the environment it is given, never the network (``lifecycle doctor`` does that).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from lifecycle.mapping.schema import Mapping, template_strings
from lifecycle.mapping.templates import compile_template
from lifecycle.settings import ENV_PREFIX, HOST_SETTING_NAMES, Settings, app_setting_names
from lifecycle.settings_models import ADConnection

# Fields the planner adds to every template context besides the Halo user's own (planner.template_context).
BUILT_IN_FIELDS: frozenset[str] = frozenset({"user_id", "event_kind", "base_dn"})
# Halo's Users schema (Halo's own OpenAPI) lists ~290 fields; these are the ones it sends that the subset we
# vendor may not list, and the names runbook bodies commonly carry.
EXTRA_HALO_FIELDS: frozenset[str] = frozenset(
    {"id", "name", "firstname", "surname", "emailaddress", "site_id", "site_name", "client_id", "client_name",
     "department", "inactive", "isserviceaccount", "login", "title", "jobtitle", "phonenumber", "mobilenumber",
     "manager_email", "ulastupdate", "customfields"}
)  # fmt: skip
_USERS_SCHEMA = Path(__file__).resolve().parent / "halo" / "users_fields.json"
_DN = re.compile(r"^\s*[A-Za-z][A-Za-z0-9-]*=(?:[^,\\]|\\.)+(?:,\s*[A-Za-z][A-Za-z0-9-]*=(?:[^,\\]|\\.)+)*\s*$")


@dataclass(frozen=True)
class Finding:
    """One mistake: where it is, what is wrong, what to do."""

    where: str  # "mapping.toml:12" or "environment"
    field: str  # "groups.rules[1].when.departmnet" or "LIFECYCLE_AD_BASEDN"
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.where}: {self.field}: {self.problem}; {self.fix}"

    def as_dict(self) -> dict[str, str]:
        return {"where": self.where, "field": self.field, "problem": self.problem, "fix": self.fix}


def nearest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` (case-insensitive), if any is close enough to be a typo of it."""
    by_lower = {k.lower(): k for k in known}
    match = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.75)
    return by_lower[match[0]] if match else None


def _did_you_mean(name: str, known: Iterable[str], otherwise: str) -> str:
    close = nearest(name, known)
    return f"did you mean {close}?" if close else otherwise


@cache
def known_halo_fields() -> frozenset[str]:
    """The field names a Halo user carries (Halo's Users schema) and the ones the planner adds."""
    names: set[str] = set(EXTRA_HALO_FIELDS | BUILT_IN_FIELDS)
    try:
        names.update(json.loads(_USERS_SCHEMA.read_text(encoding="utf-8")))
    except (OSError, ValueError):  # the list is a convenience for suggestions; the checks work without it
        pass
    return frozenset(names)


# Environment --------------------------------------------------------------------------------------------------
def check_environment(environ: MappingABC[str, str]) -> list[Finding]:
    """``LIFECYCLE_`` variables the service does not read: almost always a misspelling, read as unset."""
    known = app_setting_names()
    findings = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in known or name in HOST_SETTING_NAMES:
            continue
        findings.append(
            Finding(
                "environment",
                name,
                "the service reads no such setting, so it is ignored",
                _did_you_mean(name.upper(), known, "remove it, or see docs/operations.md for the settings"),
            )
        )
    return findings


def _env(field: str, problem: str, fix: str) -> Finding:
    return Finding("environment", field, problem, fix)


# Settings ----------------------------------------------------------------------------------------------------
def _check_connection(label: str, connection: ADConnection) -> list[Finding]:
    findings = []
    if not connection.base_dn:
        findings.append(
            _env(
                f"{label}_BASE_DN",
                "no base DN: OU templates would end in a comma",
                "set it to the domain's DN, e.g. DC=corp,DC=example,DC=com",
            )
        )
    elif not _DN.match(connection.base_dn):
        findings.append(
            _env(f"{label}_BASE_DN", f"{connection.base_dn!r} is not a DN", "write it as DC=corp,DC=example,DC=com")
        )
    if connection.ca_file is not None and not connection.ca_file.is_file():
        findings.append(
            _env(
                f"{label}_CA_FILE",
                f"{connection.ca_file} does not exist",
                "give the path of the PEM file with the DC's CA certificate",
            )
        )
    if connection.url.startswith("ldap://") and not connection.start_tls and not connection.allow_plaintext:
        findings.append(
            _env(
                f"{label}_URL",
                "ldap:// without StartTLS sends passwords in clear",
                f"use ldaps:// or set {label}_START_TLS=true",
            )
        )
    return findings


def uses_ad(mapping: Mapping) -> bool:
    """Whether any step list of the mapping has an Active Directory step (a cloud-only mapping has none)."""
    from lifecycle.actions import action_info

    lifecycles = mapping.lifecycles
    steps = [*lifecycles.joiner, *lifecycles.mover, *lifecycles.leaver, *lifecycles.rehire, *(lifecycles.deleted or [])]
    return any(action_info(step.action).system == "ad" for step in steps)


def check_settings(settings: Settings, *, ad_used: bool = True) -> list[Finding]:
    """Settings that validate but cannot work (the default AD connection only when the mapping uses AD)."""
    findings = _check_connection("LIFECYCLE_AD", settings.ad_connection("default")) if ad_used else []
    for name, connection in sorted(settings.ad_connections.items()):
        for finding in _check_connection("LIFECYCLE_AD", connection):
            field = f"LIFECYCLE_AD_CONNECTIONS[{name}].{finding.field.removeprefix('LIFECYCLE_AD_').lower()}"
            findings.append(_env(field, finding.problem, finding.fix))
    graph_credentials = settings.graph_client_id or settings.graph_client_secret.get_secret_value()
    if graph_credentials and not settings.graph_tenant_id:
        findings.append(
            _env(
                "LIFECYCLE_GRAPH_TENANT_ID",
                "Graph credentials are set without a tenant",
                "set the directory (tenant) id of the app registration",
            )
        )
    if settings.graph_tenant_id and not settings.graph_client_id:
        findings.append(
            _env(
                "LIFECYCLE_GRAPH_CLIENT_ID",
                "a Graph tenant is set without a client id",
                "set the application (client) id of the app registration",
            )
        )
    findings += _check_graph_connections(settings)
    for field in ("halo_ca_file", "graph_ca_file", "graph_certificate_file"):
        path = getattr(settings, field)
        if path is not None and not Path(path).is_file():
            findings.append(
                _env(
                    ENV_PREFIX + field.upper(),
                    f"{path} does not exist",
                    "give the path of an existing file, or unset it",
                )
            )
    return findings


def _check_graph_connections(settings: Settings) -> list[Finding]:
    """Each more tenant needs an app to reach it with: its own, or the default one (a multi-tenant app)."""
    findings: list[Finding] = []
    for name, connection in sorted(settings.graph_connections.items()):
        field = f"LIFECYCLE_GRAPH_CONNECTIONS[{name}]"
        has_credential = bool(connection.certificate_file or connection.secret_value())
        if connection.client_id and not has_credential:
            findings.append(
                _env(
                    f"{field}.client_id",
                    "a client id without its credential",
                    "add client_secret, client_secret_env or certificate_file, or leave client_id out to use "
                    "LIFECYCLE_GRAPH_CLIENT_ID (one multi-tenant app)",
                )
            )
        elif not connection.client_id and not settings.graph_client_id:
            findings.append(
                _env(
                    field,
                    "no app to reach this tenant with (no client_id, and LIFECYCLE_GRAPH_CLIENT_ID is empty: the "
                    "managed identity cannot reach another tenant)",
                    "set LIFECYCLE_GRAPH_CLIENT_ID and its credential (a multi-tenant app with admin consent in each "
                    "tenant: docs/deployment.md, 'Many tenants')",
                )
            )
        if connection.client_secret_env and not connection.secret_value():
            findings.append(
                _env(
                    f"{field}.client_secret_env",
                    f"the app setting {connection.client_secret_env} is not set",
                    "set it (in Azure, to a Key Vault reference of the tenant's secret)",
                )
            )
        if connection.certificate_file is not None and not Path(connection.certificate_file).is_file():
            findings.append(
                _env(f"{field}.certificate_file", f"{connection.certificate_file} does not exist", "fix the path")
            )
    return findings


# Mapping -----------------------------------------------------------------------------------------------------
class _Lines:
    """Finds the line of a mapping file where a key or value appears (tomllib keeps no positions)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            self.lines = []

    def of(self, *needles: str) -> str:
        for needle in needles:
            for number, line in enumerate(self.lines, start=1):
                if needle and needle in line:
                    return f"{self.path}:{number}"
        return str(self.path)


def _field_names(source: str) -> frozenset[str]:
    return compile_template(source).fields


def _unknown_field(name: str) -> bool:
    return not name.startswith(("cf.", "var.")) and name not in known_halo_fields()


def _field_findings(lines: _Lines, location: str, source: str, names: Iterable[str]) -> list[Finding]:
    return [
        Finding(
            lines.of(source, name),
            location,
            f"{name!r} is not a field of a Halo user, so this is never filled in",
            _did_you_mean(name, known_halo_fields(), "custom fields are cf.<name> (lower case, _ for spaces)"),
        )
        for name in sorted(names)
        if _unknown_field(name)
    ]


def _conditions(mapping: Mapping) -> Iterable[tuple[str, dict[str, Any]]]:
    yield "scope.when", mapping.scope.when
    for i, routing_rule in enumerate(mapping.routing.rules):
        yield f"routing.rules[{i}].when", routing_rule.when
    for i, ou_rule in enumerate(mapping.ou.rules):
        yield f"ou.rules[{i}].when", ou_rule.when
    for i, group_rule in enumerate(mapping.groups.rules):
        yield f"groups.rules[{i}].when", group_rule.when
    for lifecycle in ("joiner", "mover", "leaver", "rehire", "deleted"):
        for i, step in enumerate(getattr(mapping.lifecycles, lifecycle) or []):
            yield f"lifecycles.{lifecycle}[{i}].when", step.when


def _templates(mapping: Mapping) -> Iterable[tuple[str, str]]:
    """(location, template) for every template rendered over the Halo user."""
    naming = mapping.naming
    for key in ("samaccountname", "userprincipalname", "mail"):
        for i, source in enumerate(getattr(naming, key)):
            yield f"naming.{key}[{i}]", source
    yield "naming.cn", naming.cn
    for attribute, source in mapping.attributes.items():
        yield f"attributes.{attribute}", source
    yield "ou.default", mapping.ou.default
    for i, ou_rule in enumerate(mapping.ou.rules):
        yield f"ou.rules[{i}].ou", ou_rule.ou
    for i, group_rule in enumerate(mapping.groups.rules):
        for j, group in enumerate(group_rule.groups):
            yield f"groups.rules[{i}].groups[{j}]", group
    for name, table in mapping.templates.items():
        for attribute, source in table.items():
            yield f"templates.{name}.{attribute}", source


def check_mapping(mapping: Mapping, path: Path, settings: Settings) -> list[Finding]:
    """Routing targets that do not exist, and template or condition fields no Halo user has."""
    lines = _Lines(path)
    findings: list[Finding] = []
    connections = {"default", *settings.ad_connections, *settings.graph_connections}
    targets = [("routing.default", mapping.routing.default)]
    targets += [(f"routing.rules[{i}].connection", r.connection) for i, r in enumerate(mapping.routing.rules)]
    for location, connection in targets:
        if connection not in connections:
            findings.append(
                Finding(
                    lines.of(f'"{connection}"'),
                    location,
                    f"connection {connection!r} is not defined",
                    _did_you_mean(
                        connection,
                        connections,
                        "define it in LIFECYCLE_AD_CONNECTIONS and/or LIFECYCLE_GRAPH_CONNECTIONS (JSON maps)",
                    ),
                )
            )
    for location, source in _templates(mapping):
        findings += _field_findings(lines, location, source, _field_names(source))
    for location, condition in _conditions(mapping):
        findings += _field_findings(lines, location, "", list(condition))
    for lifecycle in ("joiner", "mover", "leaver", "rehire", "deleted"):
        for i, step in enumerate(getattr(mapping.lifecycles, lifecycle) or []):
            for source in template_strings(step.extension_params):
                names = [n for n in _field_names(source) if n not in _ACCOUNT_FIELDS]
                findings += _field_findings(lines, f"lifecycles.{lifecycle}[{i}]", source, names)
    return findings


# Step parameters may also read the person's account once it exists (home folders, write-back, mail).
_ACCOUNT_FIELDS: frozenset[str] = frozenset(
    {"samaccountname", "userprincipalname", "upn", "mail", "dn", "cn", "displayname", "sid", "objectsid",
     "password", "homedirectory", "manager"}
)  # fmt: skip


def check_all(settings: Settings, mapping: Mapping, environ: MappingABC[str, str]) -> list[Finding]:
    """Every finding, environment first."""
    return [
        *check_environment(environ),
        *check_settings(settings, ad_used=uses_ad(mapping)),
        *check_mapping(mapping, Path(settings.mapping_file), settings),
    ]
