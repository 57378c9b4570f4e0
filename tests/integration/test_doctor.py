"""``lifecycle doctor`` against the local stack (every configured check passes) and against a broken one (each
broken check fails with its fix): the real Samba DC (its effective-rights attributes), Table storage on
Azurite, the AMQP broker with the real Service Bus SDK.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableServiceClient
from pydantic import SecretStr

from lifecycle.cli import main
from lifecycle.commands.doctor import needed_graph_permissions, run_checks, token_roles
from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import Mapping, load_mapping
from lifecycle.queue.servicebus import ServiceBusQueue
from lifecycle.runtime import Runtime
from lifecycle.state.table import TableStore
from tests.conftest import ROOT
from tests.integration.azurite import Azurite, table_prefix
from tests.integration.conftest import admin_connection, dc_settings
from tests.standins.amqp_broker.process import BrokerProcess
from tests.unit.conftest import Bus

pytestmark = pytest.mark.integration
_names = itertools.count(1)


def azure_runtime(
    directory: DCInfo,
    azurite: Azurite,
    bus: Bus,
    mapping: Mapping,
    tmp_path: Path,
    *,
    queue: str | None = None,
    connection_string: str | None = None,
    **overrides: Any,
) -> Runtime:
    settings = dc_settings(directory, tmp_path, queue_backend="servicebus", store_backend="table")
    settings = settings.model_copy(
        update={k: SecretStr(v) if k.endswith("password") else v for k, v in overrides.items()}
    )
    runtime = Runtime(settings, mapping=mapping)
    runtime.__dict__["store"] = TableStore(
        TableServiceClient.from_connection_string(connection_string or azurite.connection_string),
        prefix=table_prefix(),
    )
    runtime.__dict__["queue"] = ServiceBusQueue(queue or bus.queue, client_factory=bus.client)
    return runtime


@pytest.fixture
def bus(amqp_broker: BrokerProcess) -> Iterator[Bus]:
    namespace = Bus(amqp_broker)
    yield namespace
    namespace.close()


def test_the_doctor_passes_on_the_local_stack(
    directory: DCInfo,
    azurite: Azurite,
    bus: Bus,
    example_mapping: Mapping,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runtime = azure_runtime(directory, azurite, bus, example_mapping, tmp_path)
    monkeypatch.setattr("lifecycle.cli._runtime", lambda: runtime)
    try:
        assert main(["doctor"]) == 0
    finally:
        runtime.close()
    out = capsys.readouterr().out
    assert "✗" not in out
    for line in (
        "✓ AD bind",
        "✓ AD rights on OU=Staff",
        "✓ AD rights on CN=All Staff",
        "✓ Service Bus",
        "✓ Table storage",
        "✓ Key Vault references",
    ):
        assert line in out, out
    assert "- Microsoft Graph" in out and "- Halo API" in out  # not configured: skipped, never passed


def test_each_broken_check_fails_with_its_fix(
    directory: DCInfo, azurite: Azurite, bus: Bus, example_mapping: Mapping, tmp_path: Path
) -> None:
    # A bind account with no delegated rights, a mapping naming an OU that does not exist, a Key Vault reference
    # the platform did not resolve, a queue that does not exist, storage refusing the key.
    name = f"doctor-nobody-{next(_names)}-{tmp_path.name[-6:]}"[:20]
    conn = admin_connection(directory)
    dn = f"CN={name},CN=Users,{directory.base_dn}"
    conn.add(dn, ["top", "person", "organizationalPerson", "user"], {"sAMAccountName": name})
    conn.extend.microsoft.modify_password(dn, "Nobody-Pass-123!")
    conn.modify(dn, {"userAccountControl": [("MODIFY_REPLACE", ["512"])]})
    conn.unbind()
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    text += '\n[[ou.rules]]\nwhen = { site_name = "Atlantis" }\nou = "OU=Atlantis,OU=Staff,OU=Halo,{base_dn}"\n'
    (tmp_path / "mapping.toml").write_text(text, encoding="utf-8")
    mapping = load_mapping(tmp_path / "mapping.toml")
    wrong_key = azurite.connection_string.replace("AccountKey=", "AccountKey=AAAA")
    runtime = azure_runtime(
        directory,
        azurite,
        bus,
        mapping,
        tmp_path,
        queue="no-such-queue",
        connection_string=wrong_key,
        ad_user=f"{name}@{directory.realm.lower()}",
        ad_password="Nobody-Pass-123!",
    )
    environ = {"LIFECYCLE_AD_PASSWORD": "@Microsoft.KeyVault(VaultName=kv;SecretName=ad-bind-password)"}
    try:
        checks = {c.name: c for c in run_checks(runtime, environ=environ)}
    finally:
        runtime.close()
    report = json.dumps({k: c.__dict__ for k, c in checks.items()}, indent=1)
    assert (
        checks["Key Vault references"].status == "failed"
        and "LIFECYCLE_AD_PASSWORD" in checks["Key Vault references"].detail
    )
    assert checks["AD bind"].status == "ok", report
    staff = [c for n, c in checks.items() if n.startswith("AD rights on OU=Staff")]
    assert staff and all(c.status == "failed" and "lacks user" in c.detail and "Delegate" in c.fix for c in staff), (
        report
    )
    [atlantis] = [c for n, c in checks.items() if n.startswith("AD rights on OU=Atlantis")]
    assert atlantis.status == "failed" and "does not exist" in atlantis.detail
    groups = [c for n, c in checks.items() if n.startswith("AD rights on CN=")]
    assert groups and all(c.status == "failed" and "lacks member" in c.detail for c in groups), report
    assert checks["Service Bus"].status == "failed" and "Data Sender" in checks["Service Bus"].fix
    assert checks["Table storage"].status == "failed" and "Table Data Contributor" in checks["Table storage"].detail


def test_a_wrong_bind_password_fails_the_bind_with_its_fix(
    directory: DCInfo, azurite: Azurite, bus: Bus, example_mapping: Mapping, tmp_path: Path
) -> None:
    runtime = azure_runtime(directory, azurite, bus, example_mapping, tmp_path, ad_password="not-the-password")
    try:
        [bind] = [c for c in run_checks(runtime, environ={}) if c.name == "AD bind"]
    finally:
        runtime.close()
    assert bind.status == "failed" and "LIFECYCLE_AD_USER/_PASSWORD" in bind.fix


def test_graph_permissions_are_read_from_the_tokens_roles() -> None:
    import base64

    claims = base64.urlsafe_b64encode(json.dumps({"roles": ["User.Read.All"]}).encode()).decode().rstrip("=")
    assert token_roles(f"e30.{claims}.sig") == {"User.Read.All"}
    mapping = load_mapping(ROOT / "tests" / "events" / "mapping-m365.toml")
    needed = needed_graph_permissions(mapping)
    assert "User.Read.All" in needed and "LicenseAssignment.ReadWrite.All" in needed
