"""Webhook authentication: HTTP Basic and Halo's signed body, both compared in constant time.

Halo's signed-body mode sends ``Token: base64(HMAC-SHA256(secret, raw body))``. The signature is computed over
the raw bytes received, never over re-serialised JSON, and compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

from lifecycle.errors import ConfigurationError, Unauthorized
from lifecycle.settings import Settings


def sign_body(secret: str, body: bytes) -> str:
    """The ``Token`` header value Halo sends for ``body`` (also used by tests and the CLI)."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


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


def _signature_ok(header: str | None, secret: str, body: bytes) -> bool:
    if not header:
        return False
    expected = sign_body(secret, body).encode("ascii")
    return hmac.compare_digest(header.strip().encode("utf-8", "replace"), expected)


def check_configured(settings: Settings) -> None:
    """Refuse to start with no webhook credential unless authentication was explicitly turned off."""
    if settings.webhook_auth == "none":
        return
    has_basic = bool(settings.webhook_basic_user and settings.webhook_basic_password.get_secret_value())
    has_hmac = bool(settings.webhook_hmac_secret.get_secret_value())
    if not (has_basic or has_hmac):
        raise ConfigurationError(
            "no webhook credential configured: set LIFECYCLE_WEBHOOK_BASIC_USER and "
            "LIFECYCLE_WEBHOOK_BASIC_PASSWORD, or LIFECYCLE_WEBHOOK_HMAC_SECRET "
            "(or LIFECYCLE_WEBHOOK_AUTH=none for a closed test network)"
        )


def authenticate(settings: Settings, headers: Mapping[str, str], body: bytes) -> None:
    """Raise ``Unauthorized`` unless the request carries the configured credentials.

    ``headers`` must be case-insensitive (keys lower-cased by the caller).
    """
    if settings.webhook_auth == "none":
        return
    results: list[bool] = []
    password = settings.webhook_basic_password.get_secret_value()
    if settings.webhook_basic_user and password:
        results.append(_basic_ok(headers.get("authorization"), settings.webhook_basic_user, password))
    secret = settings.webhook_hmac_secret.get_secret_value()
    if secret:
        results.append(_signature_ok(headers.get("token"), secret, body))
    if not results:
        raise Unauthorized("the service has no webhook credential configured, so it accepts no request")
    passed = all(results) if settings.webhook_auth == "all" else any(results)
    if not passed:
        raise Unauthorized(
            "missing or wrong credentials: send HTTP Basic credentials or a 'Token' header with "
            "base64(HMAC-SHA256(secret, body)) as configured for this webhook"
        )
