"""The value models the settings are made of, and the invocation budget they validate waits against.

``lifecycle.settings`` holds the one flat model of every ``LIFECYCLE_*`` variable; the models its fields are
built from (an AD connection, a Graph tenant, a home-folder root, an allow-listed script) live here, with the path
checks and the budget they use. Like the settings, this module imports nothing of ours
(``tests/unit/test_layering.py``), so any layer may read it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

# The invocation budget ----------------------------------------------------------------------------------------
# Defined here rather than in lifecycle.deadline so the settings depend on nothing of ours (deadline imports it);
# the models below validate their waits against it, as lifecycle.settings does its own.
# host.json sits at the root of the Functions app, next to the lifecycle package.
HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"
# host.json sets 4 minutes; a worker installed without host.json (the on-premises `lifecycle worker`) keeps the
# same budget, so an item behaves alike wherever it runs.
DEFAULT_FUNCTION_TIMEOUT_SECONDS = 240.0
DEADLINE_SHARE = 0.75

_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.\d+)?$")


def parse_timespan(text: str) -> float:
    """Seconds of a .NET TimeSpan as host.json writes it (``hh:mm:ss`` or ``d.hh:mm:ss``)."""
    match = _TIMESPAN.match(text.strip())
    if match is None:
        raise ValueError(f"not a TimeSpan (hh:mm:ss): {text!r}")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


@lru_cache(maxsize=1)
def function_timeout_seconds(path: Path = HOST_JSON) -> float:
    """host.json's ``functionTimeout`` in seconds (the default when the file or the key is missing)."""
    try:
        host = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return DEFAULT_FUNCTION_TIMEOUT_SECONDS
    value = host.get("functionTimeout")
    return DEFAULT_FUNCTION_TIMEOUT_SECONDS if value is None else parse_timespan(str(value))


def invocation_budget_seconds() -> float:
    """How long one invocation may take: 75 % of ``functionTimeout``."""
    return function_timeout_seconds() * DEADLINE_SHARE


def fits(value: float, what: str) -> float:
    """Validate a wait that happens inside one invocation: it may not exceed the invocation's budget.

    Raises:
        ValueError: ``value`` is longer than the budget (a setting validator turns it into a named error).
    """
    budget = invocation_budget_seconds()
    if value > budget:
        raise ValueError(
            f"{what} of {value:g} s is longer than one invocation may take ({budget:g} s: 75 % of host.json's "
            "functionTimeout); a longer wait must be rescheduled, not waited"
        )
    return value


# Models of the targets' configuration ----------------------------------------------------------------------
# The settings read them from the environment (lifecycle.settings), so they live below it; files_actions and
# script_actions re-export FileRoot, ScriptEntry and the path checks for the targets.
_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)
_FORBIDDEN_CHARS = set('<>:"/\\|?*')
_CALLABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


class UnsafePath(ValueError):
    """A path that is not a plain folder strictly below a configured root."""


def split_path(text: str) -> tuple[Literal["smb", "local"], tuple[str, ...], tuple[str, ...]]:
    """Split a path into its kind, its head (server and share; empty for local) and its components.

    ``\\\\server\\share\\a\\b`` (``/`` accepted as a separator too, as Windows does) or ``/a/b``. Components
    are returned as written: checking them is :func:`check_component`'s job. One trailing separator is allowed.
    """
    value = text.strip()
    if value.startswith(("\\\\", "//")):
        pieces = re.split(r"[\\/]", value[2:])
        if pieces and pieces[-1] == "":
            pieces.pop()
        if len(pieces) < 2 or not pieces[0] or not pieces[1]:
            raise UnsafePath(f"{text!r} is not a \\\\server\\share path")
        return "smb", (pieces[0], pieces[1]), tuple(pieces[2:])
    if value.startswith("/"):
        pieces = value[1:].split("/")
        if pieces and pieces[-1] == "":
            pieces.pop()
        return "local", (), tuple(pieces)
    raise UnsafePath(f"{text!r} is neither a UNC path (\\\\server\\share\\...) nor an absolute local path")


def check_component(name: str) -> None:
    """Refuse anything but a plain file name: no ``..``, separators, stream or drive colons, device names."""
    if name in ("", ".", ".."):
        raise UnsafePath(f"the path has an empty, '.' or '..' component ({name!r})")
    if len(name) > 255:
        raise UnsafePath("a path component is longer than 255 characters")
    bad = sorted({c for c in name if c in _FORBIDDEN_CHARS or ord(c) < 32})
    if bad:
        raise UnsafePath(f"the path component {name!r} contains {''.join(bad)!r}")
    if name != name.rstrip(" ."):
        raise UnsafePath(f"the path component {name!r} ends in a space or a dot")
    if _RESERVED.match(name):
        raise UnsafePath(f"the path component {name!r} is a reserved device name")


class FileRoot(BaseModel):
    """A place home folders may live: an SMB share (optionally a folder in it) or a locally mounted directory.

    Every home-folder path must lie strictly below a configured root, or the step is refused.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # ``\\server\share`` or ``\\server\share\folder`` (SMB), or an absolute local path (``/srv/home``).
    path: str
    port: int = Field(default=445, ge=1, le=65535)
    username: str = ""
    password: SecretStr = SecretStr("")
    auth_protocol: Literal["negotiate", "ntlm", "kerberos"] = "negotiate"
    # SMB 3 encryption of every message (the counterpart of LDAPS): on unless a test network says otherwise.
    encrypt: bool = True
    timeout_seconds: float = Field(default=30.0, gt=0)
    # Whether folders below this root may be deleted (archive roots usually; a live home share maybe not).
    allow_delete: bool = True

    @field_validator("timeout_seconds")
    @classmethod
    def _fits_an_invocation(cls, value: float) -> float:
        return fits(value, "timeout_seconds")

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        kind, head, parts = split_path(value)
        for part in parts:
            check_component(part)
        if kind == "smb" and len(head) != 2:
            raise ValueError("an SMB root is \\\\server\\share[\\folder...]")
        return value

    @property
    def kind(self) -> Literal["smb", "local"]:
        return split_path(self.path)[0]


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ScriptEntry(BaseModel):
    """One allow-listed script.

    ``python``: ``target`` is ``module:function``, loaded from the scripts folder (``LIFECYCLE_SCRIPTS_DIR``)
    or an installed package; it is called with (event, args) and returns ``{"status": "ok"|"retry"|"fail",
    "output": ...}``. ``webhook``: ``target`` is an https URL (plain http only to a loopback address); the
    JSON body is signed with HMAC-SHA256 under ``secret`` (or the environment variable ``secret_env``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["python", "webhook"]
    target: str
    secret: SecretStr | None = None
    secret_env: str | None = None
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Webhooks: a CA bundle for the endpoint (a private CA); the system CAs when unset.
    ca_file: Path | None = None
    # Webhooks answering 202 with a Location (or a JSON "poll_url") on the same origin are polled to completion.
    poll: bool = False
    poll_interval_seconds: float = Field(default=5.0, gt=0)
    poll_timeout_seconds: float = Field(default=600.0, gt=0)
    # Webhooks: a timed-out request may have started the job. Only an endpoint that honours the
    # Idempotency-Key header may be retried; otherwise the step waits for an operator (it may have run).
    retry_on_timeout: bool = False

    @field_validator("timeout_seconds", "poll_interval_seconds")
    @classmethod
    def _fits_an_invocation(cls, value: float, info: ValidationInfo) -> float:
        # Waited inside one invocation; the polling as a whole (poll_timeout_seconds) spans several.
        return fits(value, str(info.field_name))

    @model_validator(mode="after")
    def _target_fits_kind(self) -> ScriptEntry:
        if self.kind == "python":
            if not _CALLABLE.match(self.target):
                raise ValueError("a python script's target is module:function (as my_scripts.mail:convert)")
            return self
        parts = urlsplit(self.target)
        if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            raise ValueError("a webhook must be https:// (plain http only to a loopback address, for tests)")
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("a webhook's target is an https:// URL")
        if self.secret is None and not self.secret_env:
            raise ValueError("a webhook needs secret (or secret_env) to sign its body")
        return self

    def secret_value(self) -> str:
        """The signing secret: ``secret``, else the environment variable ``secret_env`` (empty if unset)."""
        if self.secret is not None:
            return self.secret.get_secret_value()
        return os.environ.get(self.secret_env or "", "") if self.secret_env else ""


class ADConnection(BaseModel):
    """How to reach one Active Directory domain. Only TLS (LDAPS or StartTLS) unless explicitly allowed."""

    url: str = "ldaps://127.0.0.1:636"
    user: str = ""
    password: SecretStr = SecretStr("")
    base_dn: str = ""
    ca_file: Path | None = None
    # The name the DC's certificate carries, when it differs from the host in ``url`` (e.g. a DC reached by IP).
    tls_server_name: str | None = None
    start_tls: bool = False
    allow_plaintext: bool = False
    timeout_seconds: float = 10.0

    @field_validator("timeout_seconds")
    @classmethod
    def _fits_an_invocation(cls, value: float) -> float:
        return fits(value, "timeout_seconds")

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if not value.startswith(("ldaps://", "ldap://")):
            raise ValueError("must start with ldaps:// or ldap://")
        return value


class GraphConnection(BaseModel):
    """How to reach one more Microsoft 365 tenant (an MSP's customer) through Graph: a ``routing.rules``
    connection name that is a key of ``LIFECYCLE_GRAPH_CONNECTIONS``.

    One multi-tenant app registration with admin consent in each customer's tenant is the documented set-up
    (docs/deployment.md, "Many tenants"): ``client_id`` and the credential then default to the
    ``LIFECYCLE_GRAPH_*`` ones and only ``tenant_id`` differs. Base URL, authority host and CA are shared.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The customer's tenant: its id (a GUID) or a verified domain (contoso.onmicrosoft.com).
    tenant_id: str = Field(min_length=1)
    # The app registration; empty: LIFECYCLE_GRAPH_CLIENT_ID (one multi-tenant app for every tenant).
    client_id: str = ""
    # Its credential: a secret, or the name of an app setting holding it (a Key Vault reference in Azure), or a
    # PEM file (key and certificate); none of them: the LIFECYCLE_GRAPH_* credential.
    client_secret: SecretStr = SecretStr("")
    client_secret_env: str = ""
    certificate_file: Path | None = None

    @field_validator("tenant_id")
    @classmethod
    def _one_tenant(cls, value: str) -> str:
        # A client-credentials token is for one named tenant; "common"/"organizations" would let Entra pick
        # (https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow).
        value = value.strip()
        if value.lower() in ("common", "organizations", "consumers") or not re.fullmatch(r"[A-Za-z0-9.\-]+", value):
            raise ValueError("a tenant id (GUID) or a verified domain of the tenant, not common/organizations")
        return value

    def secret_value(self) -> str:
        """The client secret: ``client_secret``, else the app setting ``client_secret_env`` (empty if unset)."""
        if self.client_secret.get_secret_value():
            return self.client_secret.get_secret_value()
        return os.environ.get(self.client_secret_env, "") if self.client_secret_env else ""
