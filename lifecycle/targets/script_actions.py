"""Custom scripts (system ``script``): the allow-list entry model and the ``run_script`` action. Light module.

A step names an entry of the allow-list in configuration (``LIFECYCLE_SCRIPTS``), never a command: the
mapping writes ``{ action = "run_script", script = "convert_to_shared", args = { mailbox = "{email}" } }``
and the worker refuses (and audits) any name that is not configured. The target is
``lifecycle.targets.scripts``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from lifecycle import deadline
from lifecycle.actions import ActionInfo

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_CALLABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


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
        return deadline.fits(value, str(info.field_name))

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


class RunScriptParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The allow-list entry's name (never a command, a path or a URL).
    script: str = Field(pattern=_NAME)
    # Arguments for the script, rendered from the mapping's templates for this user.
    args: dict[str, Any] = Field(default_factory=dict)


ACTIONS: tuple[ActionInfo, ...] = (
    ActionInfo(
        "run_script",
        "script",
        RunScriptParams,
        "run an allow-listed script (a Python callable or a signed webhook) once per work item",
        once_only=True,
    ),
)
