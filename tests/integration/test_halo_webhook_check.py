"""``lifecycle halo webhook-check`` reads Halo's webhooks over HTTPS (the Halo stand-in) and compares settings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lifecycle.cli import main
from lifecycle.settings import get_settings
from tests.conftest import ROOT
from tests.standins.halo import HaloStandIn, UserSet

pytestmark = pytest.mark.integration
OURS = "https://func-halolc.azurewebsites.net/api/halo/events?code=k"
SIGNED_SECRET = "created-secret-value-0123456789"


def webhook(**fields: Any) -> dict[str, Any]:
    # The fields of Halo's Webhook schema (halo-openapi-subset.json), as django-psa creates a signed one.
    return {
        "id": "8f1d2c3b-0000-4000-8000-00000000000a",
        "name": "Users created",
        "type": 0,
        "url": OURS + "&event=created",
        "method": 0,
        "active": True,
        "authentication_type": 3,
        "authentication_header": "Token",
        "algorithm": 0,
        "basic_password": SIGNED_SECRET,
        **fields,
    }


@pytest.fixture
def halo(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[HaloStandIn]:
    standin = HaloStandIn(UserSet(1)).start()
    assert standin.ca_file is not None
    env = {
        "LIFECYCLE_MAPPING_FILE": str(ROOT / "mapping.example.toml"),
        "LIFECYCLE_DATA_DIR": str(tmp_path / "data"),
        "LIFECYCLE_HALO_API_URL": standin.url,
        "LIFECYCLE_HALO_AUTH_URL": standin.url + "/auth",
        "LIFECYCLE_HALO_CLIENT_ID": standin.client_id,
        "LIFECYCLE_HALO_CLIENT_SECRET": standin.client_secret,
        "LIFECYCLE_HALO_CA_FILE": str(standin.ca_file),
        "LIFECYCLE_WEBHOOK_HMAC_SECRETS": '{"created": "' + SIGNED_SECRET + '"}',
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield standin
    get_settings.cache_clear()
    standin.stop()


def test_a_signed_webhook_bound_to_its_kind_matches(halo: HaloStandIn, capsys: pytest.CaptureFixture[str]) -> None:
    halo.webhooks = [webhook(), webhook(id="other", name="Tickets", url="https://elsewhere.example/hook")]
    assert main(["halo", "webhook-check"]) == 0
    out = capsys.readouterr().out
    assert "Users created" in out and "Tickets" not in out  # only the webhook aimed at this service
    assert "ok: ?event=created is bound" in out and "ok: the signing secret matches" in out
    assert SIGNED_SECRET not in out  # never printed
    assert halo.routes["GET /api/Webhook"] == 1


def test_every_difference_is_named_with_the_setting_to_change(
    halo: HaloStandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    halo.webhooks = [
        webhook(
            authentication_header="X-Halo-Signature",
            signature_prefix="sha256=",
            url=OURS + "&event=deleted",
            basic_password="not-what-we-have",
        )
    ]
    assert main(["halo", "webhook-check", "8f1d2c3b-0000-4000-8000-00000000000a"]) == 1
    out = capsys.readouterr().out
    assert "LIFECYCLE_WEBHOOK_HMAC_HEADER=X-Halo-Signature" in out
    assert "LIFECYCLE_WEBHOOK_HMAC_PREFIX=sha256=" in out
    assert "no secret for 'deleted'" in out
    assert "not-what-we-have" not in out


def test_unconfirmed_numbers_are_reported_as_such(halo: HaloStandIn, capsys: pytest.CaptureFixture[str]) -> None:
    halo.webhooks = [webhook(algorithm=2, digest=1)]
    main(["halo", "webhook-check"])
    out = capsys.readouterr().out
    assert "algorithm=2 has no public meaning" in out and "digest=1 has no public meaning" in out


def test_basic_webhooks_and_a_missing_one(
    halo: HaloStandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LIFECYCLE_WEBHOOK_BASIC_USER", "halo")
    monkeypatch.setenv("LIFECYCLE_WEBHOOK_BASIC_PASSWORD", "basic-secret-value")
    get_settings.cache_clear()
    halo.webhooks = [webhook(authentication_type=1, basic_username="halo", basic_password="basic-secret-value")]
    assert main(["halo", "webhook-check"]) == 0
    assert "Basic password matches" in capsys.readouterr().out
    assert main(["halo", "webhook-check", "no-such-id"]) != 0
    assert "no webhook with id no-such-id" in capsys.readouterr().err
