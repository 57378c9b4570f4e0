"""The schema extensions (Exchange, Lync) and smb.conf options baked into every DC, and applying them over LDAP."""

from __future__ import annotations

import hashlib
import json
import secrets
import ssl
from dataclasses import dataclass
from typing import Any, Final

import ldap3  # type: ignore[import-untyped]

from lifecycle.local.samba.base import FORMAT_VERSION, HOST_NAME, LDAPS_PORT, DCInfo, SambaDCError

# --------------------------------------------------------------------------------------------------
# Schema extensions baked into every provisioned directory.


@dataclass(frozen=True)
class SchemaAttribute:
    """An attributeSchema entry added to the provisioned schema and allowed on the ``user`` class.

    Attributes:
        cn: The schema object's CN, as Exchange/Lync name it.
        ldap_name: The lDAPDisplayName.
        oid: The attributeID.
        syntax: The attributeSyntax (2.5.5.x).
        om_syntax: The oMSyntax matching ``syntax``.
        range_upper: Maximum length, where the product defines one.
        indexed: Whether searchFlags carries fATTINDEX (the product indexes it).
        om_object_class: BER-encoded oMObjectClass, required for DN syntax.
    """

    cn: str
    ldap_name: str
    oid: str
    syntax: str
    om_syntax: int
    range_upper: int | None = None
    indexed: bool = False
    om_object_class: bytes | None = None

    def entry(self) -> dict[str, Any]:
        """Returns the attributes of the attributeSchema entry."""
        entry: dict[str, Any] = {
            "objectClass": ["top", "attributeSchema"],
            "cn": self.cn,
            "lDAPDisplayName": self.ldap_name,
            "attributeID": self.oid,
            "attributeSyntax": self.syntax,
            "oMSyntax": str(self.om_syntax),
            "isSingleValued": "TRUE",
            "searchFlags": "1" if self.indexed else "0",
        }
        if self.range_upper is not None:
            entry["rangeLower"] = "1"
            entry["rangeUpper"] = str(self.range_upper)
        if self.om_object_class is not None:
            entry["oMObjectClass"] = self.om_object_class
        return entry

    def sample_value(self, base_dn: str) -> str:
        """Returns a value of this syntax, used to prove a user can carry the attribute."""
        if self.syntax == _BOOLEAN[0]:
            return "FALSE"
        if self.syntax == _LARGE_INTEGER[0]:
            return "2147483648"  # RemoteUserMailbox: does not fit 32 bits, so proves Large Integer.
        if self.syntax == _INTEGER[0]:
            return "-2147483642"  # RemoteUserMailbox display type: negative, so proves signed Integer.
        if self.syntax == _DN[0]:
            return base_dn  # a DN-syntax value must name an existing object.
        return f"probe-{self.ldap_name}"[: self.range_upper or 64]


_UNICODE: Final = ("2.5.5.12", 64)
_INTEGER: Final = ("2.5.5.9", 2)
_LARGE_INTEGER: Final = ("2.5.5.16", 65)
_BOOLEAN: Final = ("2.5.5.8", 1)
_DN: Final = ("2.5.5.1", 127)
# oMObjectClass of DN-syntax attributes: OID 1.3.12.2.1011.28.0.714, BER-encoded.
_DN_OM_OBJECT_CLASS: Final = bytes.fromhex("2b0c0287731c00854a")


def _exchange_extension_attributes() -> list[SchemaAttribute]:
    # ms-Exch-Extension-Attribute-1..10 are 1.2.840.113556.1.2.423..432 (rangeUpper 1024) and 11..15
    # are 1.2.840.113556.1.2.599..603 (rangeUpper 2048): Exchange 2003/2007 SDK schema reference.
    oids = [*range(423, 433), *range(599, 604)]
    return [
        SchemaAttribute(
            cn=f"ms-Exch-Extension-Attribute-{n}",
            ldap_name=f"extensionAttribute{n}",
            oid=f"1.2.840.113556.1.2.{oid}",
            syntax=_UNICODE[0],
            om_syntax=_UNICODE[1],
            range_upper=1024 if n <= 10 else 2048,
        )
        for n, oid in enumerate(oids, start=1)
    ]


# The real product OIDs and syntaxes, so that code tested here behaves as against a real forest.
# Sources: mailNickname and msRTCSIP-UserEnabled from the project's Samba reference note; targetAddress
# and extensionAttribute1..15 from Microsoft's Exchange SDK schema pages; msExchRecipientDisplayType
# and msExchRecipientTypeDetails from an LDIF exported from a real Exchange forest; and
# msExchRemoteRecipientType and the three msRTCSIP-* from a published dump of a real AD schema (one
# source each). No private OIDs were needed. (...102.50730 is msExchRecipientDisplayType, not
# msExchRecipientTypeDetails; msExchRemoteRecipientType is ...102.51611, not ...102.50863.)
SCHEMA_ATTRIBUTES: Final[tuple[SchemaAttribute, ...]] = (
    SchemaAttribute(
        "ms-Exch-Mail-Nickname", "mailNickname", "1.2.840.113556.1.2.447", *_UNICODE, range_upper=64, indexed=True
    ),
    SchemaAttribute(
        "ms-Exch-Target-Address", "targetAddress", "1.2.840.113556.1.2.352", *_UNICODE, range_upper=1123, indexed=True
    ),
    SchemaAttribute(
        "ms-Exch-Recipient-Type-Details",
        "msExchRecipientTypeDetails",
        "1.2.840.113556.1.4.7000.102.50855",
        *_LARGE_INTEGER,
        indexed=True,
    ),
    SchemaAttribute(
        "ms-Exch-Remote-Recipient-Type",
        "msExchRemoteRecipientType",
        "1.2.840.113556.1.4.7000.102.51611",
        *_LARGE_INTEGER,
    ),
    SchemaAttribute(
        "ms-Exch-Recipient-Display-Type",
        "msExchRecipientDisplayType",
        "1.2.840.113556.1.4.7000.102.50730",
        *_INTEGER,
        indexed=True,
    ),
    *_exchange_extension_attributes(),
    SchemaAttribute("msRTCSIP-UserEnabled", "msRTCSIP-UserEnabled", "1.2.840.113556.1.6.24.1.6", *_BOOLEAN),
    SchemaAttribute(
        "msRTCSIP-PrimaryUserAddress",
        "msRTCSIP-PrimaryUserAddress",
        "1.2.840.113556.1.6.24.1.1",
        *_UNICODE,
        indexed=True,
    ),
    # DN syntax, as in a real Lync/Skype forest (it points at the pool's service object): a value must
    # name an existing object, exactly the constraint the engine meets on Windows.
    SchemaAttribute(
        "msRTCSIP-PrimaryHomeServer",
        "msRTCSIP-PrimaryHomeServer",
        "1.2.840.113556.1.6.24.1.57",
        *_DN,
        om_object_class=_DN_OM_OBJECT_CLASS,
    ),
)


# Test-friendly policy: a password may be changed right away and reused; complexity stays on (as on AD).
_PASSWORD_POLICY: Final = ("--min-pwd-age=0", "--history-length=0")

# The smb.conf settings of every DC here, besides its paths and address.
_SERVER_OPTIONS: Final = {
    "bind interfaces only": "yes",
    # LDAP only: the default set also runs a DNS-update task that talks to the resolvers in resolv.conf.
    "server services": "ldap",
    # Refuse simple binds without TLS, as Windows DCs requiring LDAP signing do (4.17's default anyway).
    "ldap server require strong auth": "yes",
    # Lets the schema be extended over LDAP, as a Schema Admin can on Windows.
    "dsdb:schema update allowed": "true",
}


def _schema_version(domain: str) -> str:
    """Returns a short digest of everything baked into a template besides realm and Samba version."""
    attributes = [
        [a.cn, a.ldap_name, a.oid, a.syntax, a.om_syntax, a.range_upper, a.indexed, (a.om_object_class or b"").hex()]
        for a in SCHEMA_ATTRIBUTES
    ]
    material = {
        "format": FORMAT_VERSION,
        "domain": domain.upper(),
        "host_name": HOST_NAME,
        "attributes": attributes,
        "password_policy": list(_PASSWORD_POLICY),
        "server_options": _SERVER_OPTIONS,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# LDAP helpers (ldap3 over LDAPS, simple bind).


def _ldap_server(info: DCInfo) -> Any:
    tls = ldap3.Tls(
        validate=ssl.CERT_REQUIRED,
        ca_certs_file=str(info.ca_file),
        valid_names=[info.tls_server_name],
    )
    return ldap3.Server(info.host, port=LDAPS_PORT, use_ssl=True, tls=tls, get_info=ldap3.NONE, connect_timeout=10)


def _admin_connection(info: DCInfo) -> Any:
    # check_names=False: ldap3 refuses to modify the rootDSE ('') otherwise.
    conn = ldap3.Connection(
        _ldap_server(info),
        user=info.admin_user,
        password=info.admin_password,
        authentication=ldap3.SIMPLE,
        check_names=False,
        raise_exceptions=False,
        receive_timeout=60,
    )
    if not conn.bind():
        raise SambaDCError(f"LDAPS bind as {info.admin_user} to {info.url} failed: {conn.result}")
    return conn


def _expect(conn: Any, ok: bool, what: str) -> None:
    if not ok:
        result = conn.result
        raise SambaDCError(f"{what} failed: {result.get('description')}: {result.get('message')}")


def _schema_update_now(conn: Any) -> None:
    _expect(conn, conn.modify("", {"schemaUpdateNow": [(ldap3.MODIFY_ADD, ["1"])]}), "schemaUpdateNow")


def _extend_schema(info: DCInfo) -> None:
    """Adds SCHEMA_ATTRIBUTES to the schema and the ``user`` class, then proves a user can hold them."""
    schema_dn = f"CN=Schema,CN=Configuration,{info.base_dn}"
    conn = _admin_connection(info)
    try:
        for attribute in SCHEMA_ATTRIBUTES:
            dn = f"CN={attribute.cn},{schema_dn}"
            _expect(conn, conn.add(dn, attributes=attribute.entry()), f"adding attributeSchema {attribute.ldap_name}")
        # The new attributes must be in the loaded schema before a class may reference them.
        _schema_update_now(conn)
        names = [attribute.ldap_name for attribute in SCHEMA_ATTRIBUTES]
        _expect(
            conn,
            conn.modify(f"CN=User,{schema_dn}", {"mayContain": [(ldap3.MODIFY_ADD, names)]}),
            "adding the attributes to mayContain of the user class",
        )
        _schema_update_now(conn)
    finally:
        conn.unbind()

    # A new connection sees the reloaded schema; prove every attribute can be set on a user and read back.
    conn = _admin_connection(info)
    try:
        probe = f"CN=schema-probe-{secrets.token_hex(4)},CN=Users,{info.base_dn}"
        values = {a.ldap_name: a.sample_value(info.base_dn) for a in SCHEMA_ATTRIBUTES}
        attributes = {"sAMAccountName": probe[3:23], **values}
        _expect(
            conn, conn.add(probe, ["top", "person", "organizationalPerson", "user"], attributes), "adding a probe user"
        )
        _expect(
            conn,
            conn.search(probe, "(objectClass=user)", ldap3.BASE, attributes=list(values)),
            "reading the probe user",
        )
        stored = conn.response[0]["raw_attributes"]
        missing = [
            name
            for name, value in values.items()
            if [v.decode().lower() for v in stored.get(name, [])] != [value.lower()]
        ]
        if missing:
            raise SambaDCError(f"schema extension check failed; not stored as set: {', '.join(missing)}")
        _expect(conn, conn.delete(probe), "deleting the probe user")
    finally:
        conn.unbind()
