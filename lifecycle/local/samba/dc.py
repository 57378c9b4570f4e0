"""SambaDC: provisioning (from a cached template), adoption of a running DC, start and stop."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from lifecycle.local.samba.base import (
    FORMAT_VERSION,
    HOST_NAME,
    LDAPS_PORT,
    MARKER_FILE,
    PASSWORD_FILE,
    TEMPLATE_MAX_AGE_SECONDS,
    AddressInUseError,
    DCInfo,
    SambaDCError,
    _file_lock,
    _require,
    _run,
    _samba_version,
    _validate_domain,
    _validate_host,
    _validate_realm,
    _write_private,
    free_loopback_address,
    generate_password,
    release_loopback_address,
)
from lifecycle.local.samba.directories import (
    _check_socket_paths,
    _copy_provisioned,
    _install,
    _make_partial,
    _pid_file_holder,
    _read_marker,
    _remove_stale_partials,
    _rewrite_smb_conf,
    _write_marker,
)
from lifecycle.local.samba.process import _SambaProcess
from lifecycle.local.samba.schema import _PASSWORD_POLICY, _SERVER_OPTIONS, _extend_schema, _schema_version

logger = logging.getLogger("lifecycle.local.samba")  # one logger name for the whole harness, as before


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
                taken, build_host = build_host, free_loopback_address(exclude=[build_host])
                release_loopback_address(taken)
                _rewrite_smb_conf(target, str(target), build_host)
        try:
            _extend_schema(self._info_for(target, password, build_host))
        finally:
            process.stop()
            # Only the build ran there; copies get an address of their own (a build that fails before this
            # keeps its address reserved until the process ends).
            release_loopback_address(build_host)
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
