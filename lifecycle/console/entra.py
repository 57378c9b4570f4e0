"""Sign-in to the console with Microsoft Entra ID: authorization code flow with PKCE, through msal.

Why in the app and not App Service Authentication ("Easy Auth"): the Flex Consumption plan this project
deploys to does not support it (Microsoft's Flex Consumption considerations: "EasyAuth isn't currently
supported. Unauthenticated callers currently aren't blocked when EasyAuth is enabled"), so a header the
platform would set could be forged by anyone.

msal builds the PKCE challenge, the state and the nonce (``initiate_auth_code_flow``) and checks the state and
the nonce when it redeems the code (``acquire_token_by_auth_code_flow``). Since msal 1.38 it no longer
validates the ID token itself, so ``finish`` does: the issuer is the configured tenant's, the audience is
this app, the token is within its lifetime. The token comes straight from the token endpoint over TLS, which
OpenID Connect Core 1.0 section 3.1.3.7 (step 6) accepts in place of a signature check.

Two app roles of the app registration decide what a person may do: ``Console.Read`` (see) and
``Console.Act`` (see and act). The roles arrive in the ID token's ``roles`` claim.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lifecycle.errors import LifecycleError

if TYPE_CHECKING:
    from lifecycle.settings import Settings

ROLE_READ = "Console.Read"
ROLE_ACT = "Console.Act"
# Authorities that name no one tenant: any Entra tenant's users could sign in through them.
_SHARED_TENANTS = {"common", "organizations", "consumers"}
_MICROSOFT_HOSTS = {"login.microsoftonline.com", "login.microsoftonline.us", "login.partner.microsoftonline.cn"}
CLOCK_SKEW_SECONDS = 120


class SignInFailed(LifecycleError):
    """Entra answered the sign-in with an error, or the answer did not match the flow we started."""


def roles_from_claims(claims: dict[str, Any]) -> set[str]:
    """The console roles an ID token grants: act implies read; no role, no access."""
    granted = set(claims.get("roles") or [])
    roles: set[str] = set()
    if ROLE_READ in granted or ROLE_ACT in granted:
        roles.add("read")
    if ROLE_ACT in granted:
        roles.add("act")
    return roles


def name_from_claims(claims: dict[str, Any]) -> str:
    """The name the audit records: the sign-in name (UPN), else the display name, else the object id."""
    return str(claims.get("preferred_username") or claims.get("name") or claims.get("oid") or "unknown")


class EntraSignIn:
    """The confidential client of the console's app registration."""

    def __init__(self, settings: Settings, *, http_client: Any = None, clock: Any = time.time) -> None:
        import msal  # type: ignore[import-untyped]

        if not settings.console_entra_client_id or not settings.console_redirect_uri:
            raise LifecycleError(
                "LIFECYCLE_CONSOLE_AUTH=entra needs LIFECYCLE_CONSOLE_ENTRA_CLIENT_ID and "
                "LIFECYCLE_CONSOLE_REDIRECT_URI"
            )
        authority = settings.console_entra_authority.rstrip("/")
        parts = urlsplit(authority)
        tenant = parts.path.strip("/").split("/")[-1] if parts.path.strip("/") else ""
        if parts.scheme != "https" or not tenant or tenant.lower() in _SHARED_TENANTS:
            raise LifecycleError(
                "LIFECYCLE_CONSOLE_ENTRA_AUTHORITY must be https://login.microsoftonline.com/<your tenant id>: "
                "a shared authority (common, organizations) would let other tenants' users in"
            )
        self.client_id = settings.console_entra_client_id
        self.issuer = f"{authority}/v2.0"
        self.redirect_uri = settings.console_redirect_uri
        self.clock = clock
        self.app = msal.ConfidentialClientApplication(
            self.client_id,
            client_credential=settings.console_entra_client_secret.get_secret_value(),
            authority=authority,
            http_client=http_client,
            # Only Microsoft's own hosts are known to its instance discovery; another host is taken as given.
            instance_discovery=parts.hostname in _MICROSOFT_HOSTS,
        )

    def begin(self) -> tuple[str, dict[str, Any]]:
        """The URL to send the browser to, and the flow to keep until it comes back (state, nonce, verifier)."""
        import warnings

        with warnings.catch_warnings():
            # msal suggests form_post (RFC 9700 4.3.1); the console keeps the code in the query on purpose: a
            # cross-site POST would carry the flow cookie only with SameSite=None. The code is single-use and
            # useless without the PKCE verifier, which never leaves the server's sealed cookie.
            warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended")
            flow: dict[str, Any] = self.app.initiate_auth_code_flow(
                scopes=[], redirect_uri=self.redirect_uri, response_mode="query"
            )
        url = str(flow.pop("auth_uri"))
        return url, flow

    def finish(self, flow: dict[str, Any], query: dict[str, str]) -> tuple[str, set[str]]:
        """Redeem the code; the signed-in person's name and console roles.

        Raises:
            SignInFailed: Entra refused, or the state, nonce or PKCE verifier did not match.
        """
        try:
            result = self.app.acquire_token_by_auth_code_flow(flow, query)
        except (ValueError, RuntimeError) as exc:  # msal: a state or nonce that does not match
            raise SignInFailed(f"the sign-in answer did not match the sign-in we started ({exc})") from None
        if "error" in result:
            raise SignInFailed(f"{result.get('error')}: {result.get('error_description', '')}".strip())
        claims: dict[str, Any] = result.get("id_token_claims") or {}
        self._validate(claims)
        return name_from_claims(claims), roles_from_claims(claims)

    def _validate(self, claims: dict[str, Any]) -> None:
        """The ID token checks msal leaves to the app (OpenID Connect Core 1.0, 3.1.3.7)."""
        if not claims:
            raise SignInFailed("the token endpoint answered without an ID token")
        if claims.get("iss") != self.issuer:
            raise SignInFailed(f"the ID token was issued by {claims.get('iss')!r}, not by {self.issuer!r}")
        audience = claims.get("aud")
        if audience != self.client_id and not (isinstance(audience, list) and self.client_id in audience):
            raise SignInFailed("the ID token is for another application")
        now = float(self.clock())
        try:
            expires, not_before = float(claims["exp"]), float(claims.get("nbf", now))
        except (KeyError, TypeError, ValueError):
            raise SignInFailed("the ID token has no valid expiry") from None
        if expires < now - CLOCK_SKEW_SECONDS or not_before > now + CLOCK_SKEW_SECONDS:
            raise SignInFailed("the ID token is expired or not valid yet")
