"""What the AD target knows without a connection: accounts and anchors as read, DNs compared, passwords made,
and the constants of AD and hybrid Exchange it writes.
"""

from __future__ import annotations

import secrets
import string
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ldap3.core import exceptions as ldap_errors  # type: ignore[import-untyped]
from ldap3.utils.dn import to_dn  # type: ignore[import-untyped]

UF_ACCOUNTDISABLE = 0x0002
UF_NORMAL_ACCOUNT = 0x0200
TREE_DELETE_CONTROL = ("1.2.840.113556.1.4.805", True, None)
# Result codes that mean "the DC is busy or going away": try again later.
TRANSIENT_RESULTS = {3, 11, 51, 52, 80, 81}
PASSWORD_POLICY_MARK = "0000052D"  # noqa: S105 - an AD error code, not a password
SECRET_ATTRIBUTES = {"unicodepwd", "userpassword"}
# How long an OU or group resolved by the directory (objectGUID, adminCount, SID) is remembered.
RESOLVE_TTL_SECONDS = 300.0

T = TypeVar("T")

# What Enable-RemoteMailbox writes (hybrid Exchange): RemoteUserMailbox, its display type, ProvisionMailbox.
REMOTE_USER_MAILBOX = "2147483648"
REMOTE_USER_MAILBOX_DISPLAY = "-2147483642"
REMOTE_PROVISION_MAILBOX = "1"
# msExchRecipientTypeDetails of mailboxes in an on-premises database (user, linked, shared, room, equipment)
# and of remote (Exchange Online) mailboxes (user, room, equipment, shared).
ON_PREMISES_MAILBOXES = {"1", "2", "4", "16", "32"}
REMOTE_MAILBOXES = {"2147483648", "8589934592", "17179869184", "34359738368"}
REMOTE_MAILBOX_ATTRIBUTES = (
    "mailNickname",
    "targetAddress",
    "proxyAddresses",
    "msExchRecipientTypeDetails",
    "msExchRecipientDisplayType",
    "msExchRemoteRecipientType",
)
# msExchVersion of recipients Exchange 2013 and later make (2016 and 2019 keep it; "0.20 (15.0.0.0)"), which
# Enable-RemoteMailbox writes and a recipient without one lacks in the Exchange admin tools. No Microsoft page
# found states it; sources: LdapTools' ExchangeObjectVersion ('2013' and '2016' => 88218628259840), the Posh365
# module's Set-msExchVersion (Exchange2013 = 88218628259840, PowerShell Gallery), and the mailboxes of an
# Exchange 2019 forest in a published LDAP dump (msExchVersion: 88218628259840).
EXCHANGE_2013_VERSION = "88218628259840"


def normalize_dn(dn: str) -> str:
    """A DN in a form fit for comparison: components stripped and lower-cased, escapes kept."""
    try:
        return ",".join(part.strip().lower() for part in to_dn(dn))
    except ldap_errors.LDAPInvalidDnError:
        return dn.strip().lower()


def parent_dn(dn: str) -> str:
    return ",".join(to_dn(dn)[1:])


def is_under(dn: str, container: str) -> bool:
    """True when ``dn`` is ``container`` or lies below it."""
    child, parent = normalize_dn(dn), normalize_dn(container)
    return child == parent or child.endswith("," + parent)


def generate_password(length: int) -> str:
    """A random password that meets AD complexity: upper, lower, digit and symbol, no ambiguous layout."""
    symbols = "!#%+-.:=?@^_~"
    alphabet = string.ascii_letters + string.digits + symbols
    while True:
        candidate = "".join(secrets.choice(alphabet) for _ in range(length))
        if (
            any(c.islower() for c in candidate)
            and any(c.isupper() for c in candidate)
            and any(c.isdigit() for c in candidate)
            and any(c in symbols for c in candidate)
        ):
            return candidate


def op(method: str, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
    """An LDAP operation on a connection, bound to its arguments now (safe inside loops)."""
    return lambda conn: getattr(conn, method)(*args, **kwargs)


def encode_password(password: str) -> bytes:
    return f'"{password}"'.encode("utf-16-le")


_ATTID_UNICODE_PWD = 0x9005A
_META_ENTRY = struct.Struct("<II8s16sqq")  # attid, version, change time, invocation id, originating/local USN


def password_version(blob: bytes) -> str | None:
    """``unicodePwd``'s version and originating USN from a replPropertyMetaData blob (MS-DRSR 5.169)."""
    if len(blob) < 16:
        return None
    count = struct.unpack_from("<I", blob, 8)[0]
    for index in range(count):
        offset = 16 + index * _META_ENTRY.size
        if offset + _META_ENTRY.size > len(blob):
            return None
        attid, version, _, _, originating_usn, _ = _META_ENTRY.unpack_from(blob, offset)
        if attid == _ATTID_UNICODE_PWD:
            return f"unicodePwd v{version} usn {originating_usn}"
    return "unicodePwd never set"


@dataclass
class Account:
    """What the worker knows of one AD account during a work item (read once, kept current by each step)."""

    dn: str
    attributes: dict[str, list[Any]]
    member_of: set[str] = field(default_factory=set)  # normalised DNs
    # memberOf groups the directory reported privileged (adminCount=1, privileged RID), as memberOf writes them.
    privileged_groups: set[str] = field(default_factory=set)

    def first(self, name: str) -> Any:
        values = self.attributes.get(name.lower()) or []
        return values[0] if values else None

    @property
    def uac(self) -> int:
        value = self.first("userAccountControl")
        return int(value) if value is not None else UF_NORMAL_ACCOUNT


@dataclass(frozen=True)
class Resolved:
    """An OU or group as the directory resolved it: its GUID and its DN as the directory writes it."""

    guid: str
    dn: str
    admin_count: str | None
    sid: str | None


@dataclass
class Anchor:
    """How a person's account is found: ``attribute`` holds ``value`` (``legacy``: an older, bare form of it
    that is still found, but that does not prove the service made or linked the account)."""

    attribute: str
    value: str
    legacy: str | None = None

    @classmethod
    def for_user(cls, attribute: str, prefix: str, user_id: int) -> Anchor:
        return cls(attribute, f"{prefix}{user_id}", str(user_id) if prefix else None)

    def is_legacy(self, account: Account) -> bool:
        """Whether ``account`` carries only the legacy form of the anchor."""
        if self.legacy is None:
            return False
        values = {str(v).lower() for v in account.attributes.get(self.attribute.lower(), [])}
        return self.value.lower() not in values and self.legacy.lower() in values
