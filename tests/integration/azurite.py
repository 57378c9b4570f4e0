"""Azurite, the real Azure Storage emulator (npm ``azurite``), on a loopback address of its own, in memory.

Started once per test session by the ``azurite`` fixture and stopped by its PID. Its address is reserved for
this session machine-wide (``free_loopback_address``), so nobody else's server takes its ports, and it is
ready only when the socket listening on its table port is its own (not merely something that answers). Each
test that needs tables takes its own table-name prefix, so tests never see each other's rows.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lifecycle.local.samba import free_loopback_address
from lifecycle.local.samba.base import owns_listener

ROOT = Path(__file__).resolve().parents[2]
AZURITE = ROOT / "node_modules" / ".bin" / "azurite"
# Azurite's well-known development account (public, documented; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_prefixes = itertools.count(1)


@dataclass(frozen=True)
class Azurite:
    pid: int
    table_port: int
    host: str = "127.0.0.1"

    @property
    def table_endpoint(self) -> str:
        return f"http://{self.host}:{self.table_port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint={self.table_endpoint};"
        )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def table_prefix() -> str:
    """A prefix unique to one test (table names: letters and digits, starting with a letter)."""
    return f"t{next(_prefixes)}{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    if not AZURITE.exists():
        if os.environ.get("CI"):
            pytest.fail("node_modules/.bin/azurite is missing: `make setup` runs npm ci")
        pytest.skip("Azurite is not installed (make setup runs npm ci)")
    host = free_loopback_address(exclude=["127.0.0.1"])
    ports = [_free_port(host) for _ in range(3)]
    workdir = tmp_path_factory.mktemp("azurite")
    log = (workdir / "azurite.log").open("wb")
    process = subprocess.Popen(
        [
            str(AZURITE),
            "--silent",
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--blobHost",
            host,
            "--blobPort",
            str(ports[0]),
            "--queueHost",
            host,
            "--queuePort",
            str(ports[1]),
            "--tableHost",
            host,
            "--tablePort",
            str(ports[2]),
        ],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not _listening(host, ports[2]):
            if process.poll() is not None:
                raise RuntimeError(f"Azurite exited with {process.returncode}: {(workdir / 'azurite.log').read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("Azurite did not listen within 30 s")
            time.sleep(0.05)
        if not owns_listener(process.pid, host, ports[2]):
            raise RuntimeError(f"{host}:{ports[2]} answers, but not from Azurite pid {process.pid}")
        yield Azurite(process.pid, ports[2], host)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
