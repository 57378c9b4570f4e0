"""Constants, errors, DCInfo and small host helpers (addresses, passwords, files, locks) of the Samba DC."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import ipaddress
import os
import random
import re
import secrets
import shutil
import socket
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lifecycle.errors import LifecycleError

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


def _listening_inodes(host: str, port: int) -> set[int]:
    """The socket inodes listening on ``host:port`` (or on any address, port ``port``), from /proc/net/tcp."""
    wanted = {
        f"{int(ipaddress.IPv4Address(address)).to_bytes(4, 'big')[::-1].hex().upper()}:{port:04X}"
        for address in (host, "0.0.0.0")  # noqa: S104 - matched, not bound
    }
    inodes: set[int] = set()
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            if fields[1] in wanted and fields[3] == "0A":  # TCP_LISTEN
                inodes.add(int(fields[9]))
    return inodes


def owns_listener(pid: int, host: str, port: int) -> bool:
    """Whether process ``pid`` holds the socket that listens on ``host:port``.

    A readiness check that only connects cannot tell our server from another that took the address and port
    first (another session's, started from the same template with the same certificate); the socket's inode
    in /proc/net/tcp and the process's open files can. Where there is no /proc (not Linux) it cannot tell,
    and answers True.
    """
    if not os.path.exists("/proc/net/tcp"):
        return True
    inodes = _listening_inodes(host, port)
    if not inodes:
        return False
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in descriptors:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{name}")
            if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                return True
    return False


# Loopback addresses handed out by free_loopback_address, reserved machine-wide: each has a file here that
# the process holding it keeps locked (flock) until it exits or releases it. A stopped DC's address stays
# reserved while the DC is down (an outage test restarts it there a minute later), so no other session's DC
# or file server moves in meanwhile; a process that dies drops its locks with it.
RESERVATIONS: Final = Path(tempfile.gettempdir()) / "halo-lifecycle-loopback"
_reserved: dict[str, int] = {}


def reserve_loopback_address(address: str) -> bool:
    """Reserve ``address`` for this process, machine-wide; False when another process holds it.

    Reserving an address this process holds already is a no-op that returns True.
    """
    if address in _reserved:
        return True
    if not RESERVATIONS.is_dir():
        RESERVATIONS.mkdir(parents=True, exist_ok=True)
        # Shared by every user's sessions, like /tmp itself: anyone may add a file, only its owner remove it.
        with contextlib.suppress(OSError):
            RESERVATIONS.chmod(0o1777)
    try:
        # Read-only is enough to flock, so another user's file (0644) reserves for anyone.
        fd = os.open(RESERVATIONS / address, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        return False  # cannot tell whether someone holds it: leave it alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _reserved[address] = fd
    return True


def release_loopback_address(address: str) -> None:
    """Give back an address this process reserved (nothing happens for one it does not hold)."""
    fd = _reserved.pop(address, None)
    if fd is not None:
        os.close(fd)  # drops the flock; the file stays, unlocked, for the next taker


def free_loopback_address(*, exclude: Sequence[str] = ()) -> str:
    """Returns a 127.0.0.x address on which none of the DC ports is in use, reserved for this process.

    Candidates are tried in random order so that two test sessions started together are unlikely
    to pick the same one; 127.0.0.1 is never offered (it is ``make run``'s default). An address another
    process reserved (``reserve_loopback_address``) is skipped even while nothing listens on it: a DC it
    stopped for a while comes back there. The reservation lasts until this process exits or calls
    ``release_loopback_address``.

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
        if address in exclude or address in _reserved:
            continue
        if any(_port_open(address, port, timeout=0.2) for port in DC_PORTS):
            continue
        if reserve_loopback_address(address):
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
