"""The console's gatekeeping and rendering, without a browser or a DC (the browser test drives it end to end)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import azure.functions as func
import pytest

import function_app
from lifecycle import azure_host
from lifecycle.console.app import Console
from lifecycle.console.entra import name_from_claims, roles_from_claims
from lifecycle.console.security import COOKIE, FLOW_COOKIE, OneTimeLinks, Signer
from lifecycle.ingress import Request, Response
from lifecycle.runtime import Runtime
from lifecycle.state import AuditEntry, Change
from tests.conftest import make_settings


def cookie_of(response: Response, name: str) -> str:
    value = response.headers["Set-Cookie"]
    assert value.startswith(f"{name}=")
    assert "Secure" in value and "HttpOnly" in value and "SameSite=Strict" in value and "Path=/" in value
    return value.split(";", 1)[0]


def signed_in(console: Console) -> str:
    link = console.sign_in_link("http://127.0.0.1:1")
    once = link.split("once=", 1)[1]
    response = console.handle(Request("GET", b"", {}, {"once": once}), "/signin")
    assert response.status == 303
    return cookie_of(response, COOKIE)


def get(console: Console, path: str, cookie: str | None, **query: str) -> Response:
    return console.handle(Request("GET", b"", {"Cookie": cookie} if cookie else {}, query), path)


def post(console: Console, path: str, cookie: str, form: dict[str, str]) -> Response:
    headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    return console.handle(Request("POST", urlencode(form).encode(), headers, {}), path)


def csrf_in(html: bytes) -> str:
    found = re.search(rb'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1).decode()


def test_a_request_without_a_session_is_refused_and_the_headers_forbid_scripts(runtime: Runtime) -> None:
    console = Console(runtime)
    response = get(console, "/", None)
    assert response.status == 401
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_one_time_link_signs_in_once_only(runtime: Runtime) -> None:
    console = Console(runtime)
    link = console.sign_in_link("http://127.0.0.1:1")
    once = link.split("once=", 1)[1]
    first = console.handle(Request("GET", b"", {}, {"once": once}), "/signin")
    second = console.handle(Request("GET", b"", {}, {"once": once}), "/signin")
    assert first.status == 303 and second.status == 401
    assert get(console, "/", cookie_of(first, COOKIE)).status == 200


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(runtime: Runtime) -> None:
    console = Console(runtime)
    cookie = signed_in(console)
    assert post(console, "/held", cookie, {"held_id": "*", "decision": "approve"}).status == 403
    other = Signer(b"another key").csrf("whatever")
    assert post(console, "/held", cookie, {"held_id": "*", "decision": "approve", "csrf": other}).status == 403
    page = get(console, "/held", cookie)
    form = {"held_id": "*", "decision": "approve", "csrf": csrf_in(page.body)}
    assert post(console, "/held", cookie, form).status == 200


def test_a_forged_or_expired_session_cookie_is_refused(runtime: Runtime) -> None:
    console = Console(runtime)
    forged = Signer(b"not the console's key").new_session("mallory", {"read", "act"}, 1, "forged")[1]
    assert get(console, "/", f"{COOKIE}={forged}").status == 401
    expired = console.signer.new_session("late", {"read", "act"}, -1, "test")[1]
    assert get(console, "/", f"{COOKIE}={expired}").status == 401


def test_a_reader_can_look_but_not_act(runtime: Runtime) -> None:
    console = Console(runtime)
    session, token = console.signer.new_session("reader@example.test", {"read"}, 1, "test")
    cookie = f"{COOKIE}={token}"
    assert get(console, "/held", cookie).status == 200
    form = {"held_id": "*", "decision": "approve", "csrf": console.signer.csrf(session.sid)}
    assert post(console, "/held", cookie, form).status == 403


def test_the_admin_token_signs_in_through_a_form_with_its_own_csrf_token(tmp_path: Path) -> None:
    runtime = Runtime(make_settings(tmp_path, admin_token="operator-token-value-0123456789"))
    try:
        console = Console(runtime)
        form_page = get(console, "/signin", None)
        nonce_cookie = cookie_of(form_page, FLOW_COOKIE)
        csrf = csrf_in(form_page.body)
        wrong = post(console, "/signin", nonce_cookie, {"csrf": csrf, "name": "Ann", "token": "guess"})
        assert wrong.status == 401
        no_csrf = post(console, "/signin", nonce_cookie, {"name": "Ann", "token": "operator-token-value-0123456789"})
        assert no_csrf.status == 403
        good = post(
            console, "/signin", nonce_cookie, {"csrf": csrf, "name": "Ann", "token": "operator-token-value-0123456789"}
        )
        assert good.status == 303
        assert b"Ann (admin token)" in get(console, "/", cookie_of(good, COOKIE)).body
    finally:
        runtime.close()


def test_audited_values_are_escaped_and_passwords_never_shown(runtime: Runtime) -> None:
    runtime.store.append_audit(
        AuditEntry(
            at=datetime.now(UTC),
            work_id="w-1",
            user_id=77,
            step="01-create_user",
            action="create_user",
            target="default",
            outcome="changed",
            changes=(
                Change("displayName", None, "<script>alert(1)</script>"),
                Change("sAMAccountName", None, "jdoe"),
                Change("unicodePwd", None, "Sup3r-Secret!"),
            ),
            requested_by={"source": "webhook", "delivery_id": "d-9"},
        )
    )
    console = Console(runtime)
    cookie = signed_in(console)
    page = get(console, "/people/77", cookie).body
    assert b"<script>" not in page and b"&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert b"Sup3r-Secret!" not in page and b"(hidden)" in page
    assert b"delivery_id d-9" in page
    found = get(console, "/people", cookie, q="JDO").body
    assert b'href="/api/console/people/77"' in found


def test_the_plan_preview_answers_as_the_dry_run_does(runtime: Runtime) -> None:
    console = Console(runtime)
    cookie = signed_in(console)
    csrf = csrf_in(get(console, "/plan", cookie).body)
    user = '{"id": 4242, "name": "Pat Preview", "firstname": "Pat", "surname": "Preview", "site_name": "Main"}'
    page = post(console, "/plan", cookie, {"csrf": csrf, "event": "created", "user_json": user})
    assert page.status == 200
    assert b"create_user" in page.body and b"Lifecycle <strong>joiner</strong>" in page.body
    bad = post(console, "/plan", cookie, {"csrf": csrf, "event": "created", "user_json": "{nope"})
    assert b"not valid JSON" in bad.body


def test_one_time_links_expire() -> None:
    now = [1000.0]
    links = OneTimeLinks(ttl=10, clock=lambda: now[0])
    token = links.issue()
    now[0] += 11
    assert not links.redeem(token)


def test_entra_roles_map_to_read_and_act() -> None:
    assert roles_from_claims({"roles": ["Console.Act"]}) == {"read", "act"}
    assert roles_from_claims({"roles": ["Console.Read"]}) == {"read"}
    assert roles_from_claims({"roles": ["Something.Else"]}) == set()
    assert name_from_claims({"preferred_username": "ann@example.test", "name": "Ann"}) == "ann@example.test"


def test_the_function_app_serves_the_console(runtime: Runtime) -> None:
    azure_host.use_runtime(runtime)
    try:
        request = func.HttpRequest(
            method="GET",
            url="https://func-halo.azurewebsites.net/api/console/",
            headers={},
            params={},
            route_params={"path": ""},
            body=b"",
        )
        response = function_app.console(request)
        assert response.status_code == 401
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    finally:
        azure_host.use_runtime(None)


@pytest.mark.parametrize("path", ["/nowhere", "/people/abc", "/dead-letters/999"])
def test_unknown_pages_are_404(runtime: Runtime, path: str) -> None:
    console = Console(runtime)
    assert get(console, path, signed_in(console)).status == 404


def test_the_overview_counts_each_work_item_once_by_its_latest_outcome(runtime: Runtime) -> None:
    def entry(work_id: str, outcome: str) -> AuditEntry:
        return AuditEntry(datetime.now(UTC), work_id, 5, "s", "a", "default", outcome)  # type: ignore[arg-type]

    for work_id, outcomes in {
        "joiner": ["changed", "unchanged"],
        "replayed": ["dead_lettered", "changed"],
        "stuck": ["dead_lettered"],
        "noop": ["unchanged", "unchanged"],
        "held": ["held"],
    }.items():
        for outcome in outcomes:
            runtime.store.append_audit(entry(work_id, outcome))
    console = Console(runtime)
    page = get(console, "/", signed_in(console)).body.decode()
    day = page.split('id="day"', 1)[1].split('id="queue"', 1)[0]
    rows = dict(re.findall(r"<tr><td>(\w+)</td><td class=\"num\">(\d+)</td></tr>", day))
    assert rows == {"changed": "2", "dead_lettered": "1", "unchanged": "1", "held": "1"}
