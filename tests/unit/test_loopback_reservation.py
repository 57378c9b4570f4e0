"""Loopback addresses stay with the session that took them, and a readiness check knows whose listener answers.

A DC stopped for a while (the outage test stops the reliability suite's for a minute) used to free its address
for anyone: the next session's picker saw its ports closed and handed the address out, so the restarted DC
could not bind, or, started from the same template, another session's DC answered in its place. Another
process here plays the other session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from lifecycle.local.samba import SambaDCError, free_loopback_address, release_loopback_address
from lifecycle.local.samba.base import owns_listener, reserve_loopback_address
from tests.conftest import ROOT

# The other session: reserves an address (or listens on one), says so, and holds it until its stdin closes.
OTHER = """
import socket, sys
from lifecycle.local.samba.base import reserve_loopback_address
mode, address = sys.argv[1], sys.argv[2]
if mode == "reserve":
    print(reserve_loopback_address(address), flush=True)
else:
    server = socket.create_server((address, 0))
    print(server.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.fixture
def other_session() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


def start_other(started: list[subprocess.Popen[str]], mode: str, address: str) -> str:
    child = subprocess.Popen(
        [sys.executable, "-c", OTHER, mode, address],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    started.append(child)
    assert child.stdout is not None
    return child.stdout.readline().strip()


def test_an_address_another_session_reserved_is_never_offered_though_nothing_listens_on_it(
    other_session: list[subprocess.Popen[str]],
) -> None:
    address = free_loopback_address()
    release_loopback_address(address)  # as if this session had never had it
    assert start_other(other_session, "reserve", address) == "True"
    # Nothing listens there (its DC is stopped), yet it is not ours to take.
    everything_else = [f"127.0.0.{n}" for n in range(2, 255) if f"127.0.0.{n}" != address]
    with pytest.raises(SambaDCError, match="no free loopback address"):
        free_loopback_address(exclude=everything_else)
    assert reserve_loopback_address(address) is False


def test_an_address_stays_reserved_after_its_server_stops_until_it_is_given_back(
    other_session: list[subprocess.Popen[str]],
) -> None:
    address = free_loopback_address()
    # This session's DC on it stops (nothing listens); the other session still cannot have the address.
    assert start_other(other_session, "reserve", address) == "False"
    release_loopback_address(address)
    assert start_other(other_session, "reserve", address) == "True"


def test_a_listener_is_ours_only_when_our_process_holds_its_socket(
    other_session: list[subprocess.Popen[str]],
) -> None:
    address = free_loopback_address()
    try:
        port = int(start_other(other_session, "listen", address))
        child = other_session[-1]
        assert owns_listener(child.pid, address, port)
        # Something answers there, but it is not this process's server.
        with socket.create_connection((address, port), timeout=5):
            pass
        assert not owns_listener(os.getpid(), address, port)
        assert not owns_listener(child.pid, address, port + 1 if port < 65535 else port - 1)
    finally:
        release_loopback_address(address)
