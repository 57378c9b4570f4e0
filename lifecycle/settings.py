"""Typed settings, read from the environment in one place.

Every variable is ``LIFECYCLE_<FIELD>`` (upper case). Secrets are ``SecretStr`` so they never print.
In Azure the same names are app settings (Key Vault references for the secrets); locally they come from
the environment or from ``.local/dev.env`` written by ``make run``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    }
)


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

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if not value.startswith(("ldaps://", "ldap://")):
            raise ValueError("must start with ldaps:// or ldap://")
        return value


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    # An empty variable means "not set" (an empty LIFECYCLE_AD_CA_FILE must not become the path ".").
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", case_sensitive=False, env_ignore_empty=True
    )

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
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
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
    # Plan and audit, but write nothing to any target (a first week in production).
    dry_run: bool = False

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

    @field_validator("halo_event_map", mode="before")
    @classmethod
    def _lower_event_names(cls, value: object) -> object:
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(value, dict):
            return {str(k).strip().lower(): v for k, v in value.items()}
        return value

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

    def secret_values(self) -> list[str]:
        """Every configured secret, for redaction of logs and audit records."""
        secrets = [
            self.webhook_basic_password,
            self.webhook_hmac_secret,
            self.ad_password,
            self.servicebus_connection_string,
            self.table_connection_string,
            *(c.password for c in self.ad_connections.values()),
        ]
        return [s.get_secret_value() for s in secrets if s.get_secret_value()]


def app_setting_names() -> frozenset[str]:
    """The environment variable names this package reads (the infrastructure must set exactly these)."""
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
