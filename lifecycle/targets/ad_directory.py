"""One AD domain through ldap3: the connection and its errors, reading and correlating accounts, and the
protection checks every action runs (protected groups and OUs, managed containers).

Kept apart from the actions (``ad``) and the Exchange, Lync and photo steps (``ad_exchange``): this changes
with how the directory is reached and what is protected, those with what a step writes.
"""

from __future__ import annotations

import math
import ssl
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlparse

import ldap3  # type: ignore[import-untyped]
from ldap3.core import exceptions as ldap_errors  # type: ignore[import-untyped]
from ldap3.protocol.formatters.formatters import format_sid  # type: ignore[import-untyped]
from ldap3.utils.conv import escape_filter_chars  # type: ignore[import-untyped]

from lifecycle import dn as dns
from lifecycle.errors import (
    AdoptionNeeded,
    ConfigurationError,
    Permanent,
    PolicyRefused,
    Retryable,
)
from lifecycle.photos import PhotoLoader
from lifecycle.protection import Policy
from lifecycle.settings_models import ADConnection
from lifecycle.targets.ad_model import (
    PASSWORD_POLICY_MARK,
    RESOLVE_TTL_SECONDS,
    TRANSIENT_RESULTS,
    Account,
    Anchor,
    Resolved,
    T,
    is_under,
    normalize_dn,
    password_version,
)
from lifecycle.work import Step


class ADDirectory:
    """One AD domain: the connection, reads and correlation, and the protection checks (``ADTarget`` adds the
    actions)."""

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
            if code in TRANSIENT_RESULTS:
                raise Retryable(f"AD {self.name}: domain controller busy ({exc.description}): {message}") from None
            if PASSWORD_POLICY_MARK in message.upper():
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
        return password_version(blobs[0]) if blobs else None

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
