"""A real Samba AD DC for the whole integration session, and a fresh service world per test.

The DC listens on a free loopback address other than 127.0.0.1 (a developer's ``make run`` may hold that one)
and is stopped by its PID at the end of the session. Each test gets its own embedded queue and store, and
its own Halo user ids and names, so tests do not see each other's accounts.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ldap3  # type: ignore[import-untyped]
import pytest
from ldap3.utils.conv import escape_filter_chars  # type: ignore[import-untyped]

from lifecycle.ingress import Ingress, Request, Response
from lifecycle.local.bootstrap import ensure_containers
from lifecycle.local.samba import DCInfo, SambaDC, free_loopback_address, samba_available
from lifecycle.mapping.schema import Mapping
from lifecycle.runtime import Runtime
from lifecycle.settings import Settings
from lifecycle.state import AuditEntry
from lifecycle.targets.ad import ADTarget
from lifecycle.worker import ProcessResult, Worker
from tests.conftest import make_settings
from tests.integration.azurite import azurite  # noqa: F401 - the session's Azurite, for every integration test

AUTH = {
    "Authorization": "Basic " + base64.b64encode(b"halo:basic-secret-value").decode(),
    "Content-Type": "application/json",
}
_user_ids = itertools.count(10_000)


@pytest.fixture(scope="session")
def dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaDC]:
    if not samba_available():
        if os.environ.get("CI"):
            pytest.fail("samba is not installed: `make test` installs it; CI must not skip the AD tests")
        pytest.skip("samba is not installed (make test installs it)")
    controller = SambaDC(tmp_path_factory.mktemp("samba-dc"), host=free_loopback_address(exclude=["127.0.0.1"]))
    controller.ensure_provisioned()
    controller.start()
    yield controller
    controller.stop()


def dc_settings(info: DCInfo, tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(
        tmp_path,
        ad_url=info.url,
        ad_user=info.admin_user,
        ad_password=info.admin_password,
        ad_ca_file=info.ca_file,
        ad_tls_server_name=info.tls_server_name,
        ad_base_dn=info.base_dn,
        **overrides,
    )


@pytest.fixture(scope="session")
def directory(dc: SambaDC, example_mapping: Mapping, tmp_path_factory: pytest.TempPathFactory) -> DCInfo:
    """The DC with the example mapping's OUs and groups in place."""
    settings = dc_settings(dc.info, tmp_path_factory.mktemp("bootstrap"))
    target = ADTarget("default", settings.ad_connection("default"))
    try:
        ensure_containers(target, example_mapping)
    finally:
        target.close()
    return dc.info


def admin_connection(info: DCInfo) -> Any:
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(info.ca_file), valid_names=[info.tls_server_name])
    server = ldap3.Server(info.host, port=636, use_ssl=True, tls=tls, get_info=ldap3.NONE)
    return ldap3.Connection(server, info.admin_user, info.admin_password, auto_bind=True, raise_exceptions=True)


@dataclass
class World:
    """One test's service (ingress, queue, store, worker) against the shared DC, plus ways to look at AD."""

    info: DCInfo
    runtime: Runtime
    worker: Worker
    ldap: Any

    def post(self, body: Any, **query: str) -> Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return Ingress(self.runtime).events(Request("POST", raw, AUTH, query))

    def accept(self, body: Any, **query: str) -> dict[str, Any]:
        response = self.post(body, **query)
        assert response.status == 202, response.body
        result: dict[str, Any] = response.json()
        return result

    def drain(self) -> list[ProcessResult]:
        """Process every message that is deliverable now, in queue order."""
        results = []
        while (message := self.runtime.queue.receive(timeout=0)) is not None:
            results.append(self.worker.process_message(message))
        return results

    def account(self, user_id: int) -> dict[str, Any] | None:
        """The AD account anchored to ``user_id`` (attributes as ldap3 returns them), or None."""
        self.ldap.search(
            self.info.base_dn,
            # The example mapping's namespaced anchor, or the bare id of accounts a test made the old way.
            f"(|(employeeID=halo:{escape_filter_chars(str(user_id))})(employeeID={escape_filter_chars(str(user_id))}))",
            ldap3.SUBTREE,
            attributes=[ldap3.ALL_ATTRIBUTES],
        )
        entries = [e for e in self.ldap.response if e.get("type") == "searchResEntry"]
        assert len(entries) <= 1
        if not entries:
            return None
        # Without schema information ldap3 returns lists; single values read better in assertions.
        entry: dict[str, Any] = {
            k: (v[0] if isinstance(v, list) and len(v) == 1 and k.lower() != "memberof" else v)
            for k, v in entries[0]["attributes"].items()
        }
        entry["dn"] = entries[0]["dn"]
        return entry

    def audit(self, user_id: int) -> list[AuditEntry]:
        return self.runtime.store.audit(user_id=user_id)

    def changes(self, user_id: int) -> list[AuditEntry]:
        return [e for e in self.audit(user_id) if e.outcome == "changed"]


@pytest.fixture
def world(directory: DCInfo, example_mapping: Mapping, tmp_path: Path) -> Iterator[World]:
    runtime = Runtime(
        dc_settings(directory, tmp_path, retry_base_seconds=0.05, retry_cap_seconds=0.2), mapping=example_mapping
    )
    worker = Worker(runtime)
    conn = admin_connection(directory)
    yield World(directory, runtime, worker, conn)
    worker.close()
    conn.unbind()
    runtime.close()


def new_user(first: str, last: str, **fields: Any) -> dict[str, Any]:
    """A Halo user with a fresh id (ids are unique across the session's tests)."""
    user_id = next(_user_ids)
    return {
        "id": user_id,
        "name": f"{first} {last}",
        "firstname": first,
        "surname": last,
        "site_id": 18.0,
        "site_name": "Main",
        "client_name": "DemoDoftware",
        "inactive": False,
        "use": "user",
        **fields,
    }


def delivery(
    kind: str, user: dict[str, Any], *, delivery_id: str | None = None, at: str | None = None
) -> dict[str, Any]:
    """A Halo webhook delivery for ``user``; the Halo event name maps to ``kind``."""
    names = {"created": "User Created", "updated": "User Updated", "deleted": "User Deleted"}
    body: dict[str, Any] = {
        "id": delivery_id or f"d-{user['id']}-{kind}-{next(_user_ids)}",
        "event": names[kind],
        "object_id": user["id"],
        "agent_id": 3,
        "user": user,
    }
    if at is not None:
        body["timestamp"] = at
    return body
