"""Typed settings, read from the environment in one place.

Every variable is ``LIFECYCLE_<FIELD>`` (upper case). Secrets are ``SecretStr`` so they never print.
In Azure the same names are app settings (Key Vault references for the secrets); locally they come from
the environment or from ``.local/dev.env`` written by ``make run``.

The sources, in order: arguments to ``Settings(...)``, then the environment (``environment_values``), then the
defaults. The reader is ours rather than pydantic-settings': this model is validated on the cold path of the first
webhook, and importing pydantic-settings (its CLI, dotenv and cloud-secret sources, none of which the service
uses) cost that path about a quarter of ``import azure.functions`` (docs/benchmarks.md, section 2).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# The models the fields are built from, and the invocation budget; the one module of ours the settings read
# (it imports nothing of ours either: tests/unit/test_layering.py).
from lifecycle.settings_models import ADConnection, FileRoot, GraphConnection, ScriptEntry, fits

ENV_PREFIX = "LIFECYCLE_"

EventKind = Literal["created", "updated", "deleted"]

DEFAULT_HALO_EVENT_MAP: dict[str, EventKind] = {
    "user created": "created",
    "new user": "created",
    "user updated": "updated",
    "user changed": "updated",
    "user deleted": "deleted",
    "user inactive": "updated",
}

# Halo user field -> template over the person's AD account (its attributes in lower case, plus dn and upn):
# what the halo_writeback action writes back to Halo by default.
DEFAULT_HALO_WRITEBACK_FIELDS: dict[str, str] = {
    "samaccountname": "{samaccountname}",
    "activedirectory_dn": "{dn}",
}
# AD attribute -> template over the Halo user: how reconciliation finds an existing account that does not carry
# the anchor yet (tried in order, after the anchor; a value found on several accounts matches none).
DEFAULT_HALO_RECONCILE_FALLBACKS: dict[str, str] = {
    "mail": "{emailaddress}",
    "userPrincipalName": "{emailaddress}",
    "sAMAccountName": "{login}",
}

# Settings the Azure Functions host (not this package) reads; the infrastructure sets them too.
HOST_SETTING_NAMES: frozenset[str] = frozenset(
    {
        "AzureWebJobsStorage__accountName",
        "AzureWebJobsStorage__credential",
        "AzureWebJobsStorage__clientId",
        "ServiceBusConnection__fullyQualifiedNamespace",
        "ServiceBusConnection__credential",
        "ServiceBusConnection__clientId",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
        "AZURE_CLIENT_ID",
        # Disables the Service Bus trigger when an on-premises `lifecycle worker` serves the queue.
        "AzureWebJobs.work.Disabled",
    }
)


class Settings(BaseModel):
    """Everything the service reads from its environment.

    ``Settings(**values)`` reads the ``LIFECYCLE_*`` variables (``environment_values``); ``values`` take
    precedence (merged into a dict-valued field's, key by key).
    """

    # Defaults are validated like given values (a default a validator refuses is a bug, found at start-up).
    model_config = ConfigDict(extra="ignore", validate_default=True)

    # Where the mapping (Halo fields to AD attributes, OUs, groups, step lists) lives.
    mapping_file: Path = Path("mapping.example.toml")
    # Local mode: where the embedded queue and store keep their SQLite files.
    data_dir: Path = Path(".local/data")
    queue_backend: Literal["embedded", "servicebus"] = "embedded"
    store_backend: Literal["embedded", "table"] = "embedded"

    # Webhook authentication. "any": one configured scheme must verify; "all": every configured one must.
    webhook_auth: Literal["any", "all", "none"] = "any"
    webhook_basic_user: str = ""
    webhook_basic_password: SecretStr = SecretStr("")
    webhook_hmac_secret: SecretStr = SecretStr("")
    # One signing secret per event kind, as JSON {"created": "...", "deleted": "..."}: a body verified by the
    # secret of a kind can only be that kind, so ?event= is trusted only with these (docs/halo-setup.md).
    webhook_hmac_secrets: dict[EventKind, SecretStr] = Field(default_factory=dict)
    # How Halo's Webhook object signs (authentication_header, algorithm, digest, signature_prefix).
    webhook_hmac_header: str = Field(default="Token", min_length=1)
    webhook_hmac_algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    webhook_hmac_encoding: Literal["base64", "hex"] = "base64"
    webhook_hmac_prefix: str = ""
    # A signed body's timestamp must lie within this many seconds of now (either side); a body timestamp
    # further than webhook_max_future_seconds ahead is refused whatever the authentication.
    webhook_signed_window_seconds: float = Field(default=600.0, gt=0)
    webhook_max_future_seconds: float = Field(default=300.0, ge=0)
    # Halo batches full objects with linked objects: 16 MiB by default.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    # Halo event display names (case-insensitive) to event kinds, as JSON.
    halo_event_map: dict[str, EventKind] = Field(default_factory=lambda: dict(DEFAULT_HALO_EVENT_MAP))

    # The default Active Directory connection ("default" in the mapping's routing).
    ad_url: str = "ldaps://127.0.0.1:636"
    ad_user: str = ""
    ad_password: SecretStr = SecretStr("")
    ad_base_dn: str = ""
    ad_ca_file: Path | None = None
    ad_tls_server_name: str | None = None
    ad_start_tls: bool = False
    ad_allow_plaintext: bool = False
    ad_timeout_seconds: float = 10.0
    # More named connections (an MSP serving several domains), as JSON: {"name": {ADConnection fields}}.
    ad_connections: dict[str, ADConnection] = Field(default_factory=dict)

    # Worker behaviour.
    worker_concurrency: int = Field(default=4, ge=1, le=64)
    # A transient failure is retried with backoff for this long before the item is dead-lettered.
    retry_max_seconds: float = Field(default=24 * 3600, gt=0)
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_cap_seconds: float = Field(default=300.0, gt=0)
    max_deliveries: int = Field(default=10, ge=1)
    # A set-up problem (unresolved Key Vault reference, missing mapping, storage refusing the identity) makes an
    # item wait this long, rescheduled, instead of burning its deliveries.
    setup_retry_seconds: float = Field(default=600.0, gt=0)
    # NCRONTAB schedule of the timer that releases due staged work (the function binds it as
    # %LIFECYCLE_RELEASE_SCHEDULE%, so Azure must set it): every 5 minutes by default.
    release_schedule: str = "0 */5 * * * *"
    # Plan and audit, but write nothing to any target (a first week in production).
    dry_run: bool = False
    # Mass-change guard: destructive work items (leavers, deletions, the actions below) past either limit in
    # the sliding window are held for approval (`lifecycle held`). 0 turns a limit off; both 0, the guard.
    guard_max_count: int = Field(default=25, ge=0)
    # Percent of managed (active) people; the limit is at least 1 item.
    guard_max_percent: float = Field(default=0.0, ge=0, le=100)
    guard_window_seconds: float = Field(default=3600.0, gt=0)
    # Joiners (account creations) per window, counted apart from destructive work; past it they are held too.
    guard_max_joiners: int = Field(default=25, ge=0)
    guard_actions: list[str] = Field(
        default_factory=lambda: [
            "disable_user",
            "delete_user",
            "delete_cloud_user",
            "remove_licenses",
            "disable_mailbox",
            "delete_mailbox",
            "delete_home_folder",
        ]
    )
    # Bearer token of the operator routes (/api/manage/held); empty turns them off.
    admin_token: SecretStr = SecretStr("")
    # The operator console (/api/console, docs/console.md). Sign-in: "local" (a one-time link printed by
    # `lifecycle serve`, or the admin token) or "entra" (Microsoft Entra ID, authorization code with PKCE).
    console_auth: Literal["local", "entra"] = "local"
    # Signs the console's session cookies; empty: a random key per process (sessions end with the process).
    console_session_key: SecretStr = SecretStr("")
    console_session_hours: float = 8.0
    # https://login.microsoftonline.com/<tenant id>: the one tenant whose people may sign in.
    console_entra_authority: str = ""
    console_entra_client_id: str = ""
    console_entra_client_secret: SecretStr = SecretStr("")
    # The console's public sign-in callback, https://<app>/api/console/auth/callback (registered in Entra).
    console_redirect_uri: str = ""

    # Local host.
    host: str = "127.0.0.1"
    port: int = 7071
    log_level: str = "INFO"

    # Azure runtime (Service Bus and Table storage).
    servicebus_namespace: str = ""
    servicebus_queue: str = "lifecycle-work"
    servicebus_connection_string: SecretStr = SecretStr("")
    table_endpoint: str = ""
    table_connection_string: SecretStr = SecretStr("")

    # Halo's REST API: completes thin webhooks, reconciles, writes account identifiers back. Off while the URL is
    # empty. The token URL is discovered through /api/authinfo unless halo_auth_url is set (the auth server's
    # base, or its /token URL); hosted Halo needs the tenant.
    halo_api_url: str = ""
    halo_auth_url: str = ""
    halo_tenant: str = ""
    halo_client_id: str = ""
    halo_client_secret: SecretStr = SecretStr("")
    halo_scope: str = "all"
    # CA bundle for the Halo API and its auth server (tests, private CAs); the system CAs when unset.
    halo_ca_file: Path | None = None
    halo_timeout_seconds: float = Field(default=30.0, gt=0)
    # Client-side limit under Halo's (hosted: 300 requests per rolling 5 minutes). Per process: with several
    # instances, give each its share.
    halo_rate_limit: int = Field(default=300, ge=1)
    halo_rate_limit_window_seconds: float = Field(default=300.0, gt=0)
    # The share of that limit this service may use (Halo's limit is the tenant's: RMM and PSA tools use it
    # too). Shared by every instance through the store.
    halo_rate_share: float = Field(default=0.5, gt=0, le=1)
    halo_page_size: int = Field(default=100, ge=1, le=1000)
    # JSON: Halo field -> template over the AD account, the default fields of the halo_writeback action.
    halo_writeback_fields: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_HALO_WRITEBACK_FIELDS))
    # JSON: AD attribute -> template over the Halo user, to correlate accounts without the anchor ({} = none).
    halo_reconcile_fallbacks: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_HALO_RECONCILE_FALLBACKS))
    # What reconciliation does for a managed person no longer listed by Halo: nothing, the leaver steps, or
    # the deleted steps (both through the mass-change guard).
    halo_missing_users: Literal["ignore", "report", "leaver", "deleted"] = "report"
    # What a reconcile run does with the drift it finds: "report" (audit it and list it; change nothing) or
    # "apply" (send it through the planner, the guard and the queue, as webhooks would have).
    reconcile_mode: Literal["report", "apply"] = "report"
    # NCRONTAB schedule of the reconcile timer (the function binds it as %LIFECYCLE_RECONCILE_SCHEDULE%, so Azure
    # must set it): once a day at 05:00 UTC by default.
    reconcile_schedule: str = "0 0 5 * * *"
    # NCRONTAB schedule of the delta poll (bound as %LIFECYCLE_HALO_POLL_SCHEDULE%): every 5 minutes by default;
    # users changed in Halo since the last poll are picked up within one interval.
    halo_poll_schedule: str = "0 */5 * * * *"
    # Users per page of the delta poll's listing (a quiet poll reads one page).
    halo_poll_page_size: int = Field(default=50, ge=1, le=1000)
    # Ticket requests (docs/halo-setup.md, "Tickets"): the outcome of the private notes posted to tickets (its
    # name, or its id as digits; Halo refuses a note without one), and the ticket status to set per request
    # outcome, as JSON {"awaiting_approval"|"scheduled"|"running"|"completed"|"failed"|"held"|"rejected": id}.
    halo_note_outcome: str = ""
    halo_ticket_statuses: dict[str, int] = Field(default_factory=dict)

    # Microsoft Graph (Entra ID, Exchange Online, Teams): an app registration with a client secret or a
    # certificate (PEM with key and certificate), or, with no client id, the Function App's managed identity
    # (AZURE_CLIENT_ID). Base URL and authority host are settings so tests can point them at stand-ins.
    graph_tenant_id: str = ""
    graph_client_id: str = ""
    graph_client_secret: SecretStr = SecretStr("")
    graph_certificate_file: Path | None = None
    # More tenants (an MSP's customers), as JSON {"name": {GraphConnection fields}}: a person routed to connection
    # "name" (routing.rules) is served by that tenant; "default" is the LIFECYCLE_GRAPH_* one (docs/deployment.md).
    graph_connections: dict[str, GraphConnection] = Field(default_factory=dict)
    graph_authority_host: str = "https://login.microsoftonline.com"
    graph_base_url: str = "https://graph.microsoft.com/v1.0"
    # CA bundle for Graph, the token endpoint and photo sources (tests); the system CAs when unset.
    graph_ca_file: Path | None = None
    graph_timeout_seconds: float = Field(default=30.0, gt=0)
    # Retries of 429/503/504 inside one request (honouring Retry-After), before the step is rescheduled.
    graph_max_retries: int = Field(default=3, ge=0, le=10)
    # How the AD account is matched to its cloud user: by userPrincipalName or objectGUID = onPremisesImmutableId.
    graph_match: Literal["upn", "immutable_id"] = "upn"
    # How long after the AD account's creation a missing cloud user is waited for (directory sync), and how
    # often it is looked for; also the polling interval of a mailbox being provisioned.
    graph_sync_wait_seconds: float = Field(default=4 * 3600, gt=0)
    graph_poll_seconds: float = Field(default=120.0, gt=0)
    # Photos from URLs: only these hosts (https), and no input larger than this.
    photo_allowed_hosts: list[str] = Field(default_factory=list)
    photo_max_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    # Where a generated password goes: nowhere, or a mail to the manager (else the fallback address) sent
    # through Graph from the sender mailbox. The text is a template: {name} {upn} {sam} {password} {manager}.
    password_delivery: Literal["none", "graph_mail"] = "none"  # noqa: S105 - a channel name
    password_mail_sender: str = ""
    # The Graph identity that sends those mails: a key of LIFECYCLE_GRAPH_CONNECTIONS naming an app registration
    # that holds only Mail.Send (scoped to the sender by RBAC for Applications), so the service's own app needs no
    # Mail.Send; empty: the LIFECYCLE_GRAPH_* app. No routing rule should name that connection.
    password_mail_connection: str = ""
    password_mail_fallback: str = ""
    password_mail_subject: str = "Sign-in details for {name}"  # noqa: S105 - a template
    password_mail_body: str = (
        "Hello {manager},\n\nthe account of {name} is ready.\nUser name: {upn}\nInitial password: {password}\n\n"  # noqa: S105
        "Please hand it over in person; it must be changed at the first sign-in."
    )
    # The same delivery for a Temporary Access Pass (passwordless onboarding: create_temporary_access_pass);
    # {pass} is the pass, {start} and {end} its validity (UTC), besides {name} {upn} {sam} {manager}.
    tap_mail_subject: str = "Sign-in details for {name}"
    tap_mail_body: str = (
        "Hello {manager},\n\nthe account of {name} is ready.\nUser name: {upn}\nTemporary Access Pass: {pass}\n"
        "Valid from {start} until {end} (UTC).\n\nPlease hand it over in person; with it {name} signs in and "
        "sets up passwordless sign-in (Microsoft Authenticator, a passkey or Windows Hello)."
    )

    # Home folders: the roots (SMB shares or local mounts) below which folders may be created, moved, archived
    # or deleted, as JSON {"name": {FileRoot fields}}; a path below no root is refused.
    file_roots: dict[str, FileRoot] = Field(default_factory=dict)
    # Custom scripts: the allow-list, as JSON {"name": {ScriptEntry fields}}; a step naming another is refused.
    scripts: dict[str, ScriptEntry] = Field(default_factory=dict)
    # Where ``module:function`` scripts are looked for before installed packages.
    scripts_dir: Path = Path("scripts")

    @field_validator("ad_timeout_seconds", "halo_timeout_seconds", "graph_timeout_seconds")
    @classmethod
    def _waits_fit_an_invocation(cls, value: float, info: ValidationInfo) -> float:
        # One request waits this long inside one invocation (lifecycle.deadline).
        return fits(value, f"{ENV_PREFIX}{str(info.field_name).upper()}")

    @field_validator("halo_event_map", mode="before")
    @classmethod
    def _lower_event_names(cls, value: object) -> object:
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(value, dict):
            return {str(k).strip().lower(): v for k, v in value.items()}
        return value

    @field_validator("webhook_hmac_algorithm", "webhook_hmac_encoding", mode="before")
    @classmethod
    def _signing_option_names(cls, value: object) -> object:
        # Accept the spellings an administrator copies from Halo's screen: "SHA-256", "HMACSHA256", "Base64".
        if isinstance(value, str):
            return value.strip().lower().replace("-", "").replace("hmac", "").replace("_", "")
        return value

    @field_validator("halo_api_url", "halo_auth_url")
    @classmethod
    def _halo_https(cls, value: str) -> str:
        # Client credentials and every user's data travel over these: TLS only.
        if value and not value.lower().startswith("https://"):
            raise ValueError("must start with https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _halo_credentials(self) -> Settings:
        if self.halo_api_url and not (self.halo_client_id and self.halo_client_secret.get_secret_value()):
            raise ValueError(
                "LIFECYCLE_HALO_API_URL is set: LIFECYCLE_HALO_CLIENT_ID and LIFECYCLE_HALO_CLIENT_SECRET are needed"
            )
        return self

    @model_validator(mode="after")
    def _no_unresolved_key_vault_references(self) -> Settings:
        # In Azure a secret setting holds "@Microsoft.KeyVault(...)" until the platform resolves it; if it
        # does not (network-restricted vault, missing role), that text must never be taken as the secret.
        for name, value in self:
            if isinstance(value, SecretStr) and value.get_secret_value().startswith("@Microsoft.KeyVault("):
                raise ValueError(
                    f"{ENV_PREFIX}{name.upper()} is an unresolved Key Vault reference: check the app's "
                    "identity has Key Vault Secrets User and the vault is reachable"
                )
        return self

    @field_validator("graph_certificate_file", "graph_ca_file", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        # An app setting left empty means "not set", not the current directory.
        return None if value == "" else value

    def __init__(self, **values: Any) -> None:
        """The environment's ``LIFECYCLE_*`` variables, overridden by ``values``, validated.

        Raises:
            ValidationError: a value is invalid (one named by the variable's field), or a dict or list
                variable is not JSON.
        """
        super().__init__(**_deep_update(environment_values(), values))

    def ad_connection(self, name: str) -> ADConnection:
        """The named AD connection; ``default`` is built from the ``LIFECYCLE_AD_*`` variables."""
        if name == "default":
            return ADConnection(
                url=self.ad_url,
                user=self.ad_user,
                password=self.ad_password,
                base_dn=self.ad_base_dn,
                ca_file=self.ad_ca_file,
                tls_server_name=self.ad_tls_server_name,
                start_tls=self.ad_start_tls,
                allow_plaintext=self.ad_allow_plaintext,
                timeout_seconds=self.ad_timeout_seconds,
            )
        try:
            return self.ad_connections[name]
        except KeyError:
            raise KeyError(f"no AD connection named {name!r} (set LIFECYCLE_AD_CONNECTIONS)") from None

    def graph_settings(self, name: str) -> Settings:
        """These settings as the Graph connection ``name`` sees them (its tenant and credential in the
        ``graph_*`` fields); ``default`` is the ``LIFECYCLE_GRAPH_*`` one.

        Raises:
            KeyError: no Graph connection has this name (never another tenant instead).
        """
        if name == "default":
            return self
        try:
            connection = self.graph_connections[name]
        except KeyError:
            raise KeyError(f"no Graph connection named {name!r} (set LIFECYCLE_GRAPH_CONNECTIONS)") from None
        secret = connection.secret_value()
        if secret.startswith("@Microsoft.KeyVault("):
            raise ValueError(
                f"the Graph connection {name!r}: {connection.client_secret_env or 'client_secret'} is an unresolved "
                "Key Vault reference: check the app's identity has Key Vault Secrets User and the vault is reachable"
            )
        update: dict[str, object] = {"graph_tenant_id": connection.tenant_id}
        if connection.client_id:
            update.update(
                graph_client_id=connection.client_id,
                graph_client_secret=SecretStr(secret),
                graph_certificate_file=connection.certificate_file,
            )
        elif connection.certificate_file or secret:
            update.update(
                graph_client_secret=SecretStr(secret),
                graph_certificate_file=connection.certificate_file,
            )
        return self.model_copy(update=update)

    def secret_values(self) -> list[str]:
        """Every configured secret, for redaction of logs and audit records."""
        secrets = [
            self.webhook_basic_password,
            self.webhook_hmac_secret,
            *self.webhook_hmac_secrets.values(),
            self.ad_password,
            self.servicebus_connection_string,
            self.table_connection_string,
            self.graph_client_secret,
            self.halo_client_secret,
            self.admin_token,
            self.console_session_key,
            self.console_entra_client_secret,
            *(c.password for c in self.ad_connections.values()),
            *(SecretStr(c.secret_value()) for c in self.graph_connections.values()),
            *(r.password for r in self.file_roots.values()),
            *(SecretStr(e.secret_value()) for e in self.scripts.values()),
        ]
        return [s.get_secret_value() for s in secrets if s.get_secret_value()]


def _is_json(annotation: Any) -> bool:
    """Whether a field's variable holds JSON: a dict, a list or a model (also as a member of a union)."""
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        return any(_is_json(arg) for arg in get_args(annotation))
    kind = origin or annotation
    if not isinstance(kind, type) or issubclass(kind, (str, bytes)):
        return False
    return issubclass(kind, (BaseModel, Mapping, Sequence, tuple, set, frozenset))


# The fields whose variables hold JSON ({"name": {...}}, ["..."]); every other variable is the value as text.
_JSON_FIELDS = frozenset(name for name, info in Settings.model_fields.items() if _is_json(info.annotation))


def environment_values(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings given by ``environ`` (default: ``os.environ``), by field name.

    ``LIFECYCLE_<FIELD>`` in any case (the last spelling wins); an empty variable is not set (an empty
    LIFECYCLE_AD_CA_FILE must not become the path "."); a dict or list field's variable is parsed as JSON.

    Raises:
        ValidationError: a JSON variable does not parse (the error names the field, as pydantic's do).
    """
    variables = {key.lower(): value for key, value in (os.environ if environ is None else environ).items()}
    prefix = ENV_PREFIX.lower()
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = variables.get(prefix + name)
        if not raw:
            continue
        if name not in _JSON_FIELDS:
            values[name] = raw
            continue
        try:
            values[name] = json.loads(raw)
        except ValueError as exc:
            raise ValidationError.from_exception_data(
                Settings.__name__, [{"type": "json_invalid", "loc": (name,), "input": raw, "ctx": {"error": str(exc)}}]
            ) from None
    return values


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update``'s entries, dicts merged key by key (a given dict extends the environment's)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = _deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def app_setting_names() -> frozenset[str]:
    """The environment variable names this package reads (the infrastructure must set exactly these)."""
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
