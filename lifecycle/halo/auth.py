"""Webhook authentication: HTTP Basic and Halo's signed body, both compared in constant time.

Halo's ``Webhook`` object signs the raw body with HMAC and lets the administrator choose the header
(``authentication_header``, default ``Token``), the hash (``algorithm``), the text encoding of the digest
(``digest``) and a ``signature_prefix``. The service is told the same four choices in its settings
(``LIFECYCLE_WEBHOOK_HMAC_HEADER``/``_ALGORITHM``/``_ENCODING``/``_PREFIX``). The signature is computed over the
raw bytes received, never over re-serialised JSON, and compared with ``hmac.compare_digest``.

A body signature proves the body, not the URL: the result says which secret verified it, so the ingress can
refuse a ``?event=`` the secret does not bind (a captured body replayed as a deletion).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from lifecycle.errors import ConfigurationError, Unauthorized
from lifecycle.settings import EventKind, Settings

Algorithm = Literal["sha1", "sha256", "sha512"]
Encoding = Literal["base64", "hex"]
_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


@dataclass(frozen=True)
class AuthResult:
    """How a request was authenticated.

    Attributes:
        scheme: ``basic`` when Basic credentials verified (with or without a signature), ``signature`` when
            only the body signature did, ``none`` when authentication is off.
        bound_kind: the event kind whose own secret (``LIFECYCLE_WEBHOOK_HMAC_SECRETS``) verified the body;
            None for the shared secret or another scheme.
    """

    scheme: Literal["basic", "signature", "none"]
    bound_kind: EventKind | None = None

    @property
    def signed_only(self) -> bool:
        """True when nothing but the body signature vouches for the request."""
        return self.scheme == "signature"


def sign_body(
    secret: str, body: bytes, *, algorithm: Algorithm = "sha256", encoding: Encoding = "base64", prefix: str = ""
) -> str:
    """The header value Halo sends for ``body`` with these signing options (also used by tests and the CLI)."""
    digest = hmac.new(secret.encode("utf-8"), body, _HASHES[algorithm]).digest()
    text = base64.b64encode(digest).decode("ascii") if encoding == "base64" else digest.hex()
    return prefix + text


def sign_for(settings: Settings, secret: str, body: bytes) -> str:
    """``sign_body`` with the options configured in ``settings``."""
    return sign_body(
        secret,
        body,
        algorithm=settings.webhook_hmac_algorithm,
        encoding=settings.webhook_hmac_encoding,
        prefix=settings.webhook_hmac_prefix,
    )


def _basic_ok(header: str | None, user: str, password: str) -> bool:
    if not header or header[:6].lower() != "basic ":
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    given_user, sep, given_password = decoded.partition(b":")
    if not sep:
        return False
    # Both comparisons always run, so timing does not reveal which half was wrong.
    user_ok = hmac.compare_digest(given_user, user.encode("utf-8"))
    password_ok = hmac.compare_digest(given_password, password.encode("utf-8"))
    return user_ok and password_ok


def _presented_signature(header: str, settings: Settings) -> bytes:
    """The digest text of a signature header, with the configured prefix removed.

    Whitespace around the value and between prefix and digest is dropped: one public receiver reports Halo
    sending ``sha256= <digest>`` (jackmusick/bifrost issue 726). A hex digest is compared in lower case (hex
    is case-insensitive); nothing the sender gave is ever decoded, only the expected value is encoded.
    """
    value = header.strip()
    prefix = settings.webhook_hmac_prefix.strip()
    if prefix:
        if value[: len(prefix)].lower() != prefix.lower():
            return b""
        value = value[len(prefix) :].strip()
    if settings.webhook_hmac_encoding == "hex":
        value = value.lower()
    return value.encode("utf-8", "replace")


def _signature_ok(presented: bytes, secret: str, body: bytes, settings: Settings) -> bool:
    if not presented:
        return False
    expected = sign_body(
        secret, body, algorithm=settings.webhook_hmac_algorithm, encoding=settings.webhook_hmac_encoding
    ).encode("ascii")
    return hmac.compare_digest(presented, expected)


def _secrets(settings: Settings) -> list[tuple[EventKind | None, str]]:
    found: list[tuple[EventKind | None, str]] = []
    shared = settings.webhook_hmac_secret.get_secret_value()
    if shared:
        found.append((None, shared))
    for kind, secret in settings.webhook_hmac_secrets.items():
        if secret.get_secret_value():
            found.append((kind, secret.get_secret_value()))
    return found


def check_configured(settings: Settings) -> None:
    """Refuse to start with no webhook credential unless authentication was explicitly turned off."""
    if settings.webhook_auth == "none":
        return
    has_basic = bool(settings.webhook_basic_user and settings.webhook_basic_password.get_secret_value())
    if not (has_basic or _secrets(settings)):
        raise ConfigurationError(
            "no webhook credential configured: set LIFECYCLE_WEBHOOK_BASIC_USER and "
            "LIFECYCLE_WEBHOOK_BASIC_PASSWORD, or LIFECYCLE_WEBHOOK_HMAC_SECRET or LIFECYCLE_WEBHOOK_HMAC_SECRETS "
            "(or LIFECYCLE_WEBHOOK_AUTH=none for a closed test network)"
        )


def authenticate(settings: Settings, headers: Mapping[str, str], body: bytes) -> AuthResult:
    """Return how the request is authenticated, or raise ``Unauthorized``.

    ``headers`` must be case-insensitive (keys lower-cased by the caller).
    """
    if settings.webhook_auth == "none":
        return AuthResult("none")
    results: list[bool] = []
    basic_ok = False
    password = settings.webhook_basic_password.get_secret_value()
    if settings.webhook_basic_user and password:
        basic_ok = _basic_ok(headers.get("authorization"), settings.webhook_basic_user, password)
        results.append(basic_ok)
    secrets = _secrets(settings)
    verified: list[EventKind | None] = []
    if secrets:
        presented = _presented_signature(headers.get(settings.webhook_hmac_header.lower()) or "", settings)
        # Every secret is tried, whichever matches, so timing does not tell which kinds have secrets.
        verified = [kind for kind, secret in secrets if _signature_ok(presented, secret, body, settings)]
        results.append(bool(verified))
    if not results:
        raise Unauthorized("the service has no webhook credential configured, so it accepts no request")
    passed = all(results) if settings.webhook_auth == "all" else any(results)
    if not passed:
        algorithm = settings.webhook_hmac_algorithm.upper().replace("SHA", "SHA-")
        raise Unauthorized(
            f"missing or wrong credentials: send HTTP Basic credentials or a {settings.webhook_hmac_header!r} "
            f"header with {settings.webhook_hmac_prefix!r} + {settings.webhook_hmac_encoding}"
            f"(HMAC-{algorithm}(secret, body)) as configured for this webhook"
        )
    if basic_ok:
        return AuthResult("basic")
    # Two kinds' secrets equal (a configuration slip) bind nothing: the body alone must then say the kind.
    kinds = set(verified)
    bound = verified[0] if len(kinds) == 1 else None
    return AuthResult("signature", bound_kind=bound)
