"""``lifecycle halo webhook-check [ID]``: compare Halo's webhook configuration with the service's settings.

Reads the webhooks through ``GET /api/Webhook`` (the ones whose URL points at this service's events route,
or the one given), and for each prints the settings that match it, or where the service's differ: the
authentication (Basic or signed body), the signing options (``authentication_header``, ``algorithm``,
``digest``, ``signature_prefix``), whether a ``?event=`` in its URL is bound to a secret of that kind, and
whether Halo disabled it. Secrets are compared in constant time and never printed.

What Halo's numbers mean is only partly public (docs/halo-setup.md, "Webhooks"): ``authentication_type`` 1 is
Basic and 3 a signed body, ``algorithm`` 0 is HMAC-SHA256 and an absent or 0 ``digest`` is Base64, by inference
from production code. Any other number is reported as unconfirmed, with what to check on Halo's screen.
"""

from __future__ import annotations

import argparse
import hmac
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lifecycle.errors import ConfigurationError, LifecycleError
from lifecycle.settings import Settings

EXIT_DIFFERS = 1
EVENTS_ROUTE = "/api/halo/events"
# Halo's Webhook.authentication_type (halo-tickets.md §5): 0 none, 1 Basic (documented), 3 signed body (seen in
# production code). Other values are unconfirmed.
AUTH_NONE, AUTH_BASIC, AUTH_SIGNED = 0, 1, 3
# Halo's Webhook.algorithm and .digest: only these values are known (by inference); see the module docstring.
KNOWN_ALGORITHMS = {0: "sha256"}
KNOWN_DIGESTS = {0: "base64"}


def register(halo_sub: Any) -> None:
    """Add ``webhook-check`` to the ``lifecycle halo`` command group."""
    check = halo_sub.add_parser(
        "webhook-check", help="compare Halo's webhook(s) pointing at this service with the service's settings"
    )
    check.add_argument("id", nargs="?", help="the webhook's id (a GUID); default: every webhook aimed at us")
    check.add_argument(
        "--url-contains",
        default=EVENTS_ROUTE,
        help=f"a webhook points at this service when its URL contains this (default {EVENTS_ROUTE})",
    )
    check.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    check.set_defaults(func=cmd_webhook_check)


def cmd_webhook_check(args: argparse.Namespace) -> int:
    """Print, per webhook, what matches and what differs; exit 1 when anything differs."""
    from lifecycle.halo.client import build_client
    from lifecycle.settings import get_settings

    settings = get_settings()
    client = build_client(settings)
    if client is None:
        raise ConfigurationError(
            "the Halo API is not configured: set LIFECYCLE_HALO_API_URL, _CLIENT_ID and _CLIENT_SECRET"
        )
    try:
        webhooks = client.webhooks(args.id)
    finally:
        client.close()
    if args.id is None:
        webhooks = [w for w in webhooks if args.url_contains in str(w.get("url") or "")]
    if not webhooks:
        where = f"with id {args.id}" if args.id else f"whose URL contains {args.url_contains!r}"
        raise LifecycleError(f"Halo has no webhook {where}")
    differs = False
    report = []
    for webhook in webhooks:
        lines, ok = check_webhook(webhook, settings)
        differs = differs or not ok
        report.append({"id": webhook.get("id"), "name": webhook.get("name"), "ok": ok, "lines": lines})
        if not args.json:
            print(f"webhook {webhook.get('name') or '(no name)'} [{webhook.get('id')}]: {'ok' if ok else 'DIFFERS'}")
            for line in lines:
                print(f"  {line}")
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    return EXIT_DIFFERS if differs else 0


def _same_secret(given: Any, configured: str) -> bool | None:
    """Whether Halo's stored secret equals ours (constant time), or None when Halo did not show it."""
    if not isinstance(given, str) or not given or set(given) <= {"*"}:
        return None
    return hmac.compare_digest(given.encode("utf-8"), configured.encode("utf-8"))


def check_webhook(webhook: dict[str, Any], settings: Settings) -> tuple[list[str], bool]:
    """The report lines for one Halo Webhook object, and whether everything matches."""
    lines: list[str] = []
    ok = True

    def good(text: str) -> None:
        lines.append(f"ok: {text}")

    def bad(text: str) -> None:
        nonlocal ok
        ok = False
        lines.append(f"differs: {text}")

    def note(text: str) -> None:
        lines.append(f"note: {text}")

    url = str(webhook.get("url") or "")
    query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    kind = query.get("event", "").strip().lower() or None
    if webhook.get("disabled") or webhook.get("active") is False:
        bad("Halo shows this webhook as disabled or inactive (after repeated failures it may auto-disable)")
    if webhook.get("auto_disable_attempts"):
        note(f"Halo disables it after {webhook['auto_disable_attempts']} failed deliveries")
    if kind is not None and kind not in ("created", "updated", "deleted"):
        bad(f"its URL says ?event={kind}; use created, updated or deleted")
        kind = None

    auth_type = webhook.get("authentication_type")
    if auth_type in (AUTH_NONE, None):
        if settings.webhook_auth == "none":
            note("Halo sends no credentials and LIFECYCLE_WEBHOOK_AUTH=none: only on a closed test network")
        else:
            bad("Halo sends no credentials: every delivery is refused (401); choose Basic or a signed body in Halo")
    elif auth_type == AUTH_BASIC:
        _check_basic(webhook, settings, good, bad, note)
    elif auth_type == AUTH_SIGNED:
        _check_signed(webhook, settings, kind, good, bad, note)
    else:
        bad(f"authentication_type {auth_type!r} is not one the service knows (1 Basic, 3 signed body)")
    return lines, ok


def _check_basic(webhook: dict[str, Any], settings: Settings, good: Any, bad: Any, note: Any) -> None:
    password = settings.webhook_basic_password.get_secret_value()
    if not (settings.webhook_basic_user and password):
        bad("Halo sends Basic credentials: set LIFECYCLE_WEBHOOK_BASIC_USER and LIFECYCLE_WEBHOOK_BASIC_PASSWORD")
        return
    user = webhook.get("basic_username") or ""
    if hmac.compare_digest(str(user).encode("utf-8"), settings.webhook_basic_user.encode("utf-8")):
        good("Basic user name matches LIFECYCLE_WEBHOOK_BASIC_USER")
    else:
        bad(f"Basic user name is {user!r}; LIFECYCLE_WEBHOOK_BASIC_USER={settings.webhook_basic_user}")
    same = _same_secret(webhook.get("basic_password"), password)
    if same is None:
        note("Halo does not show the Basic password; it was not compared")
    elif same:
        good("Basic password matches LIFECYCLE_WEBHOOK_BASIC_PASSWORD")
    else:
        bad("Basic password differs from LIFECYCLE_WEBHOOK_BASIC_PASSWORD")
    good("?event= in the URL is trusted with Basic credentials")


def _check_signed(
    webhook: dict[str, Any], settings: Settings, kind: str | None, good: Any, bad: Any, note: Any
) -> None:
    header = str(webhook.get("authentication_header") or "Token")
    if header.lower() == settings.webhook_hmac_header.lower():
        good(f"signature header {header!r}")
    else:
        bad(f"Halo signs into header {header!r}: set LIFECYCLE_WEBHOOK_HMAC_HEADER={header}")
    _compare_inferred(
        "algorithm", webhook.get("algorithm"), KNOWN_ALGORITHMS, "LIFECYCLE_WEBHOOK_HMAC_ALGORITHM",
        settings.webhook_hmac_algorithm, "sha1, sha256, sha512", good, bad, note,
    )  # fmt: skip
    _compare_inferred(
        "digest", webhook.get("digest"), KNOWN_DIGESTS, "LIFECYCLE_WEBHOOK_HMAC_ENCODING",
        settings.webhook_hmac_encoding, "base64, hex", good, bad, note,
    )  # fmt: skip
    prefix = str(webhook.get("signature_prefix") or "")
    if prefix.strip() == settings.webhook_hmac_prefix.strip():
        good(f"signature prefix {prefix!r}")
    else:
        bad(f"Halo's signature prefix is {prefix!r}: set LIFECYCLE_WEBHOOK_HMAC_PREFIX={prefix}")

    # django-psa keeps a signed webhook's secret in basic_password (halo-tickets.md §5).
    own = settings.webhook_hmac_secrets.get(kind) if kind else None  # type: ignore[call-overload]
    own_secret = own.get_secret_value() if own is not None else ""
    shared = settings.webhook_hmac_secret.get_secret_value()
    if kind is not None and not own_secret:
        bad(
            f"its URL names ?event={kind} but LIFECYCLE_WEBHOOK_HMAC_SECRETS has no secret for {kind!r}: with the "
            "shared secret ?event= is refused (403); give this webhook its own secret and set it there"
        )
    elif kind is not None:
        good(f"?event={kind} is bound to LIFECYCLE_WEBHOOK_HMAC_SECRETS[{kind!r}]")
    elif not shared:
        bad("no ?event= in its URL and no LIFECYCLE_WEBHOOK_HMAC_SECRET: the body's event name needs the shared secret")
    else:
        good("no ?event=: the signed body's event name decides (LIFECYCLE_HALO_EVENT_MAP)")
    expected = own_secret if kind is not None else shared
    same = _same_secret(webhook.get("basic_password"), expected) if expected else None
    if same is None:
        note("Halo does not show the signing secret; it was not compared")
    elif same:
        good("the signing secret matches")
    else:
        bad("the signing secret differs from the one configured for this webhook")


def _compare_inferred(
    field: str, value: Any, known: dict[int, str], setting: str, ours: str, choices: str, good: Any, bad: Any, note: Any
) -> None:
    """One of Halo's numbered signing options (``algorithm``, ``digest``) against our setting; unset means 0."""
    meaning = known.get(value if isinstance(value, int) else 0 if value is None else -1)
    if meaning is None:
        note(
            f"Halo's {field}={value!r} has no public meaning: read it on the webhook's screen and set "
            f"{setting} ({choices}; now {ours})"
        )
    elif meaning == ours:
        good(f"{setting.rsplit('_', 1)[-1].lower()} {meaning} (Halo's {field}={value!r}, inferred)")
    else:
        bad(f"Halo's {field}={value!r} is {meaning} (inferred): set {setting}={meaning}")
