"""A stand-in for Microsoft Entra ID's sign-in of a web app: the authorization code flow with PKCE, over HTTPS.

What it follows (Microsoft identity platform, "OAuth 2.0 authorization code flow", and OpenID Connect Core 1.0):

- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: the endpoints and the ``issuer``
  (``https://<host>/{tenant}/v2.0``), which msal reads before anything else.
- ``GET /{tenant}/oauth2/v2.0/authorize``: ``response_type=code``, ``client_id``, a registered ``redirect_uri``,
  ``state``, ``nonce``, ``code_challenge`` with ``code_challenge_method=S256`` (Entra also takes ``plain``; the
  stand-in refuses it, the stricter choice). The person signs in (``signed_in``) and the browser is sent back
  with ``302`` to ``redirect_uri?code=..&state=..``; an unknown client or redirect URI is an error page (400),
  never a redirect.
- ``POST /{tenant}/oauth2/v2.0/token``: ``grant_type=authorization_code`` with the code (one use, ten minutes),
  the same ``redirect_uri``, the ``code_verifier`` whose SHA-256 is the challenge, and the client secret;
  otherwise ``400 invalid_grant`` (AADSTS70008 / AADSTS501481) or ``401 invalid_client`` (AADSTS7000215). The
  answer carries an ID token with ``iss``, ``aud`` (the client id), ``tid``, ``exp``/``iat``/``nbf``, ``nonce``,
  ``preferred_username``, ``name``, ``oid`` and ``roles`` (the app roles assigned to the person, omitted
  when none, as Entra omits it).

The ID token's signature is a placeholder: a client that receives it straight from the token endpoint over TLS
may skip the signature check (OpenID Connect Core 1.0, 3.1.3.7, step 6), and the console does. Knobs for the
worst plausible answers: ``id_token_overrides`` (a wrong audience or issuer, an expired token, another nonce).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.standins.tls import LoopbackTLSServer, serve_in_background, server_tls, shut_down

TENANT = "11111111-2222-3333-4444-555555555555"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    person: dict[str, Any]
    expires: float


@dataclass
class EntraSignInStandIn:
    """One app registration (``client_id``/``client_secret``/``redirect_uri``) and the person who signs in."""

    directory: Path
    client_id: str = "console-client-id"
    client_secret: str = "console-client-secret-value"
    redirect_uri: str = "https://console.example.test/api/console/auth/callback"
    signed_in: dict[str, Any] = field(
        default_factory=lambda: {"preferred_username": "ann@example.test", "name": "Ann", "roles": ["Console.Act"]}
    )
    id_token_overrides: dict[str, Any] = field(default_factory=dict)
    ca_file: Path | None = None
    url: str = ""
    _grants: dict[str, _Grant] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: Any = None
    _thread: Any = None

    @property
    def authority(self) -> str:
        return f"{self.url}/{TENANT}"

    def start(self) -> EntraSignInStandIn:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_file, tls = server_tls(self.directory)
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:
                standin._answer(self, "GET", b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0") or 0)
                standin._answer(self, "POST", self.rfile.read(length))

        server = LoopbackTLSServer(("127.0.0.1", 0), Handler)
        server.tls = tls
        self._server = server
        self.url = f"https://127.0.0.1:{server.server_address[1]}"
        self._thread = serve_in_background(server)
        return self

    def stop(self) -> None:
        shut_down(self._server, self._thread)

    # Protocol ------------------------------------------------------------------------------------------------
    def _answer(self, handler: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        url = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        prefix = f"/{TENANT}"
        path = url.path[len(prefix) :] if url.path.startswith(prefix + "/") else ""
        status, headers, payload = 404, {"Content-Type": "application/json"}, b'{"error":"not_found"}'
        if path == "/v2.0/.well-known/openid-configuration" and method == "GET":
            status, payload = 200, json.dumps(self._configuration()).encode()
        elif path == "/oauth2/v2.0/authorize" and method == "GET":
            status, headers, payload = self._authorize(query)
        elif path == "/oauth2/v2.0/token" and method == "POST":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            status, answer = self._token(form)
            payload = json.dumps(answer).encode()
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _configuration(self) -> dict[str, Any]:
        return {
            "issuer": f"{self.authority}/v2.0",
            "authorization_endpoint": f"{self.authority}/oauth2/v2.0/authorize",
            "token_endpoint": f"{self.authority}/oauth2/v2.0/token",
            "response_types_supported": ["code", "id_token", "code id_token"],
            "code_challenge_methods_supported": ["S256", "plain"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        }

    def _authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        page = {"Content-Type": "text/html"}
        if query.get("client_id") != self.client_id:
            return 400, page, b"AADSTS700016: application not found in the directory"
        if query.get("redirect_uri") != self.redirect_uri:
            return 400, page, b"AADSTS50011: the redirect URI does not match the ones configured"
        if query.get("response_type") != "code" or query.get("code_challenge_method") != "S256":
            return 400, page, b"AADSTS900144: response_type=code with an S256 code_challenge is required"
        if not query.get("code_challenge") or "openid" not in query.get("scope", "").split():
            return 400, page, b"AADSTS900144: code_challenge and the openid scope are required"
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._grants[code] = _Grant(
                self.client_id,
                self.redirect_uri,
                query["code_challenge"],
                query.get("nonce", ""),
                dict(self.signed_in),
                time.time() + 600,
            )
        back = {"code": code, "state": query.get("state", ""), "session_state": secrets.token_hex(8)}
        return 302, {**page, "Location": f"{self.redirect_uri}?{urlencode(back)}"}, b""

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != "authorization_code":
            return 400, {"error": "unsupported_grant_type", "error_description": "AADSTS70003"}
        if form.get("client_id") != self.client_id or not secrets.compare_digest(
            form.get("client_secret", ""), self.client_secret
        ):
            return 401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret."}
        with self._lock:
            grant = self._grants.pop(form.get("code", ""), None)  # a code works once
        if grant is None or grant.expires < time.time():
            return 400, {"error": "invalid_grant", "error_description": "AADSTS70008: the code has expired or was used"}
        if form.get("redirect_uri") != grant.redirect_uri:
            return 400, {"error": "invalid_grant", "error_description": "AADSTS50148: redirect_uri differs"}
        verifier = form.get("code_verifier", "")
        if _b64(hashlib.sha256(verifier.encode()).digest()) != grant.challenge:
            return 400, {"error": "invalid_grant", "error_description": "AADSTS501481: code_verifier mismatch"}
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": f"{self.authority}/v2.0",
            "aud": self.client_id,
            "tid": TENANT,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "nonce": grant.nonce,
            "oid": "00000000-0000-0000-0000-00000000a11e",
            "sub": "subject-of-ann",
            "ver": "2.0",
            **{k: v for k, v in grant.person.items() if not (k == "roles" and not v)},
            **self.id_token_overrides,
        }
        header = _b64(json.dumps({"typ": "JWT", "alg": "RS256", "kid": "stand-in"}).encode())
        id_token = f"{header}.{_b64(json.dumps(claims).encode())}.{_b64(b'placeholder-signature')}"
        return 200, {
            "token_type": "Bearer",
            "scope": "openid profile offline_access",
            "expires_in": 3600,
            "access_token": _b64(secrets.token_bytes(32)),
            "id_token": id_token,
        }
