"""A throwaway Samba AD domain controller on a loopback address, for ``make run`` and the tests.

Provisioning a domain takes about five seconds, so the first provisioning (with the Exchange and Lync
schema extensions below already added) is kept as a *template* under ``~/.cache/halo-lifecycle`` and
every later directory is a copy of it (a few hundredths of a second), with the absolute paths and the
listening address in ``etc/smb.conf`` rewritten for its new home. The template also carries the TLS
key Samba generates on its first start, so later starts skip the 4096-bit key generation.

Rules this module keeps, and why:

* Only ``server services = ldap``: Samba's default service set includes a DNS-update task that sends
  traffic to the name servers in resolv.conf, and nothing here needs more than LDAP/LDAPS.
* One 127.0.0.0/8 address per DC, and nothing else: Samba's LDAP ports (389/636/3268/3269) are fixed,
  so a developer's ``make run`` on 127.0.0.1 and the test suite on, say, 127.0.0.7 can only coexist
  by listening on different loopback addresses.
* Never leave a samba running: the child runs in its own process group (Samba signals its whole
  group on SIGTERM, which would otherwise include us), ``stop()`` signals it by PID and reaps it, an
  ``atexit`` hook stops it if the caller forgets, a parent-death signal stops it if we are killed,
  and ``--maximum-runtime`` bounds its life if everything else fails.

Usage::

    python -m lifecycle.local.samba up DIR [--host 127.0.0.1]   # provision + start, print DCInfo JSON
    python -m lifecycle.local.samba provision DIR                # provision only
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import stat
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

import ldap3  # type: ignore[import-untyped]

from lifecycle.errors import LifecycleError

__all__ = [
    "SCHEMA_ATTRIBUTES",
    "AddressInUseError",
    "DCInfo",
    "SambaDC",
    "SambaDCError",
    "SchemaAttribute",
    "free_loopback_address",
    "generate_password",
    "main",
    "samba_available",
]

logger = logging.getLogger(__name__)

HOST_NAME: Final = "dc1"
LDAP_PORT: Final = 389
LDAPS_PORT: Final = 636
# Samba's ldap service also opens the global-catalog ports; all four must be free on the address.
DC_PORTS: Final = (LDAP_PORT, LDAPS_PORT, 3268, 3269)

MARKER_FILE: Final = ".samba-dc.json"
PASSWORD_FILE: Final = "admin-password"  # noqa: S105 - a file name, not a password
CONSOLE_LOG: Final = "log/samba-console.log"
# Bumped when the layout of a provisioned directory changes incompatibly; part of the schema version.
FORMAT_VERSION: Final = 1
# Samba's self-signed certificates last 700 days; rebuild the template well before that.
TEMPLATE_MAX_AGE_SECONDS: Final = 365 * 24 * 3600
# sun_path is 108 bytes with the terminating NUL; Samba puts sockets under the provisioned directory.
_MAX_SOCKET_PATH: Final = 107

_LOOPBACK: Final = ipaddress.IPv4Network("127.0.0.0/8")


class SambaDCError(LifecycleError):
    """The local DC could not be provisioned, started or stopped.

    Attributes:
        summary: One line saying what failed (what the CLI prints).
        log_tail: The last lines of the relevant Samba output, if any.
    """

    def __init__(self, summary: str, *, log_tail: str = "") -> None:
        message = summary if not log_tail else f"{summary}\n--- last lines of the samba output ---\n{log_tail}"
        super().__init__(message)
        self.summary = summary
        self.log_tail = log_tail


class AddressInUseError(SambaDCError):
    """A DC port is already taken on the chosen loopback address (another DC runs there?)."""


@dataclass(frozen=True)
class DCInfo:
    """How to reach a running local DC.

    Attributes:
        url: LDAPS URL, e.g. ``ldaps://127.0.0.2:636``.
        host: The loopback address the DC listens on.
        realm: Kerberos realm / DNS domain in upper case, e.g. ``CORP.EXAMPLE.TEST``.
        base_dn: Domain naming context, e.g. ``DC=corp,DC=example,DC=test``.
        admin_user: Administrator in UPN form, for a simple bind.
        admin_password: The Administrator password.
        ca_file: The CA certificate that signed the DC's TLS certificate.
        tls_server_name: The name in the DC certificate (its CN; the certificate has no SAN).
    """

    url: str
    host: str
    realm: str
    base_dn: str
    admin_user: str
    admin_password: str = dataclasses.field(repr=False)  # kept out of logs and tracebacks
    ca_file: Path
    tls_server_name: str

    def as_dict(self) -> dict[str, str]:
        """Returns the fields as JSON-ready strings."""
        return {field.name: str(getattr(self, field.name)) for field in dataclasses.fields(self)}


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
# Small helpers.


def _which(name: str) -> str | None:
    # Non-root shells often lack /usr/sbin in PATH, where Debian puts `samba`.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def samba_available() -> bool:
    """Returns whether both ``samba`` and ``samba-tool`` can be found."""
    return _which("samba") is not None and _which("samba-tool") is not None


def _require(name: str) -> str:
    path = _which(name)
    if path is None:
        raise SambaDCError(f"`{name}` not found; install Debian's samba package (apt-get install samba ldb-tools)")
    return path


_version_cache: dict[str, str] = {}


def _samba_version(samba: str) -> str:
    if samba not in _version_cache:
        out = subprocess.run([samba, "--version"], capture_output=True, text=True, check=False, timeout=30).stdout
        match = re.search(r"Version\s+(\S+)", out)
        # Only characters that are safe in a directory name.
        _version_cache[samba] = re.sub(r"[^A-Za-z0-9._-]", "_", match.group(1) if match else "unknown")
    return _version_cache[samba]


def _validate_host(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise SambaDCError(f"host must be an IPv4 loopback address such as 127.0.0.2, not {host!r}") from None
    if not isinstance(address, ipaddress.IPv4Address) or address not in _LOOPBACK:
        raise SambaDCError(f"refusing to listen on {host}: only 127.0.0.0/8 loopback addresses are allowed")
    return str(address)


def _validate_realm(realm: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", realm):
        raise SambaDCError(f"realm must be a dotted DNS name such as CORP.EXAMPLE.TEST, not {realm!r}")
    return realm.upper()


def _validate_domain(domain: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9-]{1,15}", domain):
        raise SambaDCError(f"domain must be a NetBIOS name of 1-15 letters, digits or '-', not {domain!r}")
    return domain.upper()


def generate_password() -> str:
    """Returns a random password that satisfies AD's default complexity rules.

    Returns:
        20 characters with upper case, lower case, digits and a symbol, none of them special to a
        shell, smb.conf or JSON.
    """
    rng = secrets.SystemRandom()
    required = [rng.choice(pool) for pool in (string.ascii_uppercase, string.ascii_lowercase, string.digits, "-_.")]
    rest = [rng.choice(string.ascii_letters + string.digits) for _ in range(16)]
    chars = required + rest
    rng.shuffle(chars)
    return "".join(chars)


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return False
    except OSError as exc:
        # Anything but a refusal (timeout, unreachable) means we cannot tell it is free: treat it as taken.
        return exc.errno != errno.ECONNREFUSED


def free_loopback_address(*, exclude: Sequence[str] = ()) -> str:
    """Returns a 127.0.0.x address on which none of the DC ports is in use.

    Candidates are tried in random order so that two test sessions started together are unlikely
    to pick the same one; 127.0.0.1 is never offered (it is ``make run``'s default).

    Args:
        exclude: Addresses not to offer.

    Returns:
        A loopback address.

    Raises:
        SambaDCError: No candidate is free.
    """
    candidates = [f"127.0.0.{n}" for n in range(2, 255)]
    random.shuffle(candidates)
    for address in candidates:
        if address in exclude:
            continue
        if not any(_port_open(address, port, timeout=0.2) for port in DC_PORTS):
            return address
    raise SambaDCError("no free loopback address found in 127.0.0.2-127.0.0.254")


def _tail(path: Path, offset: int = 0, lines: int = 25) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _run(argv: Sequence[str], what: str, *, log: Path, timeout: float = 300) -> None:
    """Runs a samba-tool command, appending its output to ``log``; raises with the tail on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        offset = handle.tell()
        try:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, check=False, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise SambaDCError(
                f"{what} did not finish in {timeout:.0f} s (log: {log})", log_tail=_tail(log, offset)
            ) from None
    if result.returncode != 0:
        raise SambaDCError(f"{what} failed (exit code {result.returncode}; log: {log})", log_tail=_tail(log, offset))


def _write_private(path: Path, text: str) -> None:
    """Writes ``text`` atomically to ``path`` with mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _file_lock(path: Path, *, timeout: float = 300.0) -> Iterator[None]:
    """Holds an exclusive flock on ``path``; waits at most ``timeout`` seconds for it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SambaDCError(f"timed out after {timeout:.0f} s waiting for the lock {path}") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# Provisioned directories: marker, relocation, copying.

_PARTIAL_PREFIX: Final = ".samba-build-"


def _read_marker(directory: Path) -> dict[str, Any] | None:
    """Returns the marker of a completely provisioned directory, or None."""
    try:
        data = json.loads((directory / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        return None
    return data


def _write_marker(directory: Path, marker: dict[str, Any]) -> None:
    _write_private(directory / MARKER_FILE, json.dumps(marker, indent=2, sort_keys=True) + "\n")


def _make_partial(parent: Path) -> Path:
    # Short on purpose: a template is started inside its partial directory, and Samba's unix sockets
    # live under it (sun_path is limited to 107 characters).
    return Path(tempfile.mkdtemp(dir=parent, prefix=f"{_PARTIAL_PREFIX}{os.getpid()}-"))


def _remove_stale_partials(parent: Path) -> None:
    """Removes half-built directories left in ``parent`` by processes that no longer exist."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            if not entry.name.startswith(_PARTIAL_PREFIX):
                continue
            pid_text = entry.name[len(_PARTIAL_PREFIX) :].split("-", 1)[0]
            if not pid_text.isdigit() or int(pid_text) == os.getpid():
                continue
            try:
                os.kill(int(pid_text), 0)
            except ProcessLookupError:
                logger.info("removing %s, left half-built by process %s", entry, pid_text)
                shutil.rmtree(entry, ignore_errors=True)
            except PermissionError:
                pass  # alive, owned by someone else


def _check_socket_paths(directory: Path) -> None:
    longest = max(
        len(str(directory / "private" / "ldap_priv" / "ldapi")),
        len(str(directory / "msg.sock" / "4194304")),  # largest possible pid
    )
    if longest > _MAX_SOCKET_PATH:
        raise SambaDCError(
            f"{directory} is too long for Samba's unix sockets ({longest} > {_MAX_SOCKET_PATH} characters); "
            "use a shorter directory"
        )


def _rewrite_smb_conf(directory: Path, old_root: str, host: str) -> None:
    """Points ``etc/smb.conf`` at ``directory`` (it was written for ``old_root``) and at ``host``.

    smb.conf is the only file of a provisioned directory that holds absolute paths (checked by
    grepping a provisioned and started copy), so relocating a directory means rewriting it.
    """
    conf = directory / "etc" / "smb.conf"
    new_root = str(directory)
    lines = []
    for original in conf.read_text().splitlines(keepends=True):
        key, sep, value = original.partition("=")
        name, value = key.strip().lower(), value.strip()
        line = original
        if sep and name == "interfaces":
            # "address/8": Samba only binds a bare address if an interface carries it, and lo
            # carries just 127.0.0.1, while the whole 127/8 is local to it.
            line = f"{key}= {host}/8\n"
        elif sep and (value == old_root or value.startswith(old_root + "/")):
            line = f"{key}= {new_root}{value[len(old_root) :]}\n"
        lines.append(line)
    fd, tmp = tempfile.mkstemp(dir=conf.parent, prefix=".smb.conf.")
    with os.fdopen(fd, "w") as handle:
        handle.writelines(lines)
    os.chmod(tmp, 0o644)
    os.replace(tmp, conf)


def _copy_provisioned(source: Path, destination: Path) -> None:
    """Copies a stopped provisioned directory, leaving out the runtime state of its last run."""
    runtime_top = {"msg.sock", "msg.lock", "log", "run"}

    def ignore(directory: str, names: list[str]) -> set[str]:
        ignored = set(names) & runtime_top if Path(directory) == source else set()
        for name in names:
            mode = os.lstat(os.path.join(directory, name)).st_mode
            if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
                ignored.add(name)  # ldapi sockets: recreated by samba, and not copyable anyway
        return ignored

    # copy2 keeps the xattrs (sysvol's NT ACLs) and modes (private/ is 0700, key.pem 0600).
    shutil.copytree(source, destination, symlinks=True, ignore=ignore, dirs_exist_ok=True)
    for name in ("log", "run"):
        (destination / name).mkdir(exist_ok=True)


def _install(partial: Path, directory: Path) -> None:
    """Renames a finished ``partial`` into place, so that ``directory`` is never half-provisioned."""
    try:
        # rename(2) also replaces an empty directory (such as one a test framework made for us).
        os.rename(partial, directory)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or _read_marker(directory) is None:
            raise SambaDCError(f"cannot move the provisioned directory into place at {directory}: {exc}") from exc
        # Another process provisioned the same directory first; theirs is as good as ours.
        logger.info("%s was provisioned concurrently by another process; using that", directory)


def _pid_file_holder(directory: Path) -> int | None:
    """Returns the pid of a samba running from ``directory`` (it holds a lock on its pid file)."""
    pid_file = directory / "run" / "samba.pid"
    try:
        fd = os.open(pid_file, os.O_RDWR)
    except OSError:
        return None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


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


# --------------------------------------------------------------------------------------------------
# The samba process.


class _SambaProcess:
    """One ``samba -i -M single`` child serving one provisioned directory on one address."""

    def __init__(self, directory: Path, host: str, tls_server_name: str, max_runtime_seconds: int) -> None:
        self.directory = directory
        self.host = host
        self.tls_server_name = tls_server_name
        self.max_runtime_seconds = max_runtime_seconds
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self, timeout: float) -> None:
        """Starts samba and waits until LDAPS completes a verified TLS handshake."""
        if self.pid is not None:
            return
        samba = _require("samba")
        holder = _pid_file_holder(self.directory)
        if holder is not None:
            raise SambaDCError(f"a samba (pid {holder}) is already running from {self.directory}")
        busy = [port for port in DC_PORTS if _port_open(self.host, port)]
        if busy:
            ports = ", ".join(map(str, busy))
            raise AddressInUseError(
                f"{self.host} port(s) {ports} already in use (another DC?); choose another loopback address"
            )
        for sub in ("run", "log"):
            (self.directory / sub).mkdir(exist_ok=True)

        argv = [
            samba,
            "-i",  # foreground, one process we can watch and signal
            "-M",
            "single",
            "-s",
            str(self.directory / "etc" / "smb.conf"),
            f"--maximum-runtime={self.max_runtime_seconds}",
        ]
        setpriv = _which("setpriv")
        # PDEATHSIG fires when the *thread* that forked dies, so only ask for it from the main thread
        # (whose end is the process's end); setpriv execs samba, so the child's pid stays samba's.
        if setpriv is not None and threading.current_thread() is threading.main_thread():
            argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]

        console = self.directory / CONSOLE_LOG
        with console.open("ab") as log:
            offset = log.tell()
            started = time.monotonic()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session and process group: on SIGTERM samba signals its whole group, and a
                # terminal's Ctrl-C must reach us (who stop it in order), not samba directly.
                start_new_session=True,
                close_fds=True,
            )
        logger.info("started samba pid %d on %s for %s", self._proc.pid, self.host, self.directory)
        try:
            self._wait_ready(timeout, console, offset)
        except BaseException:
            self.stop()
            raise
        logger.info("samba pid %d ready after %.2f s", self._proc.pid, time.monotonic() - started)

    def _wait_ready(self, timeout: float, console: Path, offset: int) -> None:
        assert self._proc is not None
        ca_file = self.directory / "private" / "tls" / "ca.pem"
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise SambaDCError(
                    f"samba exited with code {code} before LDAPS on {self.host}:{LDAPS_PORT} was ready "
                    f"(log: {console})",
                    log_tail=_tail(console, offset),
                )
            if ca_file.exists():  # samba writes its CA on first start, before it listens
                try:
                    _tls_handshake(self.host, ca_file, self.tls_server_name)
                    return
                except OSError as exc:  # includes ssl.SSLError
                    last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise SambaDCError(
                    f"LDAPS on {self.host}:{LDAPS_PORT} not ready after {timeout:.0f} s ({last_error}; log: {console})",
                    log_tail=_tail(console, offset),
                )
            time.sleep(0.05)

    def wait(self, timeout: float | None) -> int | None:
        """Waits for samba to exit by itself; returns its exit code, or None if it runs (or never ran)."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0) -> None:
        """Stops samba by PID (SIGTERM, then SIGKILL to its process group) and reaps it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            started = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("samba pid %d ignored SIGTERM for %.0f s; killing it", proc.pid, timeout)
                # Not yet reaped, so the pid (and the group id it leads) cannot have been reused.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            logger.info("stopped samba pid %d in %.2f s", proc.pid, time.monotonic() - started)
        # Forget it only once it is reaped: if we are interrupted above, a later stop() (or the
        # atexit hook) tries again.
        self._proc = None


def _tls_handshake(host: str, ca_file: Path, server_name: str, timeout: float = 2.0) -> None:
    context = ssl.create_default_context(cafile=str(ca_file))
    # Samba's autogenerated host certificate has no extensions at all; Python >= 3.13 turns on
    # strict X.509 checking by default, which would reject it for lacking an authority key id.
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    with (
        socket.create_connection((host, LDAPS_PORT), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=server_name),
    ):
        pass


# --------------------------------------------------------------------------------------------------
# The public class.


def _default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "halo-lifecycle"


class SambaDC:
    """A throwaway Samba AD DC in ``directory``, listening on one loopback address.

    Example::

        with SambaDC(tmp_path / "dc", host="127.0.0.2") as info:
            conn = ldap3.Connection(..., info.url, info.admin_user, info.admin_password)

    Attributes:
        directory: The provisioned directory (absolute).
        host: The loopback address the DC listens on.
        realm: The realm, upper case.
        domain: The NetBIOS domain name, upper case.
        timings: Seconds spent in the last provision / template_copy / schema / start / stop step.
    """

    def __init__(
        self,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        realm: str = "CORP.EXAMPLE.TEST",
        domain: str = "CORP",
        admin_password: str | None = None,
        max_runtime_seconds: int = 4 * 3600,
        template_cache: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        """Describes the DC; nothing is provisioned or started yet.

        Args:
            directory: Where the DC lives; created if missing. Must be empty or already provisioned.
            host: A 127.0.0.0/8 address; other addresses are refused.
            realm: The AD DNS domain / Kerberos realm.
            domain: The NetBIOS domain name.
            admin_password: The Administrator password; random (and kept in ``DIR/admin-password``)
                if not given.
            max_runtime_seconds: samba exits by itself after this long, whatever happens to us.
            template_cache: Where the provisioned template is kept; default
                ``~/.cache/halo-lifecycle/samba-template-<realm>-<samba version>-<schema version>``.
            start_timeout: How long ``start`` waits for LDAPS before giving up.

        Raises:
            SambaDCError: An argument is invalid (a non-loopback host, for instance).
        """
        self.directory = Path(directory).expanduser().resolve()
        self.host = _validate_host(host)
        self.realm = _validate_realm(realm)
        self.domain = _validate_domain(domain)
        if max_runtime_seconds <= 0:
            raise SambaDCError("max_runtime_seconds must be positive")
        self.max_runtime_seconds = max_runtime_seconds
        self.start_timeout = start_timeout
        self._requested_password = admin_password
        self._password: str | None = None
        self._template_cache = Path(template_cache).expanduser().resolve() if template_cache is not None else None
        self._process = _SambaProcess(self.directory, self.host, self.tls_server_name, max_runtime_seconds)
        self.timings: dict[str, float] = {}

    # -- derived names ----------------------------------------------------------------------------

    @property
    def base_dn(self) -> str:
        """The domain naming context, e.g. ``DC=corp,DC=example,DC=test``."""
        return ",".join(f"DC={part}" for part in self.realm.lower().split("."))

    @property
    def tls_server_name(self) -> str:
        """The CN of the DC certificate, lower case."""
        return f"{HOST_NAME}.{self.realm.lower()}"

    @property
    def template_path(self) -> Path:
        """Where the provisioned template for this realm, Samba version and schema version lives."""
        if self._template_cache is not None:
            return self._template_cache
        version = _samba_version(_require("samba"))
        return _default_cache_root() / f"samba-template-{self.realm}-{version}-{_schema_version(self.domain)}"

    @property
    def pid(self) -> int | None:
        """The samba process id while it runs, else None."""
        return self._process.pid

    @property
    def info(self) -> DCInfo:
        """How to reach the DC. Needs a provisioned directory (for the password).

        Raises:
            SambaDCError: The directory is not provisioned yet.
        """
        password = self._password or self._stored_password()
        if password is None:
            raise SambaDCError(f"{self.directory} is not provisioned yet; call ensure_provisioned() or start()")
        return self._info_for(self.directory, password)

    def _stored_password(self) -> str | None:
        if _read_marker(self.directory) is None:
            return None
        try:
            return (self.directory / PASSWORD_FILE).read_text().rstrip("\n")
        except OSError:
            return None

    # -- provisioning -----------------------------------------------------------------------------

    def ensure_provisioned(self) -> None:
        """Provisions ``directory`` unless it already holds a DC; prefers copying the cached template.

        The directory appears complete or not at all: it is built or copied under a temporary name
        next to it and renamed into place.

        Raises:
            SambaDCError: Samba is missing, provisioning failed, or ``directory`` holds something else.
        """
        _check_socket_paths(self.directory)
        if _read_marker(self.directory) is None:
            if self.directory.exists() and (not self.directory.is_dir() or any(self.directory.iterdir())):
                raise SambaDCError(
                    f"{self.directory} exists and is not a provisioned Samba DC directory; refusing to overwrite it"
                )
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_partials(self.directory.parent)
            partial = _make_partial(self.directory.parent)
            try:
                if not self._copy_template_into(partial):
                    self._build(partial, self._requested_password or generate_password())
                _install(partial, self.directory)
            finally:
                if partial.exists():
                    shutil.rmtree(partial, ignore_errors=True)
        self._adopt()

    def _copy_template_into(self, partial: Path) -> bool:
        """Copies the template (building it first if needed) into ``partial``; False if no cache."""
        template = self.template_path
        try:
            template.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            logger.warning("no template cache at %s (%s); provisioning from scratch", template, exc)
            return False
        # One lock per template: builders must not collide (they would also contend for the port),
        # and a copy must not read a template another process is replacing.
        with _file_lock(template.parent / f".{template.name}.lock"):
            if not self._template_usable(template):
                if template.exists():
                    # Only ever delete what we made: template_cache may point anywhere.
                    if not (template / MARKER_FILE).exists():
                        raise SambaDCError(f"{template} exists and is not a Samba DC template; refusing to delete it")
                    logger.info("replacing stale template %s", template)
                    shutil.rmtree(template)
                _remove_stale_partials(template.parent)
                building = _make_partial(template.parent)
                try:
                    # Always a random password: a caller's chosen one must not end up in a shared cache.
                    self._build(building, generate_password())
                    os.rename(building, template)
                finally:
                    if building.exists():
                        shutil.rmtree(building, ignore_errors=True)
                self._prune_superseded_templates(template)
            started = time.monotonic()
            _copy_provisioned(template, partial)
            self.timings["template_copy"] = time.monotonic() - started
            logger.info("copied template %s in %.3f s", template, self.timings["template_copy"])
        return True

    def _prune_superseded_templates(self, current: Path) -> None:
        """Deletes this domain's templates of other Samba or schema versions (33 MB each)."""
        for entry in current.parent.glob("samba-template-*"):
            marker = _read_marker(entry)
            if entry == current or marker is None:
                continue
            if marker.get("realm") != self.realm or marker.get("domain") != self.domain:
                continue  # another domain's template is still current for its users
            lock = os.open(current.parent / f".{entry.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # skip it if someone copies from it now
                logger.info("removing superseded template %s", entry)
                shutil.rmtree(entry, ignore_errors=True)
            except BlockingIOError:
                pass
            finally:
                os.close(lock)

    def _template_usable(self, template: Path) -> bool:
        marker = _read_marker(template)
        if marker is None:
            return False
        return (
            marker.get("realm") == self.realm
            and marker.get("domain") == self.domain
            and marker.get("schema_version") == _schema_version(self.domain)
            and marker.get("samba_version") == _samba_version(_require("samba"))
            and time.time() - float(marker.get("created_at", 0)) < TEMPLATE_MAX_AGE_SECONDS
        )

    def _build(self, target: Path, password: str) -> None:
        """Provisions a domain into the empty directory ``target`` and bakes in the schema extensions."""
        samba_tool = _require("samba-tool")
        _check_socket_paths(target)
        provision_log = target / "log" / "provision.log"
        # Built on any free loopback address but 127.0.0.1 (``make run``'s), so that building never
        # depends on the caller's address being free yet; copies get their own address written in.
        build_host = free_loopback_address()
        options = {
            "interfaces": f"{build_host}/8",
            **_SERVER_OPTIONS,
            "pid directory": str(target / "run"),
            "ncalrpc dir": str(target / "run" / "ncalrpc"),
            "winbindd socket directory": str(target / "run" / "winbindd"),
            "ntp signd socket directory": str(target / "run" / "ntp_signd"),
            "log file": str(target / "log" / "samba.log"),
            # lock, state, cache and private directories default to --targetdir.
        }
        # An empty config, so that the machine's /etc/samba/smb.conf does not leak into the new one.
        with tempfile.NamedTemporaryFile("w", dir=target.parent, prefix=".empty-smb-", suffix=".conf") as empty:
            argv = [
                samba_tool,
                "domain",
                "provision",
                "-s",
                empty.name,
                f"--targetdir={target}",
                f"--realm={self.realm}",
                f"--domain={self.domain}",
                "--server-role=dc",
                "--dns-backend=NONE",
                f"--adminpass={password}",
                f"--host-name={HOST_NAME}",
                *(f"--option={key}={value}" for key, value in options.items()),
            ]
            started = time.monotonic()
            _run(argv, "samba-tool domain provision", log=provision_log)
        self.timings["provision"] = time.monotonic() - started
        logger.info("provisioned %s in %.2f s", target, self.timings["provision"])

        conf, sam = str(target / "etc" / "smb.conf"), str(target / "private" / "sam.ldb")
        _run(
            [samba_tool, "domain", "passwordsettings", "set", "-s", conf, "-H", sam, *_PASSWORD_POLICY],
            "samba-tool domain passwordsettings set",
            log=provision_log,
        )
        _write_private(target / PASSWORD_FILE, password + "\n")

        started = time.monotonic()
        for attempt in range(3):
            process = _SambaProcess(target, build_host, self.tls_server_name, max_runtime_seconds=600)
            try:
                process.start(self.start_timeout)
                break
            except AddressInUseError:
                # Someone took the address since we picked it: move the build to another one.
                if attempt == 2:
                    raise
                build_host = free_loopback_address(exclude=[build_host])
                _rewrite_smb_conf(target, str(target), build_host)
        try:
            _extend_schema(self._info_for(target, password, build_host))
        finally:
            process.stop()
        self.timings["schema"] = time.monotonic() - started
        logger.info("extended the schema (incl. first start and stop) in %.2f s", self.timings["schema"])

        _write_marker(
            target,
            {
                "format": FORMAT_VERSION,
                "realm": self.realm,
                "domain": self.domain,
                "host": build_host,
                "root": str(target),
                "samba_version": _samba_version(_require("samba")),
                "schema_version": _schema_version(self.domain),
                "created_at": time.time(),
            },
        )

    def _info_for(self, directory: Path, password: str, host: str | None = None) -> DCInfo:
        host = host or self.host
        return DCInfo(
            url=f"ldaps://{host}:{LDAPS_PORT}",
            host=host,
            realm=self.realm,
            base_dn=self.base_dn,
            admin_user=f"Administrator@{self.realm.lower()}",
            admin_password=password,
            ca_file=directory / "private" / "tls" / "ca.pem",
            tls_server_name=self.tls_server_name,
        )

    def _adopt(self) -> None:
        """Makes a provisioned ``directory`` fit this object: its path, address and password."""
        marker = _read_marker(self.directory)
        if marker is None:
            raise SambaDCError(f"{self.directory} is not a provisioned Samba DC directory")
        if marker.get("realm") != self.realm or marker.get("domain") != self.domain:
            raise SambaDCError(
                f"{self.directory} holds the domain {marker.get('domain')} / {marker.get('realm')}, "
                f"not {self.domain} / {self.realm}"
            )
        running = self._process.pid is not None
        if marker.get("root") != str(self.directory) or marker.get("host") != self.host:
            if running or _pid_file_holder(self.directory) is not None:
                raise SambaDCError(f"{self.directory} is in use by a running samba; cannot reconfigure it")
            _rewrite_smb_conf(self.directory, str(marker["root"]), self.host)
            marker.update(root=str(self.directory), host=self.host)
            _write_marker(self.directory, marker)
        stored = self._stored_password()
        if stored is None:
            raise SambaDCError(f"{self.directory / PASSWORD_FILE} is missing; re-provision into an empty directory")
        wanted = self._requested_password
        if wanted is not None and wanted != stored:
            if running or _pid_file_holder(self.directory) is not None:
                raise SambaDCError(f"{self.directory} is in use by a running samba; cannot change its password")
            _run(
                [
                    _require("samba-tool"),
                    "user",
                    "setpassword",
                    "Administrator",
                    f"--newpassword={wanted}",
                    "-s",
                    str(self.directory / "etc" / "smb.conf"),
                    "-H",
                    str(self.directory / "private" / "sam.ldb"),
                ],
                "samba-tool user setpassword Administrator",
                log=self.directory / "log" / "provision.log",
            )
            _write_private(self.directory / PASSWORD_FILE, wanted + "\n")
            stored = wanted
        self._password = stored

    # -- running ----------------------------------------------------------------------------------

    def start(self) -> DCInfo:
        """Provisions if needed, starts samba and waits until LDAPS answers; idempotent.

        Returns:
            How to reach the DC.

        Raises:
            SambaDCError: Provisioning failed, a port is taken, or samba died or did not answer in time
                (the message carries the tail of its output).
        """
        if self._process.pid is not None:
            return self.info
        self.ensure_provisioned()
        started = time.monotonic()
        self._process.start(self.start_timeout)
        self.timings["start"] = time.monotonic() - started
        atexit.register(self._stop_at_exit)
        return self.info

    def stop(self) -> None:
        """Stops samba by PID (SIGTERM, then SIGKILL if it lingers) and waits for it; idempotent."""
        started = time.monotonic()
        was_running = self._process.pid is not None
        self._process.stop()
        atexit.unregister(self._stop_at_exit)
        if was_running:
            self.timings["stop"] = time.monotonic() - started

    def wait(self, timeout: float | None = None) -> int | None:
        """Waits for samba to exit by itself (e.g. at ``max_runtime_seconds``).

        Args:
            timeout: Seconds to wait; None waits indefinitely.

        Returns:
            Its exit code, or None if it still runs (or never ran).
        """
        return self._process.wait(timeout)

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def __enter__(self) -> DCInfo:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SambaDC({str(self.directory)!r}, host={self.host!r}, realm={self.realm!r}, pid={self.pid})"


# --------------------------------------------------------------------------------------------------
# Command line.


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, frame: object) -> NoReturn:
    raise _Interrupted(signal.Signals(signum).name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lifecycle.local.samba", description="A throwaway Samba AD DC on a loopback address."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "provision if needed, start, print the DCInfo as JSON and run until SIGINT/SIGTERM"),
        ("provision", "only provision DIR (printing the DCInfo as JSON)"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("directory", type=Path, metavar="DIR")
        command.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
        command.add_argument("--realm", default="CORP.EXAMPLE.TEST")
        command.add_argument("--domain", default="CORP")
        command.add_argument("--template-cache", type=Path, default=None, help="where the provisioned template lives")
        if name == "up":
            command.add_argument(
                "--max-runtime", type=int, default=4 * 3600, help="samba exits by itself after this many seconds"
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        0 on success (for ``up``: stopped by a signal), 1 on failure, 130 if interrupted early.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    dc: SambaDC | None = None
    try:
        dc = SambaDC(
            args.directory,
            host=args.host,
            realm=args.realm,
            domain=args.domain,
            template_cache=args.template_cache,
            max_runtime_seconds=getattr(args, "max_runtime", 4 * 3600),
        )
        if args.command == "provision":
            dc.ensure_provisioned()
            print(json.dumps(dc.info.as_dict()), flush=True)
            return 0
        info = dc.start()
        # One line, so that a script can read exactly one line and go on.
        print(json.dumps({**info.as_dict(), "pid": str(dc.pid)}), flush=True)
        code = dc.wait()
        print(
            f"samba-dc: error: the DC exited by itself (exit code {code}; log: {dc.directory / CONSOLE_LOG})",
            file=sys.stderr,
        )
        return 1
    except _Interrupted:
        return 0 if dc is not None and dc.pid is not None else 130
    except (LifecycleError, OSError, subprocess.SubprocessError) as exc:
        summary = exc.summary if isinstance(exc, SambaDCError) else str(exc)
        print(f"samba-dc: error: {summary.splitlines()[0] if summary else type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        # Ignore further signals while stopping, so a second Ctrl-C cannot orphan samba half-way.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        if dc is not None:
            dc.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
