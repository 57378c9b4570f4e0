"""The operator console in Debian's Chromium, through the local service on the real Samba DC.

One walk through every page, as an operator would: sign in with the one-time link, find a person a webhook
created and the before and after of their last change, replay a dead letter after fixing its cause, approve
a held leaver, cancel a staged deletion, preview a plan; each effect is checked in AD and in the audit. The
screenshots in docs/img/console-*.png (shown in the README) are taken here (``CONSOLE_SCREENSHOTS=1``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lifecycle.local.server import LocalHost
from lifecycle.runtime import Runtime
from lifecycle.worker import Worker
from tests.conftest import ROOT
from tests.integration.conftest import World, admin_connection, dc_settings, delivery, new_user
from tests.integration.test_local_service import wait_until

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
# The flags of a quiet, reproducible headless run: no sandbox (root in a container), no GPU, no calls home.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BASIC = "Basic " + base64.b64encode(b"halo:basic-secret-value").decode()
# The published screenshots (README, docs/console.md) are refreshed by `CONSOLE_SCREENSHOTS=1 make test`; other
# runs write them to the test's temporary directory, so a test run leaves the checkout as it was.
PUBLISHED = ROOT / "docs" / "img"
UF_ACCOUNTDISABLE = 0x2


def _browser_available() -> None:
    missing = []
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        missing.append("Debian's chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{' and '.join(missing)} missing: `make test` installs them; CI must not skip this test")
        pytest.skip(f"{' and '.join(missing)} missing (make test installs them)")


@pytest.fixture
def guarded(directory: Any, example_mapping: Any, tmp_path: Path) -> Iterator[World]:
    """A world whose guard holds the second destructive item in an hour, so a leaver can be held."""
    runtime = Runtime(
        dc_settings(directory, tmp_path, guard_max_count=1, guard_window_seconds=3600.0), mapping=example_mapping
    )
    worker = Worker(runtime)
    conn = admin_connection(directory)
    yield World(directory, runtime, worker, conn)
    worker.close()
    conn.unbind()
    runtime.close()


@pytest.fixture
def service(guarded: World) -> Iterator[LocalHost]:
    host = LocalHost(guarded.runtime, host="127.0.0.1", port=0, workers=2)
    host.start()
    yield host
    host.stop()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    _browser_available()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # A fresh profile per run; Playwright adds its own automation flags to ours.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def send(service: LocalHost, body: Any) -> None:
    response = httpx.post(
        f"{service.url}/api/halo/events",
        content=json.dumps(body).encode(),
        headers={"Authorization": BASIC, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 202, response.text


@pytest.fixture
def shot(tmp_path: Path) -> Any:
    folder = PUBLISHED if os.environ.get("CONSOLE_SCREENSHOTS") == "1" else tmp_path / "img"
    folder.mkdir(parents=True, exist_ok=True)

    def take(page: Any, name: str) -> None:
        # Every page: no script at all, and every form control has a label (its accessible name).
        assert page.evaluate("document.scripts.length") == 0
        unlabelled = page.evaluate(
            "[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]"
            ".filter(e => e.labels.length === 0).map(e => e.name)"
        )
        assert unlabelled == [], f"{name}: form controls without a label: {unlabelled}"
        path = folder / f"console-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000  # a rendered page, not a blank one

    return take


def audited(world: World, user_id: int, action: str) -> list[Any]:
    return [e for e in world.audit(user_id) if e.action == action]


def test_an_operator_works_through_every_console_page_in_chromium(
    guarded: World, service: LocalHost, page: Any, shot: Any
) -> None:
    world = guarded
    console = f"{service.url}/api/console"
    base_dn = world.info.base_dn

    # What the operator will look at, made the way it happens: webhooks through the running service.
    wendy = new_user("Wendy", "Webhook", title="Engineer")
    send(service, delivery("created", wendy))
    wait_until(lambda: world.account(wendy["id"]) is not None, what="Wendy's account")
    send(service, delivery("updated", {**wendy, "title": "Lead Engineer"}))
    wait_until(lambda: (world.account(wendy["id"]) or {}).get("title") == "Lead Engineer", what="Wendy's new title")

    cara, bea = new_user("Cara", "Staged"), new_user("Bea", "Held")
    for person in (cara, bea):
        send(service, delivery("created", person))
    wait_until(lambda: all(world.account(p["id"]) for p in (cara, bea)), what="Cara's and Bea's accounts")
    send(service, delivery("deleted", cara))  # the hour's one destructive item: disabled, deletion staged
    wait_until(lambda: bool(world.runtime.store.pending(user_id=cara["id"])), what="Cara's staged deletion")
    send(service, delivery("updated", {**bea, "inactive": True}))  # the second: held
    wait_until(lambda: bool(world.runtime.store.held()), what="Bea's leaver to be held")

    # A joiner whose OU does not exist (yet) is dead-lettered with a reason.
    missing_ou = f"OU=ConsoleArrivals,OU=Staff,OU=Halo,{base_dn}"
    mapping = world.runtime.mapping
    world.runtime.mapping = mapping.model_copy(  # type: ignore[misc]
        update={"ou": mapping.ou.model_copy(update={"default": "OU=ConsoleArrivals,OU=Staff,OU=Halo,{base_dn}"})}
    )
    ori = new_user("Ori", "Orphan", site_name="Atlantis")
    send(service, delivery("created", ori))
    wait_until(lambda: bool(world.runtime.queue.dead_letters()), what="Ori's joiner to be dead-lettered")

    # Refused: no session; a POST without its CSRF token (even with a valid session).
    assert httpx.get(f"{console}/", timeout=10).status_code == 401
    assert httpx.get(f"{console}/people/{wendy['id']}", timeout=10).status_code == 401

    # Sign in with the one-time link `make run` prints; it works once.
    link = service.console_sign_in_link()
    page.goto(link)
    assert page.url == f"{console}/"
    assert "Signed in as" in page.content()
    assert httpx.get(link, timeout=10).status_code == 401
    forged = page.request.post(f"{console}/held", form={"held_id": "*", "decision": "approve"})
    assert forged.status == 403
    assert world.runtime.store.held()[0].status == "held"

    # Overview: health, the day's outcomes, what needs attention.
    assert page.get_by_text("1 dead letter(s)").is_visible()
    assert page.get_by_text("1 held item(s)").is_visible()
    shot(page, "overview")

    # People: find Wendy by name, see who asked and the before and after of her last change.
    page.get_by_role("link", name="People").click()
    page.get_by_label("Name, Halo id, sAMAccountName or UPN").fill("wendy")
    page.get_by_role("button", name="Search").click()
    shot(page, "people")
    page.get_by_role("link", name=str(wendy["id"]), exact=True).click()
    story = page.locator("article.story").first
    row = story.locator("tr", has_text="title")
    assert row.locator("td").nth(-2).inner_text() == "Engineer"
    assert row.locator("td").nth(-1).inner_text() == "Lead Engineer"
    assert "webhook" in story.inner_text()
    shot(page, "person")

    # Dead letters: the reason, a dry-run preview; fix the cause (the OU); replay; the account appears there.
    page.get_by_role("link", name="Dead letters").click()
    assert "does not exist" in page.content()
    shot(page, "dead-letters")
    sequence = world.runtime.queue.dead_letters()[0].sequence_number
    page.get_by_role("link", name=str(sequence), exact=True).click()
    assert "create_user" in page.locator("ol.steps").inner_text()
    shot(page, "dead-letter")
    world.ldap.add(missing_ou, ["top", "organizationalUnit"])
    page.get_by_role("button", name=f"Replay dead letter {sequence}").click()
    assert "Replayed dead letter" in page.get_by_role("status").inner_text()
    wait_until(lambda: world.account(ori["id"]) is not None, what="Ori's account after the replay")
    assert str(world.account(ori["id"])["dn"]).endswith(missing_ou)  # type: ignore[index]
    assert world.runtime.queue.dead_letters() == []
    assert [e.requested_by.get("by") for e in audited(world, ori["id"], "replay")] == ["local operator"]

    # Held work: approve Bea's leaver with a note; she is disabled in AD.
    page.get_by_role("link", name="Held work").click()
    shot(page, "held")
    held_row = page.locator("tr", has_text=str(bea["id"]))
    held_row.get_by_label("Note").fill("HR confirmed the leaver")
    held_row.get_by_role("button", name=f"Approve the leaver of user {bea['id']}").click()
    assert "Approved 1 held item(s)" in page.get_by_role("status").inner_text()
    wait_until(
        lambda: int((world.account(bea["id"]) or {}).get("userAccountControl", 0)) & UF_ACCOUNTDISABLE != 0,
        what="Bea's account to be disabled",
    )
    approvals = [e for e in world.audit(bea["id"]) if e.outcome == "approved"]
    assert [(e.requested_by["by"], e.requested_by["source"]) for e in approvals] == [("local operator", "console")]
    assert "HR confirmed the leaver" in approvals[0].message

    # Staged work: cancel Cara's deletion; her (disabled) account stays.
    page.get_by_role("link", name="Staged work").click()
    shot(page, "staged")
    key = world.runtime.store.pending(user_id=cara["id"])[0].key
    page.get_by_role("button", name=f"Cancel {key} of {cara['id']}").click()
    assert "Cancelled" in page.get_by_role("status").inner_text()
    assert world.runtime.store.pending(user_id=cara["id"]) == []
    assert world.account(cara["id"]) is not None
    assert [e.requested_by.get("by") for e in audited(world, cara["id"], "cancel_pending")] == ["local operator"]

    # Plan preview: paste a Halo user; the plan is the dry run's, and nothing is sent.
    page.get_by_role("link", name="Plan preview").click()
    paula = new_user("Paula", "Preview", department="Sales")
    page.get_by_label("Event").select_option("created")
    page.get_by_label("Halo user (JSON").fill(json.dumps(paula))
    page.get_by_role("button", name="Preview").click()
    result = page.locator("section", has_text="Plan").last.inner_text()
    assert "create_user" in result and "sync_groups" in result
    shot(page, "plan")
    assert world.audit(paula["id"]) == [] and world.account(paula["id"]) is None

    # Signing out ends the session.
    page.get_by_role("button", name="Sign out").click()
    page.goto(f"{console}/held")
    assert "Sign in first" in page.content()
