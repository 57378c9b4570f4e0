"""``make run``: a throwaway Samba AD DC on loopback, the OUs and groups of the example mapping, and the service.

Writes ``.local/dev.env`` with the same ``LIFECYCLE_*`` names the service reads, so a person can look at what
happened (``ldapsearch``, ``lifecycle audit``) and post signed webhooks. Ctrl-C stops the service and the DC.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
from pathlib import Path

from lifecycle.halo.auth import check_configured
from lifecycle.local.bootstrap import ensure_containers
from lifecycle.local.samba import DCInfo, SambaDC, samba_available
from lifecycle.local.server import LocalHost
from lifecycle.observability import configure_logging
from lifecycle.private_files import private_folder
from lifecycle.runtime import Runtime
from lifecycle.settings import Settings
from lifecycle.targets.ad import ADTarget


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (no shell quoting), as written by ``write_env_file``."""
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#"):
                values[key.strip()] = value
    return values


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """Write atomically with mode 0600: it holds the local DC's admin password and the webhook secrets."""
    private_folder(path.parent)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    # A temporary file left by an older run keeps its mode through O_CREAT: tighten it before writing.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("# Written by `make run` for the local throwaway DC; not for production.\n")
        for key, value in values.items():
            handle.write(f"{key}={value}\n")
    os.replace(temporary, path)


def dev_environment(info: DCInfo, data_dir: Path, port: int, previous: dict[str, str]) -> dict[str, str]:
    """The settings for the local service against the throwaway DC (webhook secrets kept across runs)."""
    return {
        "LIFECYCLE_AD_URL": info.url,
        "LIFECYCLE_AD_USER": info.admin_user,
        "LIFECYCLE_AD_PASSWORD": info.admin_password,
        "LIFECYCLE_AD_CA_FILE": str(info.ca_file),
        "LIFECYCLE_AD_TLS_SERVER_NAME": info.tls_server_name,
        "LIFECYCLE_AD_BASE_DN": info.base_dn,
        "LIFECYCLE_DATA_DIR": str(data_dir),
        # The shell's choice first (LIFECYCLE_MAPPING_FILE=mapping.cloud-only.example.toml make run), then
        # the last run's.
        "LIFECYCLE_MAPPING_FILE": os.environ.get("LIFECYCLE_MAPPING_FILE")
        or previous.get("LIFECYCLE_MAPPING_FILE", "mapping.example.toml"),
        "LIFECYCLE_PORT": str(port),
        "LIFECYCLE_WEBHOOK_BASIC_USER": previous.get("LIFECYCLE_WEBHOOK_BASIC_USER", "halo"),
        "LIFECYCLE_WEBHOOK_BASIC_PASSWORD": previous.get("LIFECYCLE_WEBHOOK_BASIC_PASSWORD")
        or secrets.token_urlsafe(18),
        "LIFECYCLE_WEBHOOK_HMAC_SECRET": previous.get("LIFECYCLE_WEBHOOK_HMAC_SECRET") or secrets.token_urlsafe(24),
    }


def run_dev(directory: Path, *, host: str = "127.0.0.1", port: int = 7071) -> int:
    """Provision (or reuse) and start the DC, prepare the directory, serve until Ctrl-C or SIGTERM."""
    if not samba_available():
        print("lifecycle: error: samba is not installed (make run installs it with apt-get)", file=sys.stderr)
        return 2
    directory = directory.resolve()
    env_file = directory / "dev.env"
    dc = SambaDC(directory / "samba", host=host)
    dc.ensure_provisioned()
    info = dc.start()
    try:
        values = dev_environment(info, directory / "data", port, read_env_file(env_file))
        write_env_file(env_file, values)
        os.environ.update(values)
        settings = Settings()
        configure_logging(settings.log_level, settings.secret_values())
        check_configured(settings)
        runtime = Runtime(settings)
        target = ADTarget("default", settings.ad_connection("default"))
        try:
            added = ensure_containers(target, runtime.mapping)
        finally:
            target.close()
        service = LocalHost(runtime)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        service.start()
        print(
            f"\nhalo-lifecycle is running on {service.url}  (AD DC {info.url}, pid {dc.pid})\n"
            f"  settings for your shell:  set -a; . {env_file}; set +a\n"
            f"  {len(added)} OU(s)/group(s) created for the example mapping\n"
            f'  try:  curl -u "$LIFECYCLE_WEBHOOK_BASIC_USER:$LIFECYCLE_WEBHOOK_BASIC_PASSWORD" '
            f"-H 'Content-Type: application/json' --data @tests/events/runbook-created.json "
            f"{service.url}/api/halo/events\n"
            f"  console:  {service.url}/api/console/\n"
            f"  sign in to it once with:  {service.console_sign_in_link()}\n"
            "  Ctrl-C stops the service and the DC.\n",
            file=sys.stderr,
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            service.stop()
            runtime.close()
    finally:
        dc.stop()
    return 0
