"""The Halo API client against the Halo stand-in over HTTPS on 127.0.0.1: tokens, paging, errors, throttling."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lifecycle.errors import ConfigurationError, Permanent, Retryable
from lifecycle.halo.client import HaloClient, build_client
from lifecycle.settings import Settings
from tests.conftest import make_settings
from tests.standins.halo import LIST_FIELDS, HaloStandIn, UserSet


@pytest.fixture
def halo() -> Iterator[HaloStandIn]:
    standin = HaloStandIn(UserSet(250, first_id=500, inactive_every=10), tenant="contoso").start()
    yield standin
    standin.stop()


def client_for(standin: HaloStandIn, **overrides: Any) -> HaloClient:
    values: dict[str, Any] = {
        "api_url": standin.url,
        "client_id": standin.client_id,
        "client_secret": standin.client_secret,
        "ca_file": standin.ca_file,
        "page_size": 40,
        "backoff_base": 0.02,
        "backoff_cap": 0.1,
    }
    values.update(overrides)
    return HaloClient(**values)


def halo_settings(tmp_path: Path, standin: HaloStandIn, **overrides: Any) -> Settings:
    return make_settings(
        tmp_path,
        halo_api_url=standin.url,
        halo_client_id=standin.client_id,
        halo_client_secret=standin.client_secret,
        halo_ca_file=standin.ca_file,
        **overrides,
    )


def test_the_token_url_and_tenant_are_discovered_through_authinfo_and_one_token_serves_many_calls(
    halo: HaloStandIn,
) -> None:
    client = client_for(halo)
    info = client.authenticate()
    assert info.discovered and info.token_url == f"{halo.url}/auth/token?tenant=contoso"
    assert info.expires_in == 3600 and info.scope == "all"
    for user_id in range(500, 510):
        assert client.fetch_user(user_id) is not None
    assert halo.tokens_issued == 1 and halo.routes["GET /api/authinfo"] == 1
    client.close()


def test_a_configured_auth_url_is_used_as_is_and_the_tenant_added(halo: HaloStandIn) -> None:
    client = client_for(halo, auth_url=f"{halo.url}/auth", tenant="contoso")
    assert client.fetch_user(501) is not None
    assert halo.routes["GET /api/authinfo"] == 0 and halo.tokens_issued == 1
    client.close()


def test_a_revoked_token_is_renewed_once_and_the_call_succeeds(halo: HaloStandIn) -> None:
    client = client_for(halo)
    assert client.fetch_user(500) is not None
    halo.revoke_tokens()
    user = client.fetch_user(501)
    assert user is not None and user["id"] == 501
    assert halo.tokens_issued == 2
    client.close()


def test_a_token_is_renewed_before_it_expires(tmp_path: Path) -> None:
    standin = HaloStandIn(UserSet(5, first_id=1), token_lifetime=2.0).start()
    now = [0.0]
    try:
        client = client_for(standin, clock=lambda: now[0])
        assert client.fetch_user(1) is not None
        now[0] = 0.5
        assert client.fetch_user(2) is not None
        assert standin.tokens_issued == 1
        now[0] = 1.2  # past half of its two seconds: renewed before it runs out, not after a 401
        assert client.fetch_user(3) is not None
        assert standin.tokens_issued == 2 and standin.routes["GET /api/Users/{id}"] == 3
        client.close()
    finally:
        standin.stop()


def test_wrong_credentials_are_permanent_with_what_to_check_and_never_the_secret(halo: HaloStandIn) -> None:
    client = client_for(halo, client_secret="not-the-secret-value")
    with pytest.raises(Permanent) as caught:
        client.fetch_user(500)
    message = str(caught.value)
    assert "invalid_client" in message and "LIFECYCLE_HALO_CLIENT_SECRET" in message
    assert "not-the-secret-value" not in message and halo.client_secret not in message
    client.close()


def test_an_unknown_scope_is_permanent(halo: HaloStandIn) -> None:
    client = client_for(halo, scope="read:users")
    with pytest.raises(Permanent, match="invalid_scope"):
        client.fetch_user(500)
    client.close()


def test_an_unknown_user_is_none_and_a_forbidden_one_is_permanent(halo: HaloStandIn) -> None:
    client = client_for(halo)
    assert client.fetch_user(99_999) is None
    halo.inject([(403, None)])
    with pytest.raises(Permanent, match="403"):
        client.fetch_user(500)
    client.close()


def test_a_401_after_a_fresh_token_is_permanent(halo: HaloStandIn) -> None:
    client = client_for(halo)
    client.authenticate()
    halo.inject([(401, None), (401, None)])
    with pytest.raises(Permanent, match="401"):
        client.fetch_user(500)
    assert halo.tokens_issued == 2
    client.close()


def test_server_errors_and_throttling_are_retryable_with_the_servers_wait(halo: HaloStandIn) -> None:
    client = client_for(halo)
    client.authenticate()
    halo.inject([(503, "120")])
    with pytest.raises(Retryable) as caught:
        client.fetch_user(500, patience=1.0)
    assert caught.value.retry_after == 120.0
    halo.inject([(429, None)] * 20)
    with pytest.raises(Retryable) as throttled:
        client.fetch_user(500, patience=0.3)
    assert throttled.value.retry_after is not None and throttled.value.retry_after > 0
    client.close()


def test_transient_failures_within_the_patience_are_retried_transparently(halo: HaloStandIn) -> None:
    client = client_for(halo)
    halo.inject([(429, "1"), (502, None), (429, None)])
    user = client.fetch_user(500, patience=30)
    assert user is not None and user["id"] == 500
    assert halo.pending_injections == 0 and client.throttled == 2
    client.close()


def test_an_unreachable_halo_is_retryable(tmp_path: Path) -> None:
    standin = HaloStandIn(UserSet(1)).start()
    assert standin.ca_file is not None
    url, ca = standin.url, tmp_path / "ca.pem"
    ca.write_bytes(standin.ca_file.read_bytes())
    standin.stop()
    client = HaloClient(api_url=url, client_id="x", client_secret="y", ca_file=ca, backoff_base=0.01, backoff_cap=0.02)
    with pytest.raises(Retryable, match="cannot reach"):
        client.fetch_user(1, patience=0.1)
    client.close()


def test_a_certificate_from_an_unknown_ca_is_refused(halo: HaloStandIn) -> None:
    client = client_for(halo, ca_file=None, backoff_base=0.01, backoff_cap=0.02)
    with pytest.raises(Retryable, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
        client.fetch_user(500, patience=0.1)
    client.close()


def test_paging_streams_every_user_active_and_inactive_with_partial_list_items(halo: HaloStandIn) -> None:
    client = client_for(halo)
    pages: list[int] = []
    listing = client.list_users(page_size=40, on_page=lambda lst: pages.append(lst.received))
    ids = [user["id"] for user in listing]
    assert ids == list(range(500, 750))
    assert listing.complete and listing.record_count == 250 and listing.pages == 7
    assert pages == [40, 80, 120, 160, 200, 240, 250]
    assert halo.routes["GET /api/Users"] == 7
    # Inactive users are listed too (includeinactive=true), and list items are partial as Halo's are.
    client2 = client_for(halo)
    first_page = client2.users_page(1, page_size=10)
    assert any(u["inactive"] for u in first_page.users)
    assert set(first_page.users[0]) <= LIST_FIELDS and "department" not in first_page.users[0]
    client.close()
    client2.close()


def test_a_listing_that_falls_short_of_the_record_count_is_not_complete(halo: HaloStandIn) -> None:
    client = client_for(halo)
    listing = client.list_users(page_size=100)
    iterator = iter(listing)
    next(iterator)
    for user_id in range(500, 520):
        halo.users.delete(user_id)  # deleted while the listing runs: the later pages shift
    rest = list(iterator)
    assert not listing.complete and 1 + len(rest) < 250
    client.close()


def test_a_partial_update_lands_with_the_flag_and_changes_only_the_fields_sent(halo: HaloStandIn) -> None:
    client = client_for(halo)
    before = client.fetch_user(510)
    assert before is not None
    saved = client.update_users([{"id": 510, "login": "ada.x", "_dont_fire_automations": True}])
    assert saved[0]["login"] == "ada.x"
    after = client.fetch_user(510)
    assert after is not None and after["login"] == "ada.x" and after["department"] == before["department"]
    assert after["ulastupdate"] != before["ulastupdate"]
    assert halo.writes == [[{"id": 510, "login": "ada.x", "_dont_fire_automations": True}]]
    assert halo.automations == []
    halo.inject([(400, None)])
    with pytest.raises(Permanent, match="400"):
        client.update_users([{"id": 510, "login": "y"}])
    client.close()


def test_the_client_keeps_under_the_configured_rate_and_halo_never_answers_429(tmp_path: Path) -> None:
    standin = HaloStandIn(UserSet(60, first_id=1), rate_limit=15, rate_window=0.5).start()
    try:
        client = client_for(standin, rate_limit=15, rate_window=0.5)
        for user_id in range(1, 61):
            assert client.fetch_user(user_id) is not None
        assert standin.rate_limited == 0 and standin.max_in_window <= 15
        assert client.limiter.waits > 0  # the limit was reached, and waited out
        client.close()
    finally:
        standin.stop()


def test_build_client_is_none_without_an_api_url_and_settings_refuse_plain_http(tmp_path: Path) -> None:
    assert build_client(make_settings(tmp_path)) is None
    with pytest.raises(ValueError, match="https"):
        make_settings(tmp_path, halo_api_url="http://halo.example.test", halo_client_id="a", halo_client_secret="b")
    with pytest.raises(ValueError, match="CLIENT_SECRET"):
        make_settings(tmp_path, halo_api_url="https://halo.example.test", halo_client_id="a")
    with pytest.raises(ConfigurationError):
        HaloClient(api_url="http://halo.example.test", client_id="a", client_secret="b")


def test_build_client_reads_every_halo_setting(tmp_path: Path, halo: HaloStandIn) -> None:
    settings = halo_settings(
        tmp_path, halo, halo_rate_limit=7, halo_rate_limit_window_seconds=9, halo_page_size=33, halo_rate_share=0.5
    )
    client = build_client(settings)
    assert isinstance(client, HaloClient)
    # The share of Halo's limit this service may use: 7 * 0.5, at least one request.
    assert (client.limiter.limit, client.limiter.window, client.page_size) == (3, 9.0, 33)
    assert client.fetch_user(500) is not None
    assert halo.client_secret in settings.secret_values()
    client.close()
