"""The Samba file server is ready only when the listener that answers is its own smbd's.

Fails on the code before: readiness was "something accepts a connection on the address and port", so a server
of another session that held them first passed for ours, and the tests would have written to its shares.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from lifecycle.local.samba import free_loopback_address, release_loopback_address
from lifecycle.local.samba_files import FileServerError, SambaFileServer, smbd_available

pytestmark = pytest.mark.integration


def test_a_file_server_whose_address_and_port_another_server_holds_is_not_reported_ready(tmp_path: Path) -> None:
    if not smbd_available():
        if os.environ.get("CI"):
            pytest.fail("smbd is not installed or not runnable as root: CI must not skip this test")
        pytest.skip("smbd is not installed (make test installs samba) or we are not root")
    host = free_loopback_address()
    try:
        with socket.create_server((host, 0)) as foreign:  # another server got there first
            port = int(foreign.getsockname()[1])
            server = SambaFileServer(tmp_path / "server", {"staff": tmp_path / "staff"}, host=host, port=port)
            try:
                with pytest.raises(FileServerError):
                    server.start(timeout=30)
                assert server.pid is None  # stopped by its PID, not left running
            finally:
                server.stop()  # by its PID, also when the old readiness check let it "start"
    finally:
        release_loopback_address(host)
