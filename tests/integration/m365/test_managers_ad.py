"""The manager from Halo in Active Directory (``manager``, a DN) on a real Samba DC (issue 17, managers).

The mapping is the hybrid test mapping with a ``[manager]`` section: the manager is found by its Halo id
(the anchor) or its mail, set when the account is created (so the initial password reaches the manager),
and changed by ``set_manager`` when Halo names another one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ldap3  # type: ignore[import-untyped]
import pytest

from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import parse_mapping
from tests.conftest import EVENTS
from tests.integration.conftest import admin_connection, dc_settings, delivery, new_user
from tests.integration.m365.conftest import GROUP_A, graph_overrides, make_service
from tests.integration.m365.test_m365_hybrid import account, sync_to_cloud
from tests.standins.graph import GraphStandIn

pytestmark = pytest.mark.integration


def managed_mapping() -> Any:
    text = (EVENTS / "mapping-m365.toml").read_text(encoding="utf-8")
    text = text.replace('mover = ["modify_properties",', 'mover = ["set_manager", "modify_properties",')
    text += '\n[manager]\nmanager_id = "{cf.manager_id}"\nmanager_mail = "{manager_email}"\n'
    return parse_mapping(text, "mapping-m365 with [manager]")


def entry(ldap: Any, info: DCInfo, user_id: int) -> dict[str, Any]:
    ldap.search(info.base_dn, f"(employeeID={user_id})", ldap3.SUBTREE, attributes=["manager", "mail"])
    [found] = [e for e in ldap.response if e.get("type") == "searchResEntry"]
    return {"dn": found["dn"], **{k.lower(): v for k, v in found["attributes"].items()}}


def test_a_joiners_manager_is_set_at_creation_the_password_goes_to_them_and_a_mover_changes_it_by_halo_id(
    directory: DCInfo, graph: GraphStandIn, tmp_path: Path
) -> None:
    sender = graph.add_user("it-accounts@contoso.test")
    graph.add_group("All staff", id=GROUP_A)
    overrides = graph_overrides(
        graph,
        password_delivery="graph_mail",
        password_mail_sender=sender.upn,
        password_mail_fallback="service-desk@contoso.test",
    )
    service = make_service(dc_settings(directory, tmp_path, **overrides), managed_mapping())
    ldap = admin_connection(directory)
    # A manager whose DN needs escaping (a comma and a plus in its CN): the DN written is the directory's.
    boss = new_user("Bo, Jr.", "Boss+One")
    other = new_user("Ola", "Other")
    joiner = new_user("Jo", "Iner", manager_email="bojr.bossone@example.test")
    try:
        for count, person in enumerate((boss, other), start=1):
            service.accept(delivery("created", person))
            service.settle(until=lambda n=count: len(graph.sent_mail) >= n)  # type: ignore[misc]
        graph.sent_mail.clear()
        boss_entry, other_entry = entry(ldap, directory, boss["id"]), entry(ldap, directory, other["id"])
        assert boss_entry["mail"] == ["bojr.bossone@example.test"], boss_entry

        service.accept(delivery("created", joiner))
        service.settle(until=lambda: bool(graph.sent_mail))
        assert entry(ldap, directory, joiner["id"])["manager"] == [boss_entry["dn"]]
        # The initial password reached the manager (not the fallback address).
        [mail] = graph.sent_mail
        assert mail["message"]["toRecipients"] == [{"emailAddress": {"address": "bojr.bossone@example.test"}}]

        # Directory sync makes the cloud user, so the joiner's Graph steps finish and its mover can run.
        sync_to_cloud(graph, account(ldap, directory, joiner["id"]))
        moved = {**joiner, "customfields": [{"name": "manager_id", "value": str(other["id"])}]}
        service.accept(delivery("updated", moved))
        service.settle(until=lambda: entry(ldap, directory, joiner["id"]).get("manager") == [other_entry["dn"]])
        audit = [e for e in service.runtime.store.audit(user_id=joiner["id"]) if e.action == "set_manager"]
        assert audit and audit[-1].outcome == "changed"
    finally:
        service.worker.close()
        service.runtime.close()
        ldap.unbind()
