"""Entra ID: the OpenID configuration, the token endpoint (secret or certificate) and managed identity."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any
from urllib.parse import parse_qs

from tests.standins.graph.model import Answer, now
from tests.standins.graph.state import _State


class EntraMixin(_State):
    def _entra(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        base = f"{self.url}/{self.tenant}"
        if path == "/v2.0/.well-known/openid-configuration" and method == "GET":
            return (
                200,
                {
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    "issuer": f"{base}/v2.0",
                    "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                },
                {},
            )
        if path == "/oauth2/v2.0/token" and method == "POST":
            form = {k: v[0] for k, v in parse_qs(body.decode("utf-8")).items()}
            with self._lock:
                self.token_requests.append(
                    {k: v for k, v in form.items() if k not in ("client_secret", "client_assertion")}
                )
            if form.get("grant_type") != "client_credentials":
                return 400, {"error": "unsupported_grant_type", "error_description": "AADSTS70003"}, {}
            client = form.get("client_id", "")
            if not form.get("scope", "").endswith("/.default"):
                return (
                    400,
                    {"error": "invalid_scope", "error_description": "AADSTS1002012: scope must be /.default"},
                    {},
                )
            known_here = client in self.clients or client in self.certificates
            if not known_here and any(client in t.clients or client in t.certificates for t in self.tenants.values()):
                # A multi-tenant app with no service principal (no admin consent) in this tenant: AADSTS700016,
                # "Application with identifier ... was not found in the directory ... This can happen if the
                # application has not been installed by the administrator of the tenant or consented to by any
                # user in the tenant" (https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes).
                return (
                    400,
                    {
                        "error": "unauthorized_client",
                        "error_description": f"AADSTS700016: Application with identifier '{client}' was not found "
                        f"in the directory '{self.tenant}'.",
                        "error_codes": [700016],
                    },
                    {},
                )
            if "client_assertion" in form:
                ok = self._assertion_valid(client, form["client_assertion"], f"{base}/oauth2/v2.0/token")
            else:
                expected = self.clients.get(client)
                ok = expected is not None and secrets.compare_digest(expected, form.get("client_secret", ""))
            if not ok:
                return (
                    401,
                    {
                        "error": "invalid_client",
                        "error_description": "AADSTS7000215: Invalid client secret provided.",
                        "error_codes": [7000215],
                    },
                    {},
                )
            return 200, self._issue(client, form.get("scope", "")), {}
        return 404, {"error": "not_found"}, {}

    def _managed_identity(self, query: str, headers: dict[str, str]) -> Answer:
        params = {k: v[0] for k, v in parse_qs(query).items()}
        if headers.get("x-identity-header") != self.identity_header:
            return 401, {"error": "unauthorized"}, {}
        with self._lock:
            self.token_requests.append({"managed_identity": params.get("client_id", "system")})
        token = self._issue()
        expires = int(now().timestamp()) + 3600
        return (
            200,
            {
                "access_token": token["access_token"],
                "expires_on": str(expires),
                "resource": params.get("resource", ""),
                "token_type": "Bearer",
            },
            {},
        )

    def _issue(self, client: str = "", scope: str = "") -> dict[str, Any]:
        # JWT-shaped, as Entra's are: ``tid`` is the issuing tenant and ``roles`` the application permissions
        # admin consent granted in it, absent when none are (https://learn.microsoft.com/en-us/entra/
        # identity-platform/access-token-claims-reference). The signature is random: Graph (this stand-in)
        # checks tokens by lookup; the service reads the claims only to report them (lifecycle doctor).
        claims: dict[str, Any] = {"aud": scope.removesuffix("/.default"), "tid": self.tenant, "appid": client}
        if self.granted.get(client):
            claims["roles"] = sorted(self.granted[client])
        token = ".".join(
            base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
            for part in ({"typ": "JWT", "alg": "RS256"}, claims)
        )
        token += "." + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens.add(token)
        return {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}

    def _assertion_valid(self, client: str, assertion: str, audience: str) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        certificate = self.certificates.get(client)
        if certificate is None:
            return False
        try:
            head, payload, signature = assertion.split(".")
            header = json.loads(_unb64(head))
            claims = json.loads(_unb64(payload))
            key = certificate.public_key()
            signed = f"{head}.{payload}".encode("ascii")
            if header.get("alg") == "PS256":
                thumb = base64.urlsafe_b64encode(certificate.fingerprint(hashes.SHA256())).rstrip(b"=").decode()
                if str(header.get("x5t#S256", "")).rstrip("=") != thumb:
                    return False
                key.verify(
                    _unb64(signature),
                    signed,
                    padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
                    hashes.SHA256(),
                )
            elif header.get("alg") == "RS256":
                key.verify(_unb64(signature), signed, padding.PKCS1v15(), hashes.SHA256())
            else:
                return False
        except (ValueError, InvalidSignature):
            return False
        return bool(
            claims.get("iss") == client
            and claims.get("sub") == client
            and claims.get("aud") == audience
            and int(claims.get("exp", 0)) > now().timestamp()
        )


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
