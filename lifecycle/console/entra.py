"""Sign-in to the console with Microsoft Entra ID: authorization code flow with PKCE, through msal.

Why in the app and not App Service Authentication ("Easy Auth"): the Flex Consumption plan this project
deploys to does not support it (Microsoft's Flex Consumption considerations: "EasyAuth isn't currently
supported. Unauthenticated callers currently aren't blocked when EasyAuth is enabled"), so a header the
platform would set could be forged by anyone. msal builds the PKCE challenge, state and nonce
(``initiate_auth_code_flow``) and checks them, the ID token's issuer, audience, expiry and nonce when it
redeems the code (``acquire_token_by_auth_code_flow``); the token comes straight from the token endpoint over
TLS, which OpenID Connect Core 1.0 section 3.1.3.7 accepts in place of a signature check.

Two app roles of the app registration decide what a person may do: ``Console.Read`` (see) and
``Console.Act`` (see and act). The roles arrive in the ID token's ``roles`` claim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lifecycle.errors import LifecycleError

if TYPE_CHECKING:
    from lifecycle.settings import Settings

ROLE_READ = "Console.Read"
ROLE_ACT = "Console.Act"


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

    def __init__(self, settings: Settings) -> None:
        import msal  # type: ignore[import-untyped]

        if not settings.console_entra_client_id or not settings.console_redirect_uri:
            raise LifecycleError(
                "LIFECYCLE_CONSOLE_AUTH=entra needs LIFECYCLE_CONSOLE_ENTRA_CLIENT_ID and "
                "LIFECYCLE_CONSOLE_REDIRECT_URI"
            )
        self.redirect_uri = settings.console_redirect_uri
        self.app = msal.ConfidentialClientApplication(
            settings.console_entra_client_id,
            client_credential=settings.console_entra_client_secret.get_secret_value(),
            authority=settings.console_entra_authority,
        )

    def begin(self) -> tuple[str, dict[str, Any]]:
        """The URL to send the browser to, and the flow to keep until it comes back (state, nonce, verifier)."""
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
        except ValueError as exc:  # msal: state mismatch and similar
            raise SignInFailed(f"the sign-in answer did not match the sign-in we started ({exc})") from None
        if "error" in result:
            raise SignInFailed(f"{result.get('error')}: {result.get('error_description', '')}".strip())
        claims: dict[str, Any] = result.get("id_token_claims") or {}
        return name_from_claims(claims), roles_from_claims(claims)
