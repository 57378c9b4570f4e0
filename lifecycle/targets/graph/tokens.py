"""Tokens for Graph: an app-only token from msal (client secret, certificate or managed identity).

msal is synchronous (requests); its in-memory cache answers almost every call without I/O, so the kiota
provider below runs it in a thread of the client's event loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from lifecycle import deadline
from lifecycle.errors import LifecycleError, Permanent, Retryable

if TYPE_CHECKING:
    from lifecycle.settings import Settings

_MICROSOFT_AUTHORITIES = ("login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn")


class TokenError(Exception):
    def __init__(self, error: LifecycleError) -> None:
        super().__init__(str(error))
        self.error = error


class TokenSource:
    """An app-only token from msal (client secret, certificate or managed identity), cached in memory."""

    def __init__(self, settings: Settings, resource: str) -> None:
        self.settings = settings
        self.resource = resource
        self._app: Any = None
        self._lock = threading.Lock()

    def _session(self) -> Any:
        import requests

        timeout = self.settings.graph_timeout_seconds

        class TimedSession(requests.Session):
            """Every request with a timeout: msal's ``timeout=`` applies only to a session msal makes itself
            (reference/graph.md), so a token endpoint that never answers would hold the worker for good."""

            def request(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
                # Never past the invocation's deadline (lifecycle.deadline), whatever timeout msal passes.
                left = deadline.bounded(kwargs.get("timeout") or timeout)
                if left <= 0:
                    raise requests.Timeout("the invocation's time is up before the token request")
                kwargs["timeout"] = left
                return super().request(*args, **kwargs)

        session = TimedSession()
        # REQUESTS_CA_BUNDLE would override verify= otherwise (graph.md); proxies from the environment too.
        session.trust_env = False
        session.verify = str(self.settings.graph_ca_file) if self.settings.graph_ca_file else True
        return session

    def _build(self) -> Any:
        import msal  # type: ignore[import-untyped]

        settings = self.settings
        if not settings.graph_client_id:
            # No app registration: the Function App's (user-assigned) managed identity.
            client_id = os.environ.get("AZURE_CLIENT_ID", "")
            identity: Any = (
                msal.UserAssignedManagedIdentity(client_id=client_id)
                if client_id
                else msal.SystemAssignedManagedIdentity()
            )
            return msal.ManagedIdentityClient(identity, http_client=self._session())
        if not settings.graph_tenant_id:
            raise Permanent("Graph: LIFECYCLE_GRAPH_TENANT_ID is not set")
        credential: Any
        if settings.graph_certificate_file:
            credential = certificate_credential(settings.graph_certificate_file)
        elif settings.graph_client_secret.get_secret_value():
            credential = settings.graph_client_secret.get_secret_value()
        else:
            raise Permanent(
                "Graph: LIFECYCLE_GRAPH_CLIENT_ID is set but neither LIFECYCLE_GRAPH_CLIENT_SECRET nor "
                "LIFECYCLE_GRAPH_CERTIFICATE_FILE is"
            )
        host = urlparse(settings.graph_authority_host)
        if host.scheme != "https":
            raise Permanent("Graph: LIFECYCLE_GRAPH_AUTHORITY_HOST must be https")
        return msal.ConfidentialClientApplication(
            settings.graph_client_id,
            authority=f"{settings.graph_authority_host.rstrip('/')}/{settings.graph_tenant_id}",
            client_credential=credential,
            http_client=self._session(),
            # Only Microsoft's own hosts are known to its instance discovery; another host is taken as given.
            instance_discovery=host.hostname in _MICROSOFT_AUTHORITIES,
            timeout=settings.graph_timeout_seconds,
        )

    def token(self) -> str:
        import msal  # type: ignore[import-untyped]
        import requests

        try:
            with self._lock:
                if self._app is None:
                    self._app = self._build()
                app = self._app
            if isinstance(app, msal.ManagedIdentityClient):
                result = app.acquire_token_for_client(resource=self.resource)
            else:
                result = app.acquire_token_for_client(scopes=[f"{self.resource}/.default"])
        except requests.RequestException as exc:
            with self._lock:
                self._app = None  # the constructor's discovery may have failed: build again next time
            raise TokenError(Retryable(f"Graph: cannot reach the token endpoint: {type(exc).__name__}")) from None
        except ValueError as exc:
            with self._lock:
                self._app = None
            raise TokenError(Permanent(f"Graph: the token configuration is wrong: {exc}")) from None
        if "access_token" in result:
            return str(result["access_token"])
        error = str(result.get("error", "unknown"))
        description = str(result.get("error_description", "")).splitlines()[0] if result else ""
        if error in ("temporarily_unavailable", "server_error") or result.get("error_codes") == [50058]:
            raise TokenError(Retryable(f"Graph: token endpoint busy: {error}"))
        raise TokenError(Permanent(f"Graph: no token for the app ({error}): {description}"))


def certificate_credential(path: Path) -> dict[str, str]:
    """msal's credential from a PEM file holding the private key and the certificate."""
    try:
        text = path.read_text(encoding="ascii")
    except OSError as exc:
        raise Permanent(f"Graph: cannot read LIFECYCLE_GRAPH_CERTIFICATE_FILE {path}: {exc.strerror}") from None
    key = re.search(
        r"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", text, re.S
    )
    certificate = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    if key is None or certificate is None:
        raise Permanent(f"Graph: {path} must hold a PEM private key and its certificate")
    # With the certificate (not a thumbprint) msal signs with PS256 and the SHA-256 thumbprint.
    return {"private_key": key.group(0), "public_certificate": certificate.group(0)}


class KiotaTokens:
    """kiota's AccessTokenProvider over msal; sends tokens only to the configured Graph host."""

    def __init__(self, source: TokenSource, base: Any) -> None:
        from kiota_abstractions.authentication import AllowedHostsValidator

        self._source = source
        self._validator = AllowedHostsValidator([base.hostname or ""])

    async def get_authorization_token(
        self, uri: str, additional_authentication_context: dict[str, Any] | None = None
    ) -> str:
        parsed = urlparse(uri)
        if not self._validator.is_url_host_valid(uri):
            return ""
        if parsed.scheme != "https" and parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            return ""
        # msal is synchronous (requests); its in-memory cache answers almost every call without I/O.
        return await asyncio.to_thread(self._source.token)

    def get_allowed_hosts_validator(self) -> Any:
        return self._validator
