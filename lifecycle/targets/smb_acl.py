"""Security descriptors of folders on SMB shares (MS-DTYP 2.4.6), through smbprotocol: who owns a folder,
which SIDs its explicit ACEs allow, and adding a person's inheritable allow ACE.

smbprotocol is imported inside each function: nothing loads it unless an SMB root is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Access masks of the ACE a joiner's folder gets (MS-DTYP): full control, or modify (no ACL/owner changes).
ACCESS_MASKS = {"full_control": 0x001F01FF, "modify": 0x001301BF}
_ACE_INHERIT = 0x01 | 0x02  # object and container inherit: files and subfolders get the same access
_ACE_INHERITED = 0x10
OWNER_SECURITY_INFORMATION = 0x1
DACL_SECURITY_INFORMATION = 0x4


def _query_descriptor(path: str, information: int, access: int, kwargs: Mapping[str, Any]) -> Any:
    """The folder's security descriptor (the parts ``information`` asks for), as an SMB2CreateSDBuffer."""
    from smbclient._io import SMBDirectoryIO, SMBFileTransaction  # type: ignore[import-untyped]
    from smbprotocol.open import InfoType, SMB2QueryInfoRequest, SMB2QueryInfoResponse
    from smbprotocol.security_descriptor import SMB2CreateSDBuffer

    raw = SMBDirectoryIO(path, mode="r", share_access="rwd", desired_access=access, **kwargs)
    with SMBFileTransaction(raw) as transaction:
        query = SMB2QueryInfoRequest()
        query["info_type"] = InfoType.SMB2_0_INFO_SECURITY
        query["file_info_class"] = 0
        query["additional_information"] = information
        query["output_buffer_length"] = 65535
        query["file_id"] = raw.fd.file_id

        def receive_query(request: Any) -> bytes:
            response = raw.fd.connection.receive(request)
            parsed = SMB2QueryInfoResponse()
            parsed.unpack(response["data"].get_value())
            data: bytes = parsed["buffer"].get_value()
            return data

        transaction += (query, receive_query)  # noqa: PLW2901 - smbclient queues requests with +=
    descriptor = SMB2CreateSDBuffer()
    descriptor.unpack(transaction.results[0])
    return descriptor


def owner_and_explicit_sids(path: str, kwargs: Mapping[str, Any]) -> tuple[str | None, set[str]]:
    """(the folder's owner SID, the SIDs its explicit, non-inherited allow ACEs name)."""
    from smbprotocol.open import FilePipePrinterAccessMask
    from smbprotocol.security_descriptor import AccessAllowedAce

    information = OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION
    descriptor = _query_descriptor(path, information, FilePipePrinterAccessMask.READ_CONTROL, kwargs)
    owner = descriptor.get_owner()
    dacl = descriptor.get_dacl()
    explicit: set[str] = set()
    for ace in list(dacl["aces"].get_value()) if dacl is not None else []:
        if isinstance(ace, AccessAllowedAce) and not _ace_flags(ace) & _ACE_INHERITED:
            explicit.add(str(ace["sid"]))
    return (str(owner) if owner is not None else None), explicit


def grant_sid(path: str, sid: str, mask: int, kwargs: Mapping[str, Any]) -> str | None:
    """Add an inheritable allow ACE for ``sid`` to the folder's DACL unless one with ``mask`` is there."""
    from smbclient._io import SMBDirectoryIO, SMBFileTransaction  # type: ignore[import-untyped]
    from smbprotocol.open import FilePipePrinterAccessMask, InfoType, SMB2SetInfoRequest, SMB2SetInfoResponse
    from smbprotocol.security_descriptor import (
        AccessAllowedAce,
        AceType,
        AclPacket,
        SDControl,
        SIDPacket,
        SMB2CreateSDBuffer,
    )

    access = FilePipePrinterAccessMask.READ_CONTROL | FilePipePrinterAccessMask.WRITE_DAC
    current = _query_descriptor(path, DACL_SECURITY_INFORMATION, access, kwargs)
    dacl = current.get_dacl()
    if dacl is None:
        return None  # no DACL: everyone already has full access; adding one ACE would lock others out
    aces = list(dacl["aces"].get_value())
    for ace in aces:
        if (
            isinstance(ace, AccessAllowedAce)
            and str(ace["sid"]) == sid
            and ace["mask"].get_value() & mask == mask
            and ace["ace_flags"].get_value() & _ACE_INHERIT == _ACE_INHERIT
        ):
            return None
    principal = SIDPacket()
    principal.from_string(sid)
    new_ace = AccessAllowedAce()
    new_ace["mask"] = mask
    new_ace["sid"] = principal
    new_ace["ace_flags"] = _ACE_INHERIT
    # Canonical order: explicit deny ACEs first, then explicit allows, then inherited ones.
    position = 0
    for index, ace in enumerate(aces):
        explicit = not (_ace_flags(ace) & _ACE_INHERITED)
        if explicit and _ace_type(ace) == AceType.ACCESS_DENIED_ACE_TYPE:
            position = index + 1
    aces.insert(position, new_ace)
    acl = AclPacket()  # a fresh packet: its size and count are computed from the ACEs
    acl["aces"] = aces
    descriptor = SMB2CreateSDBuffer()
    descriptor["control"].set_flag(SDControl.SELF_RELATIVE)
    descriptor.set_dacl(acl)
    raw = SMBDirectoryIO(path, mode="r", share_access="rwd", desired_access=access, **kwargs)
    with SMBFileTransaction(raw) as transaction:
        request = SMB2SetInfoRequest()
        request["info_type"] = InfoType.SMB2_0_INFO_SECURITY
        request["file_info_class"] = 0
        request["additional_information"] = DACL_SECURITY_INFORMATION
        request["file_id"] = raw.fd.file_id
        request["buffer"] = descriptor

        def receive_set(request: Any) -> Any:
            response = raw.fd.connection.receive(request)
            parsed = SMB2SetInfoResponse()
            parsed.unpack(response["data"].get_value())
            return parsed

        transaction += (request, receive_set)  # noqa: PLW2901 - smbclient queues requests with +=
    return f"allow {sid} {'full control' if mask == ACCESS_MASKS['full_control'] else 'modify'} (inherited below)"


def _ace_flags(ace: Any) -> int:
    if isinstance(ace, bytes):
        return ace[1]
    value: int = ace["ace_flags"].get_value()
    return value


def _ace_type(ace: Any) -> int:
    if isinstance(ace, bytes):
        return ace[0]
    value: int = ace["ace_type"].get_value()
    return value
