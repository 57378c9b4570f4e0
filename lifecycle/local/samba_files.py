"""A throwaway Samba file server on loopback, serving SMB shares for home-folder tests and local runs.

A standalone ``smbd`` (``server role = standalone server``) with its own smb.conf, passdb, locks and logs in
a private directory, listening on one loopback address and a free port, with one share per given directory.
The user is the OS account running it (smbd needs root to serve files as users); its SMB password lives in
the private passdb only. Shares keep NT ACLs in extended attributes (``vfs_acl_xattr``), so the access a
joiner's folder gets is stored and read back exactly as a Windows file server would.

Links: SMB 2 clients cannot tell a Samba symlink from its target (Samba reports no reparse point), so the
shares are configured as a home share should be: ``follow symlinks = no`` (links are invisible to clients)
and ``wide links = no`` (Samba's default). A folder that still holds such an invisible link cannot be removed
over SMB, and the service stops there instead of following it.

Started and stopped by PID (the whole process group smbd forks into); ``with SambaFileServer(...) as info``.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lifecycle.errors import LifecycleError
from lifecycle.local.samba import free_loopback_address
from lifecycle.local.samba.base import owns_listener

logger = logging.getLogger(__name__)


class FileServerError(LifecycleError):
    """The file server could not be set up or started; the message carries the log's tail."""


@dataclass(frozen=True)
class FileServerInfo:
    host: str
    port: int
    user: str
    password: str
    # Share name -> the directory it serves on this machine (tests look there directly).
    shares: dict[str, Path] = field(default_factory=dict)

    def unc(self, share: str, *parts: str) -> str:
        """``\\\\host\\share\\part...``, as homeDirectory holds it."""
        return "\\\\" + "\\".join((self.host, share, *parts))

    def root(self, share: str, *parts: str, **extra: object) -> dict[str, object]:
        """The ``LIFECYCLE_FILE_ROOTS`` entry (as a dict) for a share or a folder in it."""
        return {
            "path": self.unc(share, *parts),
            "port": self.port,
            "username": self.user,
            "password": self.password,
            **extra,
        }


def smbd_available() -> bool:
    """smbd and smbpasswd are installed and we may run them (smbd serves files as users: root only)."""
    return bool(shutil.which("smbd") and shutil.which("smbpasswd")) and os.geteuid() == 0


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _password() -> str:
    alphabet = string.ascii_letters + string.digits
    return "Fs-" + "".join(secrets.choice(alphabet) for _ in range(24))


class SambaFileServer:
    """One smbd serving ``shares`` (name -> directory) on a loopback address."""

    def __init__(
        self,
        directory: Path,
        shares: Mapping[str, Path],
        *,
        host: str | None = None,
        port: int | None = None,
        exclude_hosts: tuple[str, ...] = ("127.0.0.1",),
    ) -> None:
        self.directory = directory
        self.shares = dict(shares)
        self.host = host or free_loopback_address(exclude=list(exclude_hosts))
        self.port = port or _free_port(self.host)
        self.user = getpass.getuser()
        self.password = _password()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def info(self) -> FileServerInfo:
        return FileServerInfo(self.host, self.port, self.user, self.password, dict(self.shares))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def log_file(self) -> Path:
        return self.directory / "log" / "smbd.console"

    def _config(self) -> str:
        d = self.directory
        lines = [
            "[global]",
            "server role = standalone server",
            "workgroup = LIFECYCLE",
            "netbios name = FILES",
            # Samba binds to interfaces by address/mask; a /8 matches the loopback device for any 127.x address.
            f"interfaces = {self.host}/8",
            "bind interfaces only = yes",
            f"smb ports = {self.port}",
            "disable netbios = yes",
            "server services = smb",
            f"passdb backend = tdbsam:{d / 'private' / 'passdb.tdb'}",
            f"private dir = {d / 'private'}",
            f"lock directory = {d / 'lock'}",
            f"state directory = {d / 'state'}",
            f"cache directory = {d / 'cache'}",
            f"pid directory = {d / 'run'}",
            f"ncalrpc dir = {d / 'run' / 'ncalrpc'}",
            f"log file = {d / 'log' / 'smbd.log'}",
            "max log size = 1000",
            "load printers = no",
            "printing = bsd",
            "printcap name = /dev/null",
            "disable spoolss = yes",
            "server min protocol = SMB2_10",
            "server signing = mandatory",
            "smb encrypt = required",
            "vfs objects = acl_xattr",
            "acl_xattr:ignore system acls = yes",
            "map acl inherit = yes",
            "",
        ]
        for name, path in self.shares.items():
            # follow symlinks = no: SMB 2 clients cannot tell a Samba symlink from what it points to, so the
            # server must not follow any (the hardening docs/homefolders-and-scripts.md asks of home shares).
            lines += [f"[{name}]", f"path = {path}", "read only = no", "follow symlinks = no", ""]
        return "\n".join(lines)

    def start(self, timeout: float = 30.0) -> FileServerInfo:
        """Write the configuration, set the password, start smbd and wait until it answers."""
        if self.pid is not None:
            return self.info
        smbd, smbpasswd = shutil.which("smbd"), shutil.which("smbpasswd")
        if not smbd or not smbpasswd:
            raise FileServerError("smbd is not installed (apt-get install samba)")
        for sub in ("private", "lock", "state", "cache", "run", "log"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory / "private", 0o700)
        for path in self.shares.values():
            path.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "smb.conf"
        conf.write_text(self._config(), encoding="utf-8")
        result = subprocess.run(
            [smbpasswd, "-c", str(conf), "-s", "-a", self.user],
            input=f"{self.password}\n{self.password}\n".encode(),
            capture_output=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            raise FileServerError(f"smbpasswd failed: {result.stderr.decode(errors='replace').strip()}")
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [smbd, "--foreground", "--no-process-group", "-s", str(conf), "--debug-stdout", "-d", "1"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: smbd forks a child per client and helpers; stop() ends them all.
                start_new_session=True,
                close_fds=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        logger.info("smbd pid %d serving %s on %s:%d", self._proc.pid, ", ".join(self.shares), self.host, self.port)
        return self.info

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise FileServerError(f"smbd exited with code {code}: {self._tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    pass
            except OSError:
                pass
            else:
                # Something answers; ready only when the listening socket is smbd's (not another server's
                # that took the address and port first).
                if owns_listener(self._proc.pid, self.host, self.port):
                    return
                raise FileServerError(f"{self.host}:{self.port} answers, but not from smbd pid {self._proc.pid}")
            if time.monotonic() > deadline:
                raise FileServerError(
                    f"smbd on {self.host}:{self.port} not ready after {timeout:.0f} s: {self._tail()}"
                )
            time.sleep(0.05)

    def _tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to smbd's process group (by its PID), SIGKILL if it lingers; reaps it."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        # Wait for smbd to exit without reaping it: while it is an unreaped zombie its pid (our group id)
        # cannot be reused, so the SIGKILL below reaches only what it forked (a child per connection).
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._proc = None

    def __enter__(self) -> FileServerInfo:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
