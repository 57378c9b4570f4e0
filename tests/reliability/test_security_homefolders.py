"""Issue 14, home folders, against the real Samba DC and a real Samba file server: a joiner who reuses a
predecessor's name does not get the predecessor's folder.

Fails on the code before: ``create_home_folder`` found the existing folder and added the new person's
full-control ACE to it, handing over every file the predecessor left.
"""

from __future__ import annotations

import pytest
from ldap3.protocol.formatters.formatters import format_sid  # type: ignore[import-untyped]

from lifecycle.local.samba_files import FileServerInfo
from lifecycle.mapping.schema import Lifecycles
from tests.integration import test_homefolders_smb as smb
from tests.integration.conftest import World, delivery, new_user
from tests.integration.smb_acls import read_acl
from tests.integration.test_homefolders_smb import populate, tree_manifest
from tests.reliability.conftest import record_figures

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# The home-folder tests' fixtures (a Samba file server beside the DC), registered again for this module.
file_server = smb.file_server
settings_values = smb.settings_values
files_world = smb.files_world


def test_a_joiner_reusing_a_predecessors_name_does_not_get_the_old_folder(
    files_world: World, file_server: FileServerInfo
) -> None:
    predecessor = new_user("Pat", "Reuse")
    files_world.accept(delivery("created", predecessor))
    assert [r.outcome for r in files_world.drain()] == ["completed"]
    old = files_world.account(predecessor["id"])
    assert old is not None
    sam, old_sid = old["sAMAccountName"], format_sid(old["objectSid"])
    folder = file_server.shares["staff"] / sam
    left_behind = populate(folder)
    # The predecessor's account is deleted (after leaving); the folder stays, as folders do.
    files_world.ldap.delete(old["dn"])

    successor = new_user("Pat", "Reuse")
    files_world.accept(delivery("created", successor))
    assert [r.outcome for r in files_world.drain()] == ["refused"]
    new = files_world.account(successor["id"])
    assert new is not None and new["sAMAccountName"] == sam  # the name is free again, and reused
    new_sid = format_sid(new["objectSid"])

    # Read back with Samba's smbcacls, not with the ACL code under test.
    acl = read_acl(file_server, "staff", sam)
    owner, explicit = acl.owner, acl.explicit_allowed_sids()
    assert new_sid not in explicit and owner != new_sid  # no access to the predecessor's files
    assert old_sid in explicit
    assert tree_manifest(folder) == left_behind
    assert "homeDirectory" not in new or not new["homeDirectory"]
    refused = [e for e in files_world.audit(successor["id"]) if e.outcome == "refused"]
    assert [e.action for e in refused] == ["create_home_folder"]
    assert "neither its owner nor an explicit ACE" in refused[0].message
    files_world.ldap.delete(new["dn"])
    record_figures("security_reused_home_folder", refused=1, files_kept=len(left_behind))


def test_a_surname_holding_a_placeholder_names_a_folder_literally_over_smb(
    files_world: World, file_server: FileServerInfo
) -> None:
    """Second-order injection: ``{mail}`` in a surname stays text in the path the worker renders again."""
    mapping = files_world.runtime.mapping
    place = f"\\\\{file_server.host}\\staff\\{{surname}}-{{{{samaccountname}}}}"
    lifecycles = mapping.lifecycles.model_dump()
    lifecycles["joiner"] = [{"action": "create_user"}, {"action": "create_home_folder", "path": place}]
    files_world.runtime.mapping = mapping.model_copy(  # type: ignore[misc]
        update={"lifecycles": Lifecycles.model_validate(lifecycles)}
    )
    person = new_user("Brace", "{mail}")
    files_world.accept(delivery("created", person))
    assert [r.outcome for r in files_world.drain()] == ["completed"]
    account = files_world.account(person["id"])
    assert account is not None
    names = sorted(p.name for p in file_server.shares["staff"].iterdir())
    assert f"{{mail}}-{account['sAMAccountName']}" in names
    assert not any(str(account.get("mail", "@")) in n for n in names)
