"""Webhook authentication: Basic and Halo's signed body, compared in constant time."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from lifecycle.errors import ConfigurationError, Unauthorized
from lifecycle.halo.auth import authenticate, check_configured, sign_body
from tests.conftest import make_settings

BODY = b'{"event": "created", "user_id": 1}'


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_either_configured_scheme_is_enough_by_default(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    authenticate(settings, {"authorization": basic("halo", "basic-secret-value")}, BODY)
    authenticate(settings, {"token": sign_body("hmac-secret-value", BODY)}, BODY)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": basic("halo", "wrong")},
        {"authorization": basic("other", "basic-secret-value")},
        {"authorization": "Basic !!!notbase64"},
        {"authorization": "Bearer basic-secret-value"},
        {"token": sign_body("wrong-secret", BODY)},
        {"token": ""},
    ],
)
def test_missing_or_wrong_credentials_are_refused(tmp_path: Path, headers: dict[str, str]) -> None:
    with pytest.raises(Unauthorized):
        authenticate(make_settings(tmp_path), headers, BODY)


def test_a_signature_replayed_on_a_changed_body_is_refused(tmp_path: Path) -> None:
    token = sign_body("hmac-secret-value", BODY)
    changed = BODY.replace(b"created", b"deleted")
    with pytest.raises(Unauthorized):
        authenticate(make_settings(tmp_path), {"token": token}, changed)


def test_all_mode_needs_every_configured_scheme(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, webhook_auth="all")
    with pytest.raises(Unauthorized):
        authenticate(settings, {"authorization": basic("halo", "basic-secret-value")}, BODY)
    authenticate(
        settings,
        {"authorization": basic("halo", "basic-secret-value"), "token": sign_body("hmac-secret-value", BODY)},
        BODY,
    )


def test_no_configured_credential_refuses_everything_and_fails_the_startup_check(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, webhook_basic_password="", webhook_hmac_secret="")
    with pytest.raises(Unauthorized):
        authenticate(settings, {"authorization": basic("halo", "")}, BODY)
    with pytest.raises(ConfigurationError, match="no webhook credential"):
        check_configured(settings)
