"""The samba process: starting ``samba -i -M single`` in its own process group, readiness over TLS, stopping."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

from lifecycle.local.samba.base import (
    CONSOLE_LOG,
    DC_PORTS,
    LDAPS_PORT,
    AddressInUseError,
    SambaDCError,
    _port_open,
    _require,
    _tail,
    _which,
    owns_listener,
)
from lifecycle.local.samba.directories import _pid_file_holder

logger = logging.getLogger("lifecycle.local.samba")  # one logger name for the whole harness, as before

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
                except OSError as exc:  # includes ssl.SSLError
                    last_error = f"{type(exc).__name__}: {exc}"
                else:
                    # Copies of one template share its certificate: the answer proves a DC, not ours.
                    if owns_listener(self._proc.pid, self.host, LDAPS_PORT):
                        return
                    raise AddressInUseError(
                        f"{self.host}:{LDAPS_PORT} answers, but not from samba pid {self._proc.pid} (another DC "
                        "took the address first); choose another loopback address"
                    )
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
