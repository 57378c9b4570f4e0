"""Console sign-in with Entra ID (authorization code + PKCE through msal) against the HTTPS sign-in stand-in."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import requests

from lifecycle.console.app import Console
from lifecycle.console.entra import EntraSignIn
from lifecycle.console.security import COOKIE, FLOW_COOKIE
from lifecycle.errors import LifecycleError
from lifecycle.ingress import Request, Response
from lifecycle.runtime import Runtime
from tests.conftest import make_settings
from tests.standins.entra_signin import EntraSignInStandIn


@pytest.fixture
def entra(tmp_path: Path) -> Iterator[EntraSignInStandIn]:
    standin = EntraSignInStandIn(tmp_path / "entra").start()
    yield standin
    standin.stop()


@pytest.fixture
def console(entra: EntraSignInStandIn, tmp_path: Path) -> Iterator[Console]:
    settings = make_settings(
        tmp_path,
        console_auth="entra",
        console_entra_authority=entra.authority,
        console_entra_client_id=entra.client_id,
        console_entra_client_secret=entra.client_secret,
        console_redirect_uri=entra.redirect_uri,
    )
    runtime = Runtime(settings)
    session = requests.Session()
    session.trust_env = False
    session.verify = str(entra.ca_file)
    console = Console(runtime)
    console._entra = EntraSignIn(settings, http_client=session)
    yield console
    runtime.close()


def cookie_value(response: Response) -> str:
    return response.headers["Set-Cookie"].split(";", 1)[0]


def sign_in(console: Console, entra: EntraSignInStandIn, *, tamper: dict[str, str] | None = None) -> Response:
    """Browser steps: the console sends us to Entra; Entra signs the person in and sends us back."""
    start = console.handle(Request("GET", b"", {}, {}), "/signin")
    assert start.status == 303
    flow_cookie = cookie_value(start)
    assert flow_cookie.startswith(FLOW_COOKIE + "=")
    # Entra's redirect back is a cross-site navigation: only a Lax cookie comes along with it.
    assert "SameSite=Lax" in start.headers["Set-Cookie"]
    authorize = start.headers["Location"]
    assert authorize.startswith(entra.authority + "/oauth2/v2.0/authorize?")
    sent = parse_qs(urlsplit(authorize).query)
    assert sent["code_challenge_method"] == ["S256"] and sent["code_challenge"][0]
    trust = ssl.create_default_context(cafile=str(entra.ca_file))
    back = httpx.get(authorize, verify=trust, follow_redirects=False)
    assert back.status_code == 302, back.text
    query = {k: v[0] for k, v in parse_qs(urlsplit(back.headers["Location"]).query).items()}
    query.update(tamper or {})
    return console.handle(Request("GET", b"", {"Cookie": flow_cookie}, query), "/auth/callback")


def test_a_person_with_the_act_role_signs_in_and_is_named_in_the_session(
    console: Console, entra: EntraSignInStandIn
) -> None:
    done = sign_in(console, entra)
    # A page that moves on by itself (a same-site navigation, which carries the Strict session cookie).
    assert done.status == 200 and b'http-equiv="refresh" content="0; url=/api/console/"' in done.body
    assert "SameSite=Strict" in done.headers["Set-Cookie"]
    session = console.signer.session(cookie_value(done).split("=", 1)[1])
    assert session is not None
    assert (session.name, set(session.roles), session.how) == ("ann@example.test", {"read", "act"}, "Entra ID")
    page = console.handle(Request("GET", b"", {"Cookie": cookie_value(done)}, {}), "/")
    assert page.status == 200 and b"ann@example.test" in page.body


def test_a_reader_gets_the_read_role_only(console: Console, entra: EntraSignInStandIn) -> None:
    entra.signed_in = {"preferred_username": "rita@example.test", "roles": ["Console.Read"]}
    session = console.signer.session(cookie_value(sign_in(console, entra)).split("=", 1)[1])
    assert session is not None and set(session.roles) == {"read"}


def test_a_person_without_a_console_role_is_refused(console: Console, entra: EntraSignInStandIn) -> None:
    entra.signed_in = {"preferred_username": "nora@example.test"}
    refused = sign_in(console, entra)
    assert refused.status == 403 and "Set-Cookie" not in refused.headers


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": "another-application"},
        {"iss": "https://login.microsoftonline.com/another-tenant/v2.0"},
        {"exp": 1_000_000_000},
        {"nonce": "someone-elses-nonce"},
    ],
    ids=["audience", "issuer", "expired", "nonce"],
)
def test_an_id_token_that_is_not_for_us_now_is_refused(
    console: Console, entra: EntraSignInStandIn, overrides: dict[str, Any]
) -> None:
    entra.id_token_overrides = overrides
    refused = sign_in(console, entra)
    assert refused.status == 401 and "Set-Cookie" not in refused.headers


def test_an_answer_with_another_state_is_refused(console: Console, entra: EntraSignInStandIn) -> None:
    refused = sign_in(console, entra, tamper={"state": "forged"})
    assert refused.status == 401 and "Set-Cookie" not in refused.headers


def test_a_callback_without_the_flow_cookie_is_refused(console: Console) -> None:
    assert console.handle(Request("GET", b"", {}, {"code": "x", "state": "y"}), "/auth/callback").status == 401


def test_local_sign_in_is_off_when_entra_signs_people_in(console: Console) -> None:
    once = console.sign_in_link("http://x").split("once=", 1)[1]
    answer = console.handle(Request("GET", b"", {}, {"once": once}), "/signin")
    # The one-time link only starts the Entra flow; it grants nothing by itself.
    assert answer.status == 303 and not cookie_value(answer).startswith(COOKIE + "=")


@pytest.mark.parametrize("authority", ["", "https://login.microsoftonline.com/organizations", "http://x/tenant"])
def test_a_shared_or_plain_authority_is_refused(tmp_path: Path, authority: str) -> None:
    settings = make_settings(
        tmp_path,
        console_auth="entra",
        console_entra_authority=authority,
        console_entra_client_id="id",
        console_redirect_uri="https://x/api/console/auth/callback",
    )
    with pytest.raises(LifecycleError, match="LIFECYCLE_CONSOLE_ENTRA_AUTHORITY"):
        EntraSignIn(settings)
