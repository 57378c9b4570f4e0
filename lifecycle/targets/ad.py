"""Active Directory through ldap3: every action is an ensure that reads the account and changes what differs.

Security: only LDAPS or StartTLS with the CA verified (plain LDAP is refused unless a test explicitly allows
it); every value placed in a filter is escaped with ``escape_filter_chars`` and every RDN with ``escape_rdn``;
passwords are generated here, written once, and never logged, returned or stored.

An ``ADTarget`` holds one connection and is not thread-safe: the worker keeps one per thread.
"""

from __future__ import annotations

import math
import secrets
import ssl
import string
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

import ldap3  # type: ignore[import-untyped]
from ldap3.core import exceptions as ldap_errors  # type: ignore[import-untyped]
from ldap3.protocol.formatters.formatters import format_sid  # type: ignore[import-untyped]
from ldap3.utils.conv import escape_filter_chars  # type: ignore[import-untyped]
from ldap3.utils.dn import escape_rdn, to_dn  # type: ignore[import-untyped]

from lifecycle import dn as dns
from lifecycle.errors import (
    AdoptionNeeded,
    ConfigurationError,
    NamingExhausted,
    Permanent,
    PolicyRefused,
    Retryable,
)
from lifecycle.mapping.naming import sanitize_address, with_suffix
from lifecycle.mapping.planner import SAM_PLACEHOLDER
from lifecycle.photos import AD_PHOTO_MAX_BYTES, PhotoLoader, to_jpeg
from lifecycle.protection import Policy
from lifecycle.settings import ADConnection
from lifecycle.state import Change
from lifecycle.targets import StepResult
from lifecycle.work import Step

UF_ACCOUNTDISABLE = 0x0002
UF_NORMAL_ACCOUNT = 0x0200
TREE_DELETE_CONTROL = ("1.2.840.113556.1.4.805", True, None)
# Result codes that mean "the DC is busy or going away": try again later.
_TRANSIENT_RESULTS = {3, 11, 51, 52, 80, 81}
_PASSWORD_POLICY_MARK = "0000052D"  # noqa: S105 - an AD error code, not a password
_SECRET_ATTRIBUTES = {"unicodepwd", "userpassword"}
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


def _op(method: str, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
    """An LDAP operation on a connection, bound to its arguments now (safe inside loops)."""
    return lambda conn: getattr(conn, method)(*args, **kwargs)


def _encode_password(password: str) -> bytes:
    return f'"{password}"'.encode("utf-16-le")


_ATTID_UNICODE_PWD = 0x9005A
_META_ENTRY = struct.Struct("<II8s16sqq")  # attid, version, change time, invocation id, originating/local USN


def _password_version(blob: bytes) -> str | None:
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


class ADTarget:
    """Ensure-operations on one AD domain."""

    def __init__(
        self,
        name: str,
        connection: ADConnection,
        *,
        protected_groups: Sequence[str] = (),
        protected_ous: Sequence[str] = (),
        managed_containers: Sequence[str] = (),
        policy: Policy | None = None,
        dry_run: bool = False,
        password_sink: Callable[[str, str], None] | None = None,
        photo_loader: Callable[[dict[str, Any]], bytes | None] | None = None,
    ) -> None:
        self.name = name
        self.settings = connection
        self.base_dn = connection.base_dn
        self.policy = policy or Policy(tuple(protected_groups), tuple(protected_ous), tuple(managed_containers))
        # Where a person's account may be found or adopted; the whole domain when none is configured.
        self.managed_containers = list(self.policy.managed_containers) or [connection.base_dn]
        # OUs and groups as the directory resolved them (objectGUID), per DN as written; None: no such entry.
        self._resolved: dict[str, Resolved | None] = {}
        self._resolved_since = time.monotonic()
        self.dry_run = dry_run
        # Where a generated password goes (a delivery channel); by default nowhere: it is never kept.
        self._password_sink = password_sink
        # Reads a photo step's source (URL or base64); by default base64 only, within default limits.
        self._photo_loader = photo_loader or PhotoLoader()
        self._conn: Any = None
        # Attributes the directory's schema was asked about (lDAPDisplayName, lower case) and the answer.
        self._schema: dict[str, bool] = {}
        self.operations = 0  # LDAP operations sent, for benchmarks
        parsed = urlparse(connection.url)
        self._host = parsed.hostname or "127.0.0.1"
        self._use_ssl = parsed.scheme == "ldaps"
        self._port = parsed.port or (636 if self._use_ssl else 389)
        if not self._use_ssl and not connection.start_tls and not connection.allow_plaintext:
            raise ConfigurationError(
                f"AD connection {name!r}: {connection.url} is plain LDAP; use ldaps:// or set start_tls "
                "(plain LDAP would send the bind password and user data in clear)"
            )

    # Connection --------------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        tls = None
        if self._use_ssl or self.settings.start_tls:
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED,
                version=ssl.PROTOCOL_TLS_CLIENT,
                ca_certs_file=str(self.settings.ca_file) if self.settings.ca_file else None,
                valid_names=[self.settings.tls_server_name] if self.settings.tls_server_name else None,
            )
        server = ldap3.Server(
            self._host,
            port=self._port,
            use_ssl=self._use_ssl,
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=self.settings.timeout_seconds,
        )
        auto_bind = ldap3.AUTO_BIND_TLS_BEFORE_BIND if self.settings.start_tls else ldap3.AUTO_BIND_NO_TLS
        self._conn = ldap3.Connection(
            server,
            user=self.settings.user,
            password=self.settings.password.get_secret_value(),
            authentication=ldap3.SIMPLE,
            auto_bind=auto_bind,
            # ldap3 packs this into a socket option and accepts only whole seconds.
            receive_timeout=max(1, math.ceil(self.settings.timeout_seconds)),
            raise_exceptions=True,
            return_empty_attributes=False,
        )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.unbind()
            except ldap_errors.LDAPException:
                pass
            self._conn = None

    def _call(self, operation: Callable[[Any], T]) -> T:
        """Run one LDAP operation, turning ldap3's errors into Retryable or Permanent."""
        try:
            conn = self._connect()
            self.operations += 1
            return operation(conn)
        except ldap_errors.LDAPOperationResult as exc:
            code = exc.result
            message = exc.message or exc.description or ""
            if code in _TRANSIENT_RESULTS:
                raise Retryable(f"AD {self.name}: domain controller busy ({exc.description}): {message}") from None
            if _PASSWORD_POLICY_MARK in message.upper():
                raise Permanent(f"AD {self.name}: the password does not meet the domain's policy") from None
            raise
        except (
            ldap_errors.LDAPBindError,
            ldap_errors.LDAPCommunicationError,
            ldap_errors.LDAPSocketOpenError,
            ldap_errors.LDAPSessionTerminatedByServerError,
            ldap_errors.LDAPResponseTimeoutError,
            ldap_errors.LDAPSocketReceiveError,
            ldap_errors.LDAPSocketSendError,
            ldap_errors.LDAPStartTLSError,
            ssl.SSLError,
            OSError,
        ) as exc:
            # Unreachable, restarting, or refusing our bind: the work waits and retries; nothing is lost.
            self.close()
            raise Retryable(f"AD {self.name}: cannot reach or bind to {self._host}:{self._port}: {exc}") from None

    # Reading -----------------------------------------------------------------------------------------------
    def _search(self, search_filter: str, attributes: list[str], *, base: str | None = None) -> list[Any]:
        def search(conn: Any) -> list[Any]:
            try:
                conn.search(base or self.base_dn, search_filter, ldap3.SUBTREE, attributes=attributes)
            except ldap_errors.LDAPNoSuchObjectResult:
                return []  # a managed container that does not exist (yet) holds nobody
            return [e for e in conn.response if e.get("type") == "searchResEntry"]

        return self._call(search)

    def schema_has(self, name: str) -> bool:
        """Whether the directory's schema defines the attribute ``name`` (read once per target)."""
        key = name.lower()
        if key not in self._schema:

            def read(conn: Any) -> bool:
                conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["schemaNamingContext"])
                roots = [e for e in conn.response if e.get("type") == "searchResEntry"]
                context = roots[0]["attributes"].get("schemaNamingContext") if roots else None
                base = str(context[0] if isinstance(context, list) else context or "")
                if not base:
                    return False
                found = f"(&(objectClass=attributeSchema)(lDAPDisplayName={escape_filter_chars(name)}))"
                conn.search(base, found, ldap3.LEVEL, attributes=["lDAPDisplayName"])
                return any(e.get("type") == "searchResEntry" for e in conn.response)

            self._schema[key] = self._call(read)
        return self._schema[key]

    @staticmethod
    def _anchor_filter(anchor: Anchor) -> str:
        value = f"({anchor.attribute}={escape_filter_chars(anchor.value)})"
        if anchor.legacy is not None:
            value = f"(|{value}({anchor.attribute}={escape_filter_chars(anchor.legacy)}))"
        return f"(&(objectClass=user)(objectCategory=person){value})"

    def is_managed(self, dn: str) -> bool:
        """Whether ``dn`` lies in a managed container (the only places an account is found or adopted)."""
        return any(is_under(dn, container) for container in self.managed_containers)

    def _only(self, anchor: Anchor, accounts: list[Account]) -> Account | None:
        if len(accounts) > 1:
            dns = ", ".join(a.dn for a in accounts[:3])
            raise Permanent(f"AD {self.name}: {anchor.attribute}={anchor.value} is on several accounts ({dns})")
        return accounts[0] if accounts else None

    def find(self, anchor: Anchor) -> Account | None:
        """The account whose anchor attribute holds the Halo user id; None if there is none.

        Only the managed containers are searched: an account elsewhere carrying the same value (an HR number
        in ``employeeID``, a protected admin) is never taken for the person's.
        """
        accounts: list[Account] = []
        for container in self.managed_containers:
            entries = self._search(self._anchor_filter(anchor), [ldap3.ALL_ATTRIBUTES], base=container)
            accounts += [self._to_account(e) for e in entries if e["dn"] not in {a.dn for a in accounts}]
        return self._only(anchor, accounts)

    def read(self, dn: str) -> Account | None:
        """The account at ``dn`` (all attributes), or None if there is none."""

        def search(conn: Any) -> list[Any]:
            try:
                conn.search(dn, "(objectClass=user)", ldap3.BASE, attributes=[ldap3.ALL_ATTRIBUTES])
            except ldap_errors.LDAPNoSuchObjectResult:
                return []
            return [e for e in conn.response if e.get("type") == "searchResEntry"]

        entries = self._call(search)
        return self._to_account(entries[0]) if entries else None

    @staticmethod
    def _is_anchored(account: Account, anchor: Anchor) -> bool:
        """What ``_anchor_filter`` selects, decided on an entry already read."""
        classes = {str(c).lower() for c in account.attributes.get("objectclass", [])}
        category = str(account.first("objectCategory") or "").lower()
        values = {str(v).lower() for v in account.attributes.get(anchor.attribute.lower(), [])}
        wanted = {anchor.value.lower(), *([anchor.legacy.lower()] if anchor.legacy is not None else [])}
        return "user" in classes and category.startswith("cn=person,") and bool(values & wanted)

    def _find_and_check_names(
        self, anchor: Anchor, pairs: list[tuple[str, str]], correlate: Sequence[tuple[str, str]] = ()
    ) -> tuple[Account | None, set[tuple[str, str]]]:
        """The person's account and which name candidates are taken, in one search instead of three.

        A joiner asks the directory three questions: does the account exist (the anchor), does an account of
        this person exist without it (``correlate``: mail, UPN, login, as the reconcile correlates), and which
        names are free. One LDAP round trip for all is what a DC that serves one request at a time (Samba)
        notices most. Names are checked domain-wide (they must be unique there); an account is found or
        adopted only inside the managed containers. Raises ``PolicyRefused`` when the person's account lies
        outside them or the correlation is ambiguous, and ``AdoptionNeeded`` when an existing account matches
        by a fallback (nothing is created while an operator decides).
        """
        clauses = "".join(self._name_clauses([*pairs, *correlate]))
        search_filter = f"(|{self._anchor_filter(anchor)}{clauses})"
        accounts = [self._to_account(e) for e in self._search(search_filter, [ldap3.ALL_ATTRIBUTES])]
        anchored = [a for a in accounts if self._is_anchored(a, anchor)]
        inside = [a for a in anchored if self.is_managed(a.dn)]
        if inside:
            return self._only(anchor, inside), set()
        if anchored:
            raise PolicyRefused(
                f"AD {self.name}: {anchored[0].dn} carries {anchor.attribute}={anchor.value} but lies outside the "
                "managed containers (safety.managed_containers): not adopted, and no second account is created"
            )
        self._check_correlation(anchor, accounts, correlate)
        return None, self._names_used(accounts, pairs)

    def _check_correlation(self, anchor: Anchor, accounts: list[Account], correlate: Sequence[tuple[str, str]]) -> None:
        """Refuse or propose adoption when an existing account matches the person by a fallback."""
        found: dict[str, tuple[Account, str, str]] = {}
        for account in accounts:
            for attribute, value in correlate:
                if (attribute, value) in self._names_used([account], [(attribute, value)]):
                    found.setdefault(account.dn, (account, attribute, value))
        if not found:
            return
        outside = [dn for dn in found if not self.is_managed(dn)]
        if outside:
            account, attribute, value = found[outside[0]]
            raise PolicyRefused(
                f"AD {self.name}: {account.dn} matches {attribute}={value} but lies outside the managed containers: "
                "adoption refused, and no second account is created"
            )
        if len(found) > 1:
            raise PolicyRefused(
                f"AD {self.name}: several accounts match this person ({', '.join(sorted(found)[:3])}): not "
                "adopted, and no second account is created; fix the directory, then replay"
            )
        account, attribute, value = next(iter(found.values()))
        other = account.first(anchor.attribute)
        if other not in (None, ""):
            raise PolicyRefused(
                f"AD {self.name}: {account.dn} matches {attribute}={value} but carries {anchor.attribute}={other}: "
                "not adopted, and no second account is created"
            )
        self.check_protected(account)
        raise AdoptionNeeded(
            f"AD {self.name}: an existing account, {account.dn}, matches {attribute}={value} but carries no anchor: "
            "nothing is created until an operator links it (`lifecycle link list`, `lifecycle link approve`)",
            dn=account.dn,
            attribute=attribute,
            value=value,
        )

    @staticmethod
    def _to_account(entry: Any) -> Account:
        attributes: dict[str, list[Any]] = {}
        for key, value in entry["raw_attributes"].items():
            decoded = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
            if key.lower() == "objectsid" and value and isinstance(value[0], bytes):
                # The SID as S-1-5-21-..., which is how file-share ACLs (home folders) name the person.
                decoded = [format_sid(value[0])]
            if key.lower() == "objectguid" and value and isinstance(value[0], bytes) and len(value[0]) == 16:
                decoded = [str(uuid.UUID(bytes_le=value[0]))]  # binary: as text it would be garbled
            attributes[key.lower()] = decoded
        member_of = {normalize_dn(g) for g in attributes.get("memberof", [])}
        return Account(entry["dn"], attributes, member_of)

    def once_only_marker(self, step: Step, account: Account | None) -> str | None:
        """A value that changes when a once-only step takes effect; None when it cannot be read.

        The worker reads it before such a step and again after an interrupted attempt, to tell whether that
        attempt took effect without repeating it. For ``reset_password`` it is the version of ``unicodePwd`` in
        the account's replication metadata: every password write increments it, whatever the clocks say.
        """
        if step.action != "reset_password" or account is None:
            return None

        def search(conn: Any) -> list[Any]:
            conn.search(account.dn, "(objectClass=*)", ldap3.BASE, attributes=["replPropertyMetaData"])
            return [e for e in conn.response if e.get("type") == "searchResEntry"]

        entries = self._call(search)
        blobs = entries[0]["raw_attributes"].get("replPropertyMetaData") if entries else None
        return _password_version(blobs[0]) if blobs else None

    @staticmethod
    def _name_clauses(pairs: Iterable[tuple[str, str]]) -> list[str]:
        clauses = []
        for attribute, value in pairs:
            clauses.append(f"({attribute}={escape_filter_chars(value)})")
            if attribute == "mail":
                clauses.append(f"(proxyAddresses=smtp:{escape_filter_chars(value)})")
        return clauses

    @staticmethod
    def _names_used(accounts: Iterable[Account], pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (attribute, value) pairs ``accounts`` use (mail also as an smtp: proxy address)."""
        used: set[tuple[str, str]] = set()
        for account in accounts:
            for attribute, value in pairs:
                values = [str(v) for v in account.attributes.get(attribute.lower(), [])]
                if attribute == "mail":
                    proxies = account.attributes.get("proxyaddresses", [])
                    values += [str(p)[5:] for p in proxies if str(p).lower().startswith("smtp:")]
                if value.lower() in {v.lower() for v in values}:
                    used.add((attribute, value))
        return used

    def _taken(self, names: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (attribute, value) pairs are already used by any object of the domain."""
        pairs = list(names)
        attributes = ["sAMAccountName", "userPrincipalName", "mail", "proxyAddresses"]
        entries = self._search(f"(|{''.join(self._name_clauses(pairs))})", attributes)
        return self._names_used([self._to_account(e) for e in entries], pairs)

    # Safety ------------------------------------------------------------------------------------------------
    def _resolve(self, dn: str) -> Resolved | None:
        """The entry ``dn`` names, as the directory resolves it (cached per target); None if there is none.

        Protection compares what the directory resolved (objectGUID, its own spelling of the DN), never the
        text a mapping or a Halo field produced: ``OU=\\53ervice Accounts`` and ``2.5.4.11=Service Accounts``
        are the protected OU to the directory, whatever a string comparison says.
        """
        self._expire_resolved()
        if self._resolved.get(dn) is not None:
            return self._resolved[dn]
        try:
            dns.parse(dn)
        except dns.InvalidDN as exc:
            raise PolicyRefused(f"AD {self.name}: {exc}") from None

        def read(conn: Any) -> list[Any]:
            conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["objectGUID", "adminCount", "objectSid"])
            return [e for e in conn.response if e.get("type") == "searchResEntry"]

        try:
            entries = self._call(read)
        except (ldap_errors.LDAPNoSuchObjectResult, ldap_errors.LDAPInvalidDNSyntaxResult):
            entries = []
        except ldap_errors.LDAPInvalidDnError as exc:
            raise PolicyRefused(f"AD {self.name}: {dn!r} is not a DN the service can check: {exc}") from None
        resolved = None
        if entries:
            account = self._to_account(entries[0])
            resolved = Resolved(
                guid=str(account.first("objectGUID")),
                dn=str(entries[0]["dn"]),
                admin_count=account.first("adminCount"),
                sid=account.first("objectSid"),
            )
        if resolved is not None:  # a missing OU may be created before the replay: never cache its absence
            self._resolved[dn] = resolved
        return resolved

    def _expire_resolved(self) -> None:
        """Forget resolutions after a while: an OU or group renamed or re-created is seen as it is now."""
        if time.monotonic() - self._resolved_since > RESOLVE_TTL_SECONDS:
            self._resolved.clear()
            self._resolved_since = time.monotonic()

    def _resolved_all(self, dn_list: Iterable[str]) -> list[Resolved]:
        return [r for r in (self._resolve(d) for d in dn_list) if r is not None]

    @staticmethod
    def _inside(target: Resolved, containers: Iterable[Resolved]) -> Resolved | None:
        for container in containers:
            if container.guid == target.guid or dns.is_under(target.dn, container.dn):
                return container
        return None

    def annotate_protection(self, account: Account) -> Account:
        """Record which of the account's groups the directory reports privileged (adminCount=1, a privileged
        RID); one search for the groups not seen before by this target."""
        self._expire_resolved()
        groups = [str(g) for g in account.attributes.get("memberof", [])]
        unknown = [g for g in groups if g not in self._resolved]
        if unknown:
            clauses = "".join(f"(distinguishedName={escape_filter_chars(g)})" for g in unknown)
            wanted = ["objectGUID", "adminCount", "objectSid"]
            for entry in self._search(f"(&(objectClass=group)(|{clauses}))", wanted):
                found = self._to_account(entry)
                guid, sid = str(found.first("objectGUID")), found.first("objectSid")
                resolved = Resolved(guid, str(entry["dn"]), found.first("adminCount"), sid)
                for group in unknown:
                    if dns.same(group, resolved.dn):
                        self._resolved[group] = resolved
            for group in unknown:
                self._resolved.setdefault(group, None)  # outside the base DN: not looked for again
        privileged = set()
        for group in groups:
            known = self._resolved.get(group)
            if known is not None and self.policy.group_refusal(
                group, admin_count=known.admin_count, sid=known.sid, check_managed=False
            ):
                privileged.add(group)
        account.privileged_groups = privileged
        return account

    def check_protected(self, account: Account) -> None:
        """Refuse any change to a protected account (``lifecycle.protection``: adminCount=1, a privileged
        built-in account or group, a protected group or OU)."""
        self.annotate_protection(account)
        self.policy.check_account(account)
        protected_groups = self._resolved_all(self.policy.protected_groups)
        guids = {r.guid for r in protected_groups}
        for group in account.attributes.get("memberof", []):
            resolved = self._resolved.get(str(group))
            if resolved is not None and resolved.guid in guids:
                raise PolicyRefused(f"{account.dn} is protected: member of the protected group {group}")

    def _check_target_ou(self, ou: str) -> None:
        """Refuse an OU that is, or lies in, a protected OU, or lies outside the managed containers; compared
        as the directory resolved them."""
        reason = self.policy.ou_refusal(ou)
        if reason:
            raise PolicyRefused(f"AD {self.name}: {reason}")
        target = self._resolve(ou)
        if target is None:
            raise Permanent(f"AD {self.name}: the OU {ou} does not exist (create it or fix the mapping)")
        protected = self._inside(target, self._resolved_all(self.policy.protected_ous))
        if protected is not None:
            raise PolicyRefused(
                f"AD {self.name}: {ou} is {target.dn}, in the protected {protected.dn}: "
                "the service puts no account there"
            )
        containers = self._resolved_all(self.policy.managed_containers)
        if self.policy.managed_containers and self._inside(target, containers) is None:
            raise PolicyRefused(f"AD {self.name}: {ou} is {target.dn}, outside the managed containers")

    def _check_groups(self, groups: Iterable[str], *, must_exist: bool = True, check_managed: bool = True) -> None:
        """Refuse a protected, privileged or unmanaged group, compared as the directory resolved it."""
        protected = None
        containers = None
        for group in groups:
            reason = self.policy.group_refusal(group, check_managed=check_managed)
            if reason:
                raise PolicyRefused(f"AD {self.name}: {reason}")
            target = self._resolve(group)
            if target is None:
                if must_exist:
                    raise Permanent(f"AD {self.name}: the group {group} does not exist (create it or fix the mapping)")
                continue
            reason = self.policy.group_refusal(
                target.dn, admin_count=target.admin_count, sid=target.sid, check_managed=False
            )
            if reason:
                raise PolicyRefused(f"AD {self.name}: {group} resolves to a protected group: {reason}")
            if protected is None:
                protected = {r.guid for r in self._resolved_all(self.policy.protected_groups)}
            if target.guid in protected:
                raise PolicyRefused(f"AD {self.name}: {group} is the protected group {target.dn}")
            if check_managed and self.policy.managed_containers:
                if containers is None:
                    containers = self._resolved_all(self.policy.managed_containers)
                if self._inside(target, containers) is None:
                    raise PolicyRefused(f"AD {self.name}: {group} is {target.dn}, outside the managed containers")

    # Actions -----------------------------------------------------------------------------------------------
    def execute(
        self, step: Step, anchor: Anchor, account: Account | None, correlate: Sequence[tuple[str, str]] = ()
    ) -> tuple[StepResult, Account | None]:
        """Run one step; ``account`` is what earlier steps of the same work item know (None: not found yet).

        ``correlate``: (attribute, value) pairs from the Halo user that find an existing account of this
        person without the anchor (a joiner on a directory that had accounts before the service).
        """
        if step.action == "create_user":
            return self.create_user(step.params, anchor, account, correlate)
        if account is None:
            if step.action in ("delete_user", "disable_user", "remove_from_groups"):
                # Nothing to disable or remove: the desired state already holds.
                return StepResult("unchanged", message="no account with this anchor"), None
            raise Permanent(
                f"AD {self.name}: no account has {anchor.attribute}={anchor.value}, so {step.action} has nothing "
                "to change (its joiner may have failed; replay it first)"
            )
        self.check_protected(account)
        if step.action == "reset_password" and anchor.is_legacy(account):
            # A bare id in the anchor attribute may be an HR number that happens to equal a Halo id: a new
            # password mailed out for such an account would hand it to someone else.
            raise AdoptionNeeded(
                f"AD {self.name}: {account.dn} carries the bare {anchor.attribute}={anchor.legacy}, not "
                f"{anchor.value}: the service did not create or link it, so its password is not reset until an "
                "operator links it (`lifecycle link approve`)",
                dn=account.dn,
                attribute=anchor.attribute,
                value=anchor.legacy or "",
            )
        handler = {
            "modify_properties": self.modify_attributes,
            "apply_template": self.modify_attributes,
            "disable_user": self.disable,
            "enable_user": self.enable,
            "move_ou": self.move_ou,
            "sync_groups": self.sync_groups,
            "add_to_groups": self.add_to_groups,
            "remove_from_groups": self.remove_from_groups,
            "reset_password": self.reset_password,
            "delete_user": self.delete,
            "set_home_directory": self.set_home_directory,
            "create_remote_mailbox": self.create_remote_mailbox,
            "disable_remote_mailbox": self.disable_remote_mailbox,
            "delete_remote_mailbox": self.delete_remote_mailbox,
            "disable_lync": self.disable_lync,
            "enable_lync": self.enable_lync,
            "set_ad_photo": self.set_photo,
            "remove_ad_photo": self.remove_photo,
        }.get(step.action)
        if handler is None:
            raise Permanent(f"AD {self.name}: action {step.action} is not an Active Directory action")
        return handler(step.params, account)

    @staticmethod
    def _candidate_pairs(names: dict[str, Any]) -> list[tuple[str, str]]:
        return [(attr, value) for c in names.get("candidates", []) for attr, value in c.items()]

    def _choose_names(self, names: dict[str, Any], taken: set[tuple[str, str]] | None = None) -> dict[str, str]:
        candidates: list[dict[str, str]] = names.get("candidates", [])
        if not candidates:
            raise NamingExhausted("no naming candidate could be made from this user's fields (are the names empty?)")
        if taken is None:
            taken = self._taken(self._candidate_pairs(names))
        for candidate in candidates:
            if not any((attr, value) in taken for attr, value in candidate.items()):
                return candidate
        # Numeric suffixes on the first candidate: one search for all of them, then the lowest free number.
        base = candidates[0]["samaccountname"]
        patterns: dict[str, str] = names.get("suffix_patterns", {})
        suffixed: list[dict[str, str]] = []
        for number in range(2, int(names.get("max_suffix", 99)) + 1):
            sam = with_suffix(base, number)
            candidate = {"samaccountname": sam}
            for attr, pattern in patterns.items():
                candidate[attr] = sanitize_address(pattern.replace(SAM_PLACEHOLDER, sam))
            suffixed.append(candidate)
        for chunk_start in range(0, len(suffixed), 25):
            chunk = suffixed[chunk_start : chunk_start + 25]
            taken = self._taken([(a, v) for c in chunk for a, v in c.items()])
            for candidate in chunk:
                if not any((attr, value) in taken for attr, value in candidate.items()):
                    return candidate
        raise NamingExhausted(
            f"every name candidate is taken ({', '.join(c['samaccountname'] for c in candidates)} and "
            f"{base}2..{base}{names.get('max_suffix', 99)}): add a candidate to the mapping's [naming]"
        )

    def create_user(
        self,
        params: dict[str, Any],
        anchor: Anchor,
        account: Account | None,
        correlate: Sequence[tuple[str, str]] = (),
    ) -> tuple[StepResult, Account | None]:
        if account is not None:
            return StepResult("unchanged", dn=account.dn, message="account exists"), account
        account, taken = self._find_and_check_names(anchor, self._candidate_pairs(params["names"]), correlate)
        if account is not None:
            return StepResult("unchanged", dn=account.dn, message="account exists"), account
        ou: str = params["ou"]
        self._check_target_ou(ou)
        names = self._choose_names(params["names"], taken)
        attributes: dict[str, Any] = {k: v for k, v in params.get("attributes", {}).items() if v not in ("", None)}
        attributes.update(
            {
                "objectClass": ["top", "person", "organizationalPerson", "user"],
                anchor.attribute: anchor.value,
                "sAMAccountName": names["samaccountname"],
                "userPrincipalName": names["userprincipalname"],
                # A joiner created ahead of its start date is created disabled (enabled by a scheduled step).
                "userAccountControl": str(
                    UF_NORMAL_ACCOUNT | (0 if params.get("enabled", True) else UF_ACCOUNTDISABLE)
                ),
            }
        )
        if names.get("mail"):
            attributes["mail"] = names["mail"]
        changes = [Change(k, None, v) for k, v in attributes.items() if k != "objectClass"]
        changes.append(Change("unicodePwd", None, "(set)"))
        password_params = params.get("password", {})
        if password_params.get("must_change", True):
            changes.append(Change("pwdLastSet", None, "0 (must change at next logon)"))
        cn_candidates = [params["cn"], f"{params['cn']} ({names['samaccountname']})"]
        dn = f"CN={escape_rdn(cn_candidates[0])},{ou}"
        if self.dry_run:
            return StepResult("dry_run", dn=dn, changes=changes), None
        password = generate_password(int(password_params.get("length", 20)))
        # One add carries the password and the enabled flag: AD refuses an enabled account without a password,
        # and one operation instead of three is what makes a joiner fast (samba-ad.md measured 43/s vs 25-31/s).
        attributes["unicodePwd"] = _encode_password(password)
        if password_params.get("must_change", True):
            attributes["pwdLastSet"] = "0"
        for cn in cn_candidates:
            dn = f"CN={escape_rdn(cn)},{ou}"
            try:
                self._call(_op("add", dn, attributes=attributes))
                break
            except ldap_errors.LDAPEntryAlreadyExistsResult:
                continue  # another object has this CN in the OU: try the next CN form
            except ldap_errors.LDAPNoSuchObjectResult:
                raise Permanent(f"AD {self.name}: the OU {ou} does not exist (create it or fix the mapping)") from None
            except ldap_errors.LDAPOperationResult as exc:
                raise Permanent(f"AD {self.name}: cannot create {dn}: {exc.description}: {exc.message}") from None
        else:
            raise Permanent(f"AD {self.name}: every CN form of {params['cn']!r} is taken in {ou}")
        if self._password_sink is not None:
            self._password_sink(dn, password)
        del password
        stored = {
            k.lower(): (v if isinstance(v, list) else [v])
            for k, v in attributes.items()
            if k.lower() not in _SECRET_ATTRIBUTES
        }
        return StepResult("changed", dn=dn, changes=changes), Account(dn, stored, set())

    def modify_attributes(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        wanted: dict[str, str] = params.get("attributes", {})
        changes: list[Change] = []
        modifications: dict[str, list[tuple[str, list[str]]]] = {}
        for attribute, value in wanted.items():
            current = account.first(attribute)
            if current != value:
                changes.append(Change(attribute, current, value))
                modifications[attribute] = [(ldap3.MODIFY_REPLACE, [value])]
        for attribute in params.get("clear", []):
            current = account.first(attribute)
            if current is not None:
                changes.append(Change(attribute, current, None))
                modifications[attribute] = [(ldap3.MODIFY_REPLACE, [])]
        if not modifications:
            return StepResult("unchanged", dn=account.dn), account
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=changes), account
        try:
            self._call(lambda conn: conn.modify(account.dn, modifications))
        except ldap_errors.LDAPOperationResult as exc:
            raise Permanent(f"AD {self.name}: cannot modify {account.dn}: {exc.description}: {exc.message}") from None
        for change in changes:
            account.attributes[change.attribute.lower()] = [] if change.after is None else [change.after]
        return StepResult("changed", dn=account.dn, changes=changes), account

    def _set_uac(self, account: Account, uac: int) -> tuple[StepResult, Account]:
        before = account.uac
        if before == uac:
            return StepResult("unchanged", dn=account.dn), account
        changes = [Change("userAccountControl", before, uac)]
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=changes), account
        try:
            self._call(
                lambda conn: conn.modify(account.dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [str(uac)])]})
            )
        except ldap_errors.LDAPOperationResult as exc:
            raise Permanent(f"AD {self.name}: cannot set userAccountControl on {account.dn}: {exc.message}") from None
        account.attributes["useraccountcontrol"] = [str(uac)]
        return StepResult("changed", dn=account.dn, changes=changes), account

    def disable(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        return self._set_uac(account, account.uac | UF_ACCOUNTDISABLE)

    def enable(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        return self._set_uac(account, account.uac & ~UF_ACCOUNTDISABLE)

    def move_ou(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        ou: str = params["ou"]
        if normalize_dn(parent_dn(account.dn)) == normalize_dn(ou):
            return StepResult("unchanged", dn=account.dn), account
        self._check_target_ou(ou)
        rdn = to_dn(account.dn)[0]
        sam = account.first("sAMAccountName") or "user"
        name = account.first("cn") or rdn.split("=", 1)[1]
        candidates = [rdn, f"CN={escape_rdn(f'{name} ({sam})')}"]
        if self.dry_run:
            return StepResult("dry_run", dn=f"{rdn},{ou}", changes=[Change("dn", account.dn, f"{rdn},{ou}")]), account
        for relative in candidates:
            try:
                self._call(_op("modify_dn", account.dn, relative, new_superior=ou))
            except ldap_errors.LDAPEntryAlreadyExistsResult:
                continue
            except ldap_errors.LDAPNoSuchObjectResult:
                raise Permanent(f"AD {self.name}: the OU {ou} does not exist (create it or fix the mapping)") from None
            except ldap_errors.LDAPOperationResult as exc:
                raise Permanent(f"AD {self.name}: cannot move {account.dn} to {ou}: {exc.message}") from None
            new_dn = f"{relative},{ou}"
            change = Change("dn", account.dn, new_dn)
            account.dn = new_dn
            return StepResult("changed", dn=new_dn, changes=[change]), account
        raise Permanent(f"AD {self.name}: {rdn} and its fallback are both taken in {ou}")

    def _membership(
        self, account: Account, add: Sequence[str], remove: Sequence[str], *, strip_all: bool = False
    ) -> tuple[StepResult, Account]:
        self._check_groups(add)
        # Leaving a group that is gone changes nothing; stripping "all" groups may leave unmanaged ones too.
        self._check_groups(remove, must_exist=False, check_managed=not strip_all)
        changes = [Change("memberOf", None, g) for g in add] + [Change("memberOf", g, None) for g in remove]
        if not changes:
            return StepResult("unchanged", dn=account.dn), account
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=changes), account
        for group in add:
            try:
                self._call(_op("modify", group, {"member": [(ldap3.MODIFY_ADD, [account.dn])]}))
            except (ldap_errors.LDAPEntryAlreadyExistsResult, ldap_errors.LDAPAttributeOrValueExistsResult):
                pass  # already a member: the desired state holds
            except ldap_errors.LDAPNoSuchObjectResult:
                raise Permanent(
                    f"AD {self.name}: the group {group} does not exist (create it or fix the mapping)"
                ) from None
            account.member_of.add(normalize_dn(group))
        for group in remove:
            try:
                self._call(_op("modify", group, {"member": [(ldap3.MODIFY_DELETE, [account.dn])]}))
            except (
                ldap_errors.LDAPNoSuchAttributeResult,
                ldap_errors.LDAPUnwillingToPerformResult,
                ldap_errors.LDAPNoSuchObjectResult,
            ):
                pass  # not a member (or the group is gone): the desired state holds
            account.member_of.discard(normalize_dn(group))
        return StepResult("changed", dn=account.dn, changes=changes), account

    def sync_groups(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        """Join the groups the rules give, leave the managed groups they no longer give, keep all others."""
        desired = {normalize_dn(g): g for g in params.get("desired", [])}
        managed = {normalize_dn(g): g for g in params.get("managed", [])}
        add = [g for key, g in desired.items() if key not in account.member_of]
        remove = [g for key, g in managed.items() if key not in desired and key in account.member_of]
        return self._membership(account, add, remove)

    def add_to_groups(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        add = [g for g in params.get("groups", []) if normalize_dn(g) not in account.member_of]
        return self._membership(account, add, [])

    def remove_from_groups(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        groups = params.get("groups", [])
        if groups == "all":
            remove = [g for g in account.attributes.get("memberof", []) if normalize_dn(g) in account.member_of]
            return self._membership(account, [], remove, strip_all=True)
        remove = [g for g in groups if normalize_dn(g) in account.member_of]
        return self._membership(account, [], remove)

    def reset_password(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        changes = [Change("unicodePwd", None, "(reset)")]
        must_change = bool(params.get("must_change", True))
        if must_change:
            changes.append(Change("pwdLastSet", None, "0 (must change at next logon)"))
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=changes), account
        password = generate_password(int(params.get("length", 20)))
        modification: dict[str, Any] = {"unicodePwd": [(ldap3.MODIFY_REPLACE, [_encode_password(password)])]}
        if must_change:
            modification["pwdLastSet"] = [(ldap3.MODIFY_REPLACE, ["0"])]
        try:
            self._call(lambda conn: conn.modify(account.dn, modification))
        except ldap_errors.LDAPOperationResult as exc:
            raise Permanent(f"AD {self.name}: cannot reset the password of {account.dn}: {exc.description}") from None
        if self._password_sink is not None:
            self._password_sink(account.dn, password)
        del password
        return StepResult("changed", dn=account.dn, changes=changes), account

    def set_home_directory(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        """Set (or clear) homeDirectory and homeDrive; ``{samaccountname}``-style placeholders come from the account.

        Runs after the home-folder step that made the path true (mapping order), so AD never points at a folder
        that is not there yet. The path must be a plain UNC or absolute path: no ``..``, no device names.
        """
        from lifecycle.targets.files_actions import UnsafePath, check_path_syntax, expand_account_placeholders

        attributes: dict[str, str] = {}
        clear: list[str] = []
        if params.get("clear"):
            clear = ["homeDirectory", "homeDrive"]
        elif params.get("path") is not None:
            try:
                path = expand_account_placeholders(str(params["path"]), account.attributes)
                check_path_syntax(path)
            except UnsafePath as exc:
                raise PolicyRefused(f"AD {self.name}: homeDirectory refused: {exc}") from None
            attributes["homeDirectory"] = path
            if params.get("drive"):
                attributes["homeDrive"] = str(params["drive"])
        return self.modify_attributes({"attributes": attributes, "clear": clear}, account)

    def delete(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account | None]:
        changes = [Change("dn", account.dn, None)]
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=changes), account
        try:
            # Tree delete: an account can hold child objects (devices, Exchange data) that would block a delete.
            self._call(lambda conn: conn.delete(account.dn, controls=[TREE_DELETE_CONTROL]))
        except ldap_errors.LDAPNoSuchObjectResult:
            return StepResult("unchanged", dn=account.dn, message="already deleted"), None
        except ldap_errors.LDAPOperationResult as exc:
            raise Permanent(f"AD {self.name}: cannot delete {account.dn}: {exc.description}: {exc.message}") from None
        return StepResult("changed", dn=account.dn, changes=changes), None

    # Exchange (hybrid), Lync and photos ----------------------------------------------------------------------
    def _ensure_values(
        self, account: Account, wanted: dict[str, list[Any]], *, what: str
    ) -> tuple[StepResult, Account]:
        """Set each attribute to exactly the values given (an empty list clears it); only what differs."""
        changes: list[Change] = []
        modifications: dict[str, list[tuple[str, list[Any]]]] = {}
        for attribute, values in wanted.items():
            current = list(account.attributes.get(attribute.lower(), []))
            if {str(v) for v in current} == {str(v) for v in values}:
                continue
            before = current[0] if len(current) == 1 else (current or None)
            after = values[0] if len(values) == 1 else (values or None)
            changes.append(Change(attribute, before, after))
            modifications[attribute] = [(ldap3.MODIFY_REPLACE, [str(v) for v in values])]
        if not modifications:
            return StepResult("unchanged", dn=account.dn), account
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=changes), account
        try:
            self._call(lambda conn: conn.modify(account.dn, modifications))
        except ldap_errors.LDAPNoSuchAttributeResult:
            raise Permanent(f"AD {self.name}: {what}: the schema lacks one of {sorted(modifications)}") from None
        except ldap_errors.LDAPOperationResult as exc:
            raise Permanent(f"AD {self.name}: {what} on {account.dn}: {exc.description}: {exc.message}") from None
        for attribute, values in wanted.items():
            account.attributes[attribute.lower()] = [str(v) for v in values]
        return StepResult("changed", dn=account.dn, changes=changes), account

    def create_remote_mailbox(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        """Hybrid Exchange: what ``Enable-RemoteMailbox`` writes, so the next sync gives the cloud mailbox."""
        alias = str(params.get("alias") or account.first("sAMAccountName") or "")
        primary = str(params.get("primary_address") or account.first("mail") or "")
        if not alias or not primary:
            raise Permanent(
                f"AD {self.name}: a remote mailbox needs an alias and a primary address; {account.dn} has "
                f"{'no sAMAccountName' if not alias else 'no mail'} (set alias/primary_address in the step)"
            )
        routing = f"{alias}@{params['routing_domain']}"
        details = str(account.first("msExchRecipientTypeDetails") or "")
        if account.first("homeMDB") or account.first("msExchHomeServerName") or details in ON_PREMISES_MAILBOXES:
            # A second, cloud mailbox next to an on-premises one splits the person's mail: moving a mailbox to
            # Exchange Online is a migration batch (New-MoveRequest), which leaves a remote mailbox behind.
            raise Permanent(
                f"AD {self.name}: {account.dn} has an on-premises mailbox (msExchRecipientTypeDetails "
                f"{details or '?'}); move it to Exchange Online with a migration batch instead of create_remote_mailbox"
            )
        if details in REMOTE_MAILBOXES:
            return self._keep_remote_mailbox(account, alias, routing)
        addresses = [f"SMTP:{primary}", f"smtp:{routing}"]
        for address in account.attributes.get("proxyaddresses", []):
            kind, _, value = str(address).partition(":")
            if value.lower() in (primary.lower(), routing.lower()):
                continue
            # One primary only: an earlier primary stays as a secondary address.
            addresses.append(f"smtp:{value}" if kind == "SMTP" else str(address))
        wanted: dict[str, list[Any]] = {
            "mailNickname": [alias],
            "mail": [primary],
            "targetAddress": [f"SMTP:{routing}"],
            "proxyAddresses": addresses,
            "msExchRecipientTypeDetails": [REMOTE_USER_MAILBOX],
            "msExchRecipientDisplayType": [REMOTE_USER_MAILBOX_DISPLAY],
            "msExchRemoteRecipientType": [REMOTE_PROVISION_MAILBOX],
        }
        warning = self._want_exchange_version(wanted)
        return self._with_warning(self._ensure_values(account, wanted, what="enable the remote mailbox"), warning)

    def _want_exchange_version(self, wanted: dict[str, list[Any]], account: Account | None = None) -> str:
        """Add msExchVersion to ``wanted`` when the schema has it (and ``account``, if given, lacks it); else
        the warning the step's audit carries."""
        if not self.schema_has("msExchVersion"):
            return (
                "msExchVersion not written: the directory's schema has no such attribute (a forest not prepared "
                "for Exchange); the Exchange admin tools show such a recipient as of an older version until "
                "Set-RemoteMailbox or Exchange's setup writes it"
            )
        if account is None or not account.first("msExchVersion"):
            wanted["msExchVersion"] = [EXCHANGE_2013_VERSION]
        return ""

    @staticmethod
    def _with_warning(done: tuple[StepResult, Account], warning: str) -> tuple[StepResult, Account]:
        result, account = done
        if warning:  # the step's audit entry carries it
            result.message = "; ".join(m for m in (result.message, warning) if m)
        return result, account

    def _keep_remote_mailbox(self, account: Account, alias: str, routing: str) -> tuple[StepResult, Account]:
        """An existing remote mailbox (migrated, shared, room): its type and state stay; only gaps are filled."""
        wanted: dict[str, list[Any]] = {}
        if not account.first("mailNickname"):
            wanted["mailNickname"] = [alias]
        if not account.first("targetAddress"):
            wanted["targetAddress"] = [f"SMTP:{routing}"]
        proxies = [str(p) for p in account.attributes.get("proxyaddresses", [])]
        if not any(p.partition(":")[2].lower() == routing.lower() for p in proxies):
            wanted["proxyAddresses"] = [*proxies, f"smtp:{routing}"]
        warning = self._want_exchange_version(wanted, account)
        if not wanted:
            kept = StepResult("unchanged", dn=account.dn, message="an existing remote mailbox: kept as it is")
            return self._with_warning((kept, account), warning)
        return self._with_warning(
            self._ensure_values(account, wanted, what="complete the existing remote mailbox"), warning
        )

    def disable_remote_mailbox(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        """Hybrid Exchange: clear what ``Disable-RemoteMailbox`` clears; the cloud mailbox goes at the next sync."""
        wanted: dict[str, list[Any]] = {name: [] for name in REMOTE_MAILBOX_ATTRIBUTES}
        if params.get("keep_addresses"):
            del wanted["proxyAddresses"]
        return self._ensure_values(account, wanted, what="disable the remote mailbox")

    def delete_remote_mailbox(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        """Hybrid Exchange: clear the remote-mailbox attributes and ``mail``: no mail identity is left in AD."""
        wanted: dict[str, list[Any]] = {name: [] for name in (*REMOTE_MAILBOX_ATTRIBUTES, "mail")}
        return self._ensure_values(account, wanted, what="delete the remote mailbox")

    def disable_lync(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        """On-premises Lync/Skype: ``msRTCSIP-UserEnabled = FALSE``, keeping the other msRTCSIP attributes.

        ``Disable-CsUser`` would clear them all (SIP address, pool); keeping them makes a rehire a one-flag change.
        """
        if account.first("msRTCSIP-PrimaryUserAddress") is None and account.first("msRTCSIP-UserEnabled") is None:
            return StepResult("unchanged", dn=account.dn, message="not enabled for Lync/Skype"), account
        return self._ensure_values(account, {"msRTCSIP-UserEnabled": ["FALSE"]}, what="disable Lync/Skype")

    def enable_lync(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        if account.first("msRTCSIP-PrimaryUserAddress") is None:
            raise Permanent(
                f"AD {self.name}: {account.dn} has no msRTCSIP-PrimaryUserAddress: enable it once with Enable-CsUser"
            )
        return self._ensure_values(account, {"msRTCSIP-UserEnabled": ["TRUE"]}, what="enable Lync/Skype")

    def _read_photo(self, account: Account) -> bytes | None:
        def read(conn: Any) -> list[Any]:
            conn.search(account.dn, "(objectClass=*)", ldap3.BASE, attributes=["thumbnailPhoto"])
            return [e for e in conn.response if e.get("type") == "searchResEntry"]

        entries = self._call(read)
        values = entries[0]["raw_attributes"].get("thumbnailPhoto") if entries else None
        return bytes(values[0]) if values else None

    def set_photo(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        """``thumbnailPhoto`` from the event's photo, as a JPEG of at most 100 KB."""
        raw = self._photo_loader(params)
        if raw is None:
            return StepResult("unchanged", dn=account.dn, message="the event carries no photo"), account
        jpeg = to_jpeg(raw, max_pixels=int(params.get("max_pixels", 96)), max_bytes=AD_PHOTO_MAX_BYTES)
        current = self._read_photo(account)
        if current == jpeg:
            return StepResult("unchanged", dn=account.dn), account
        change = Change("thumbnailPhoto", f"{len(current)} bytes" if current else None, f"{len(jpeg)} bytes (JPEG)")
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=[change]), account
        try:
            self._call(lambda conn: conn.modify(account.dn, {"thumbnailPhoto": [(ldap3.MODIFY_REPLACE, [jpeg])]}))
        except ldap_errors.LDAPOperationResult as exc:
            raise Permanent(f"AD {self.name}: cannot set thumbnailPhoto on {account.dn}: {exc.message}") from None
        return StepResult("changed", dn=account.dn, changes=[change]), account

    def remove_photo(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        current = self._read_photo(account)
        if current is None:
            return StepResult("unchanged", dn=account.dn), account
        change = Change("thumbnailPhoto", f"{len(current)} bytes", None)
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=[change]), account
        try:
            self._call(lambda conn: conn.modify(account.dn, {"thumbnailPhoto": [(ldap3.MODIFY_REPLACE, [])]}))
        except ldap_errors.LDAPOperationResult as exc:
            raise Permanent(f"AD {self.name}: cannot remove thumbnailPhoto of {account.dn}: {exc.message}") from None
        return StepResult("changed", dn=account.dn, changes=[change]), account

    def delivery_facts(self, dn: str) -> dict[str, str]:
        """Who an account is and who manages it: what a password delivery channel needs (never the password)."""

        def read(conn: Any, base: str, attributes: list[str]) -> dict[str, Any]:
            conn.search(base, "(objectClass=*)", ldap3.BASE, attributes=attributes)
            entries = [e for e in conn.response if e.get("type") == "searchResEntry"]
            return dict(entries[0]["attributes"]) if entries else {}

        def first(values: Any) -> str:
            if isinstance(values, list):
                return str(values[0]) if values else ""
            return str(values or "")

        wanted = ["displayName", "userPrincipalName", "sAMAccountName", "manager"]
        user = self._call(lambda conn: read(conn, dn, wanted))
        facts = {
            "name": first(user.get("displayName")),
            "upn": first(user.get("userPrincipalName")),
            "sam": first(user.get("sAMAccountName")),
        }
        manager = first(user.get("manager"))
        if manager:
            boss = self._call(lambda conn: read(conn, manager, ["displayName", "mail"]))
            facts["manager_name"] = first(boss.get("displayName"))
            facts["manager_mail"] = first(boss.get("mail"))
        return facts
