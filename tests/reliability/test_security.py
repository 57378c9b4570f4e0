"""Security at the edges, against the running service and a real DC.

Wrong or missing credentials, a replayed signature on a changed body, oversized bodies, LDAP-injection
strings in every mapped field, and path traversal in home-folder templates. (The scan of every log the
suite writes for configured secrets is in tests/conftest.py and tests/reliability/secret_scan.py.)
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from lifecycle.halo.auth import sign_body
from lifecycle.ingress import PROBLEM_JSON
from lifecycle.mapping.schema import parse_mapping
from tests.conftest import ROOT
from tests.integration.conftest import delivery, new_user
from tests.reliability.conftest import Harness, in_flight, record_figures, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
HMAC = "hmac-secret-value"
BASIC_OK = "Basic " + base64.b64encode(b"halo:basic-secret-value").decode()
JSON = {"Content-Type": "application/json"}

# Strings that change an LDAP filter or DN if they are not escaped (RFC 4515, RFC 4514), and friends.
INJECTIONS = [
    "*)(objectClass=*",
    "x*)(|(sAMAccountName=*)(cn=*",
    "admin)(&)",
    "\\2a\\29\\28",
    "\\",
    "*",
    "a,OU=Domain Controllers,DC=corp",
    "CN=Administrator+sn=x",
    "#hash",
    " leading and trailing ",
    'semi;colon<less>greater"quote',
    "=equals",
]


def rejected(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert "Traceback" not in response.text


def test_requests_without_the_right_credentials_are_refused_and_queue_nothing(
    harness: Callable[..., Harness],
) -> None:
    service = harness(workers=1)
    user = new_user("Cred", "Check")
    at = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds")  # signed bodies carry Halo's time
    body = json.dumps(delivery("created", user, at=at)).encode()
    other = json.dumps(delivery("created", {**user, "title": "Changed in transit"}, at=at)).encode()
    url = f"{service.url}/api/halo/events"
    attempts = {
        "no credentials": {},
        "wrong password": {"Authorization": "Basic " + base64.b64encode(b"halo:guess").decode()},
        "wrong user": {"Authorization": "Basic " + base64.b64encode(b"root:basic-secret-value").decode()},
        "not base64": {"Authorization": "Basic !!!"},
        "bearer instead of basic": {"Authorization": "Bearer basic-secret-value"},
        "signature of another body": {"Token": sign_body(HMAC, other)},
        "signature with another key": {"Token": sign_body("not-the-key", body)},
        "empty token": {"Token": ""},
    }
    for name, headers in attempts.items():
        rejected(httpx.post(url, content=body, headers={**JSON, **headers}, timeout=30), 401)
        assert in_flight(service.runtime) == 0, name
    # The captured signature replayed on a changed body fails; on its own body it is the same delivery again.
    token = sign_body(HMAC, body)
    rejected(httpx.post(url, content=other, headers={**JSON, "Token": token}, timeout=30), 401)
    rejected(httpx.post(url, content=body + b" ", headers={**JSON, "Token": token}, timeout=30), 401)
    first = httpx.post(url, content=body, headers={**JSON, "Token": token}, timeout=30)
    again = httpx.post(url, content=body, headers={**JSON, "Token": token}, timeout=30)
    assert first.status_code == again.status_code == 202
    assert len(first.json()["accepted"]) == 1 and len(again.json()["duplicates"]) == 1
    wait_until(lambda: in_flight(service.runtime) == 0, seconds=60, what="the one accepted delivery")
    assert len([e for e in service.audit(user["id"]) if e.action == "create_user"]) == 1
    record_figures("security_credentials", refused=len(attempts) + 2, accepted=1, replays_dropped_as_duplicates=1)


def test_oversized_and_unframed_bodies_are_refused_before_they_are_read(harness: Callable[..., Harness]) -> None:
    service = harness(workers=1, max_body_bytes=4096)
    url = f"{service.url}/api/halo/events"
    user = new_user("Big", "Body", notes="x" * 5000)
    big = json.dumps(delivery("created", user)).encode()
    rejected(httpx.post(url, content=big, headers={**JSON, "Authorization": BASIC_OK}, timeout=30), 413)
    # A huge declared length: answered at once from the header, the body never read.
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(
            b"POST /api/halo/events HTTP/1.1\r\nHost: x\r\nAuthorization: " + BASIC_OK.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10737418240\r\n\r\n{"
        )
        answer = raw.recv(65536).decode("latin-1")
    assert answer.startswith("HTTP/1.0 413") or answer.startswith("HTTP/1.1 413"), answer[:200]
    # No length at all (chunked): refused, never buffered.
    chunked = httpx.post(url, content=iter([b"{", b"}"]), headers={**JSON, "Authorization": BASIC_OK}, timeout=30)
    rejected(chunked, 411)
    assert in_flight(service.runtime) == 0


def test_ldap_injection_strings_in_every_mapped_field_are_taken_literally_and_touch_no_one_else(
    harness: Callable[..., Harness],
) -> None:
    service = harness(workers=2)
    bystander = new_user("Inno", "Cent", department="Sales")
    assert service.post_http(delivery("created", bystander)).status_code == 202
    wait_until(lambda: service.account(bystander["id"]) is not None, seconds=60, what="the bystander")
    bystander_before = service.account(bystander["id"])
    assert bystander_before is not None

    mapped = ["firstname", "surname", "name", "initials", "title", "department", "client_name", "site_name"]
    mapped += ["phonenumber", "mobilenumber"]
    people = []
    for index, payload in enumerate(INJECTIONS):
        fields = {name: f"{payload}{index}" if name in ("firstname", "surname") else payload for name in mapped}
        fields["name"] = f"{fields['firstname']} {fields['surname']}"
        people.append(new_user(fields["firstname"], fields["surname"], **fields))
    for person in people:
        assert service.post_http(delivery("created", person)).status_code == 202
    for person in people:  # and a mover carrying the same strings again
        assert service.post_http(delivery("updated", {**person, "title": person["title"] + "!"})).status_code == 202
    wait_until(lambda: in_flight(service.runtime) == 0, seconds=300, what="the injection joiners")

    assert service.runtime.queue.dead_letters() == []
    accounts = service.accounts(p["id"] for p in people)
    assert set(accounts) == {p["id"] for p in people}
    for person in people:
        account = accounts[person["id"]]
        # Values arrive as sent (attribute templates trim surrounding spaces; the CN keeps them, escaped).
        assert account["title"] == (person["title"] + "!").strip()
        assert account["department"] == person["department"].strip()
        assert account["cn"] == person["name"]
        assert str(account["dn"]).endswith(f",OU=Staff,OU=Halo,{service.info.base_dn}")
    # Nobody else was touched: the bystander is unchanged, and the audit names only these people.
    bystander_after = service.account(bystander["id"])
    assert bystander_after is not None and bystander_after["uSNChanged"] == bystander_before["uSNChanged"]
    touched = {e.user_id for e in service.audit() if e.outcome == "changed"}
    assert touched == {bystander["id"], *(p["id"] for p in people)}
    record_figures("security_ldap_injection", payloads=len(INJECTIONS), fields_per_payload=len(mapped))


def home_folder_mapping(root: Path) -> str:
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    start = text.index("[lifecycles]")
    return (
        text[:start]
        + f"""[lifecycles]
joiner = ["create_user", {{ action = "create_home_folder", path = "{root}/{{surname}}", grant = "none" }}]
mover = ["modify_properties"]
leaver = ["disable_user", {{ action = "delete_home_folder", path = "{root}/{{surname}}" }}]
rehire = ["enable_user"]
"""
    )


def test_path_traversal_in_home_folder_templates_is_refused_and_nothing_outside_the_root_changes(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    root = tmp_path / "home"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text("must survive", encoding="utf-8")
    mapping = parse_mapping(home_folder_mapping(root), "home-folder test mapping")
    service = harness(workers=2, mapping=mapping, file_roots={"home": {"path": str(root)}}, guard_max_count=100)
    honest = new_user("Hon", "Est")
    sneaky = [
        new_user("Tra", "../outside"),
        new_user("Ver", "../../" + outside.name),
        new_user("Sal", "..\\outside"),
        new_user("Cur", "./../outside"),
        new_user("Dot", ".."),
    ]
    for person in (honest, *sneaky):
        assert service.post_http(delivery("created", person)).status_code == 202
    wait_until(lambda: in_flight(service.runtime) == 0, seconds=120, what="the joiners")
    assert (root / "Est").is_dir()
    for person in (honest, *sneaky):
        assert service.post_http(delivery("updated", {**person, "inactive": True})).status_code == 202
    wait_until(lambda: in_flight(service.runtime) == 0, seconds=120, what="the leavers")

    assert (outside / "canary.txt").read_text(encoding="utf-8") == "must survive"
    assert sorted(p.name for p in outside.iterdir()) == ["canary.txt"]
    assert not (root / "Est").exists()  # the honest leaver's folder went
    refusals: dict[str, Any] = {}
    for person in sneaky:
        entries = service.audit(person["id"])
        outcomes = {e.action: e.outcome for e in entries if e.action.endswith("home_folder")}
        refusals[person["surname"]] = outcomes
        # Both steps were attempted and each refused on its own (the joiner's refusal did not stop the leaver's).
        assert outcomes == {"create_home_folder": "refused", "delete_home_folder": "refused"}, outcomes
        assert not any(e.outcome == "changed" and e.action.endswith("home_folder") for e in entries)
    assert service.runtime.queue.dead_letters() == []
    record_figures("security_path_traversal", traversal_attempts=len(sneaky), refused=len(refusals))
