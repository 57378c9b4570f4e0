"""The console's sessions, CSRF tokens, one-time sign-in links and response headers.

A session is a signed cookie (HMAC-SHA256 over its JSON), so any instance of the app can check it without a
session store: ``__Host-`` prefixed (Secure, Path=/, no Domain), HttpOnly, SameSite=Strict. Its CSRF token
is an HMAC of the session id, checked in constant time on every POST; SameSite=Strict is the second fence.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

COOKIE = "__Host-lifecycle-console"
# Holds the sign-in in progress (the Entra flow's state, nonce and PKCE verifier) for ten minutes.
FLOW_COOKIE = "__Host-lifecycle-signin"
READ = "read"
ACT = "act"

# No script at all, styles only from our own origin, forms only to our own origin, never framed.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Strict-Transport-Security": "max-age=31536000",
}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    """A signed-in person: the name the audit records and the roles (``read``, ``act``)."""

    name: str
    roles: frozenset[str]
    sid: str
    expires: float
    how: str = ""

    def can(self, role: str) -> bool:
        return role in self.roles


@dataclass
class Signer:
    """Signs and checks the console's cookies and CSRF tokens with one key."""

    key: bytes
    clock: Any = time.time

    def _mac(self, purpose: str, payload: str) -> str:
        return _b64(hmac.new(self.key, f"{purpose}:{payload}".encode(), hashlib.sha256).digest())

    def seal(self, purpose: str, value: dict[str, Any]) -> str:
        payload = _b64(json.dumps(value, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(purpose, payload)}"

    def open(self, purpose: str, token: str | None) -> dict[str, Any] | None:
        if not token or token.count(".") != 1:
            return None
        payload, mac = token.split(".")
        if not hmac.compare_digest(mac.encode(), self._mac(purpose, payload).encode()):
            return None
        try:
            value = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(value, dict) or float(value.get("exp", 0)) < self.clock():
            return None
        return value

    def new_session(self, name: str, roles: set[str], hours: float, how: str) -> tuple[Session, str]:
        session = Session(name, frozenset(roles), secrets.token_urlsafe(16), self.clock() + hours * 3600, how)
        value = {"n": name, "r": sorted(roles), "s": session.sid, "exp": session.expires, "h": how}
        return session, self.seal("session", value)

    def session(self, token: str | None) -> Session | None:
        value = self.open("session", token)
        if value is None:
            return None
        return Session(str(value["n"]), frozenset(value["r"]), str(value["s"]), float(value["exp"]), str(value["h"]))

    def csrf(self, sid: str) -> str:
        return self._mac("csrf", sid)

    def csrf_ok(self, sid: str, given: str | None) -> bool:
        return hmac.compare_digest((given or "").encode(), self.csrf(sid).encode())


def cookie(name: str, value: str, *, max_age: int, same_site: str = "Strict") -> str:
    """A Set-Cookie value: ``__Host-`` rules (Secure, Path=/), HttpOnly, SameSite=Strict unless told otherwise."""
    return f"{name}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite={same_site}"


def read_cookie(header: str | None, name: str) -> str | None:
    for part in (header or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


@dataclass
class OneTimeLinks:
    """Sign-in tokens that work once, within ``ttl`` seconds (the link ``lifecycle serve`` prints)."""

    ttl: float = 900.0
    clock: Any = time.time
    _digests: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._digests[hashlib.sha256(token.encode()).hexdigest()] = self.clock() + self.ttl
        return token

    def redeem(self, token: str | None) -> bool:
        if not token:
            return False
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            now = self.clock()
            for known, expiry in list(self._digests.items()):
                if expiry < now:
                    del self._digests[known]
            # The dictionary look-up is by a digest of the token, so its timing tells nothing of the token.
            until = float(self._digests.pop(digest, 0.0))
            return bool(until >= now)
