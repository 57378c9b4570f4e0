"""Issue 15: ``create_remote_mailbox`` writes ``msExchVersion`` when the directory's schema has it, and says in
the step's audit that it did not when the schema lacks it (a forest not prepared for Exchange).

The suite's DC carries the Exchange attributes Enable-RemoteMailbox writes but not msExchVersion (its product
OID could not be confirmed from a public source, so it is not baked into every DC): the first test runs there.
The second starts a DC of its own and adds msExchVersion to that schema, so no other test sees it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3  # type: ignore[import-untyped]
import pytest

from lifecycle.local.samba import DCInfo, SambaDC, free_loopback_address, samba_available
from lifecycle.mapping.schema import load_mapping
from lifecycle.targets.ad import EXCHANGE_2013_VERSION, ADTarget
from tests.conftest import EVENTS
from tests.integration.conftest import admin_connection, dc_settings, new_user
from tests.integration.m365.conftest import graph_overrides, make_service
from tests.integration.m365.test_m365_hybrid import joiner, text
from tests.standins.graph import GraphStandIn

pytestmark = pytest.mark.integration
PARAMS = {"routing_domain": "contoso.mail.onmicrosoft.com"}


def test_without_msexchversion_in_the_schema_the_remote_mailbox_is_made_and_the_audit_says_what_was_skipped(
    directory: DCInfo, graph: GraphStandIn, tmp_path: Path
) -> None:
    service = make_service(
        dc_settings(directory, tmp_path, **graph_overrides(graph)), load_mapping(EVENTS / "mapping-m365.toml")
    )
    ldap = admin_connection(directory)
    try:
        person = new_user("Grace", "Hopper")
        entry, _ = joiner(service, graph, ldap, directory, person)
        assert text(entry, "msExchRecipientTypeDetails") == ["2147483648"]
        assert "msexchversion" not in entry
        [audited] = [
            e for e in service.runtime.store.audit(user_id=person["id"]) if e.action == "create_remote_mailbox"
        ]
        assert audited.outcome == "changed"
        assert "msExchVersion not written: the directory's schema has no such attribute" in audited.message
    finally:
        service.worker.close()
        service.runtime.close()
        ldap.unbind()


@pytest.fixture(scope="module")
def exchange_dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DCInfo]:
    """A DC of this module's own whose schema also has msExchVersion (Large Integer, as its values need)."""
    if not samba_available():
        pytest.skip("samba is not installed (make test installs it)")
    controller = SambaDC(
        tmp_path_factory.mktemp("samba-dc-exchange"), host=free_loopback_address(exclude=["127.0.0.1"])
    )
    controller.ensure_provisioned()
    controller.start()
    try:
        info = controller.info
        conn = admin_connection(info)
        conn.check_names = False  # ldap3 refuses to modify the rootDSE ('') otherwise
        schema = f"CN=Schema,CN=Configuration,{info.base_dn}"
        # A test-only OID (a private-enterprise arc): the service finds the attribute by its lDAPDisplayName.
        conn.add(
            f"CN=ms-Exch-Version,{schema}",
            ["top", "attributeSchema"],
            {
                "lDAPDisplayName": "msExchVersion",
                "attributeID": "1.3.6.1.4.1.32473.1.15.1",
                "attributeSyntax": "2.5.5.16",
                "oMSyntax": "65",
                "isSingleValued": "TRUE",
            },
        )
        conn.modify("", {"schemaUpdateNow": [(ldap3.MODIFY_ADD, ["1"])]})
        conn.modify(f"CN=User,{schema}", {"mayContain": [(ldap3.MODIFY_ADD, ["msExchVersion"])]})
        conn.modify("", {"schemaUpdateNow": [(ldap3.MODIFY_ADD, ["1"])]})
        conn.unbind()
        yield info
    finally:
        controller.stop()


def _user(ldap: Any, info: DCInfo, name: str, **attributes: str) -> str:
    dn = f"CN={name},CN=Users,{info.base_dn}"
    with contextlib.suppress(ldap3.core.exceptions.LDAPEntryAlreadyExistsResult):
        ldap.add(dn, ["top", "person", "organizationalPerson", "user"], {"sAMAccountName": name, **attributes})
    return dn


def test_with_msexchversion_in_the_schema_it_is_written_once_and_an_existing_value_is_kept(
    exchange_dc: DCInfo, tmp_path: Path
) -> None:
    ldap = admin_connection(exchange_dc)
    target = ADTarget("default", dc_settings(exchange_dc, tmp_path).ad_connection("default"))
    try:
        dn = _user(ldap, exchange_dc, "hybrid.one", mail="hybrid.one@contoso.example")
        found = target.read(dn)
        assert found is not None
        operations = target.operations
        result, _ = target.create_remote_mailbox(PARAMS, found)
        assert result.outcome == "changed" and "msExchVersion" not in result.message
        assert {c.attribute for c in result.changes} >= {"msExchVersion", "msExchRecipientTypeDetails"}
        ldap.search(dn, "(objectClass=user)", ldap3.BASE, attributes=["msExchVersion"])
        assert [str(v) for v in ldap.response[0]["raw_attributes"]["msExchVersion"]] == [f"b'{EXCHANGE_2013_VERSION}'"]
        # The schema was read once: a second mailbox costs no schema read (search + modify only).
        other = _user(ldap, exchange_dc, "hybrid.two", mail="hybrid.two@contoso.example")
        second = target.read(other)
        assert second is not None
        before = target.operations
        target.create_remote_mailbox(PARAMS, second)
        assert target.operations - before == 1 and before - operations > 1

        # An existing remote mailbox keeps the version Exchange gave it.
        kept = _user(
            ldap, exchange_dc, "hybrid.kept", mail="hybrid.kept@contoso.example",
            msExchRecipientTypeDetails="2147483648", msExchVersion="44220983382016",
        )  # fmt: skip
        existing = target.read(kept)
        assert existing is not None
        target.create_remote_mailbox(PARAMS, existing)
        ldap.search(kept, "(objectClass=user)", ldap3.BASE, attributes=["msExchVersion"])
        assert ldap.response[0]["raw_attributes"]["msExchVersion"] == [b"44220983382016"]
    finally:
        target.close()
        ldap.unbind()
