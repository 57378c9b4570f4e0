"""A folder's security descriptor as the file server serves it, read with Samba's own ``smbcacls``.

The tests check the ACLs the worker writes with this, not with ``lifecycle/targets/smb_acl.py`` (the code under
test, on smbprotocol): a client of its own (Samba's, from the ``smbclient`` package that ``make setup``
installs) over SMB, with its own parser of the descriptor. ``smbcacls`` has no port option (it connects to
445, then 139), so the test file server listens on 445 of its own loopback address.

The numbers are MS-DTYP's: ACE types (2.4.4.1: ACCESS_ALLOWED_ACE_TYPE 0, ACCESS_DENIED_ACE_TYPE 1), ACE flags
(2.4.4.1: OBJECT_INHERIT_ACE 0x1, CONTAINER_INHERIT_ACE 0x2, INHERITED_ACE 0x10) and file access masks
(MS-SMB2 2.2.13.1.1: FILE_ALL_ACCESS 0x001F01FF).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest

from lifecycle.local.samba_files import FileServerInfo

SMBCACLS_PORT = 445
ALLOWED, DENIED = 0, 1
OBJECT_INHERIT, CONTAINER_INHERIT, INHERITED = 0x1, 0x2, 0x10
FULL_CONTROL = 0x001F01FF


@dataclass(frozen=True)
class Ace:
    sid: str
    kind: int
    flags: int
    mask: int


@dataclass(frozen=True)
class SecurityDescriptor:
    owner: str
    group: str
    aces: tuple[Ace, ...]

    def explicit_allowed_sids(self) -> set[str]:
        """The SIDs of the allow ACEs set on the folder itself (not inherited from its parent)."""
        return {a.sid for a in self.aces if a.kind == ALLOWED and not a.flags & INHERITED}


def parse(text: str) -> SecurityDescriptor:
    """``smbcacls --numeric`` output: ``OWNER:sid``, ``GROUP:sid`` and ``ACL:sid:type/flags/mask`` lines."""
    owner = group = ""
    aces: list[Ace] = []
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "OWNER":
            owner = value
        elif key == "GROUP":
            group = value
        elif key == "ACL":
            sid, _, rest = value.rpartition(":")
            kind, flags, mask = (int(part, 0) for part in rest.split("/"))
            aces.append(Ace(sid, kind, flags, mask))
    assert owner, f"smbcacls printed no owner:\n{text}"
    return SecurityDescriptor(owner, group, tuple(aces))


def read_acl(server: FileServerInfo, share: str, path: str) -> SecurityDescriptor:
    """The security descriptor of ``path`` (relative to ``share``), as ``smbcacls`` reads it over SMB."""
    smbcacls = shutil.which("smbcacls")
    if smbcacls is None:
        pytest.fail("smbcacls is not installed (make setup installs the smbclient package)")
    assert server.port == SMBCACLS_PORT, "smbcacls connects to port 445 only: start the file server there"
    # The password goes in PASSWD (read by Samba's client), never on a command line others can list.
    env = {**os.environ, "PASSWD": server.password}
    result = subprocess.run(
        [smbcacls, f"//{server.host}/{share}", path, "--user", server.user, "--numeric"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"smbcacls failed: {result.stdout}{result.stderr}"
    return parse(result.stdout)
