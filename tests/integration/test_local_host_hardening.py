"""The local host over a real socket: malformed framing, unserved methods, slow clients and connection bursts."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lifecycle.local.server import LocalHost
from lifecycle.runtime import Runtime
from tests.conftest import make_settings

pytestmark = pytest.mark.integration
BASIC = "Basic " + base64.b64encode(b"halo:basic-secret-value").decode()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., LocalHost]]:
    hosts: list[LocalHost] = []

    def start(**options: Any) -> LocalHost:
        runtime = Runtime(make_settings(tmp_path / str(len(hosts))))
        host = LocalHost(runtime, host="127.0.0.1", port=0, workers=1, **options)
        host.start()
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        host.stop()
        host.runtime.close()


def exchange(host: LocalHost, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the whole answer (the server closes), return status, headers and body."""
    address, port = host.url.removeprefix("http://").split(":")
    with socket.create_connection((address, int(port)), timeout=10) as conn:
        conn.sendall(raw)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ", 2)[1]), headers, body


def post_with_length(host: LocalHost, *lengths: str) -> bytes:
    framing = "".join(f"Content-Length: {value}\r\n" for value in lengths)
    return (
        f"POST /api/halo/events HTTP/1.1\r\nHost: x\r\nAuthorization: {BASIC}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n{{}}"
    ).encode()


def queued(host: LocalHost) -> int:
    counts: dict[str, int] = host.runtime.queue.counts()  # type: ignore[attr-defined]
    return sum(counts.values())


@pytest.mark.parametrize("lengths", [("abc",), ("-1",), ("1 2",), ("+2",), ("\u0662",), ("2", "3"), ("0x2",)])
def test_a_malformed_content_length_is_a_400_problem(serve: Callable[..., LocalHost], lengths: tuple[str]) -> None:
    host = serve()
    raw = post_with_length(host, *lengths)
    status, headers, body = exchange(host, raw.decode("latin-1").encode("utf-8"))
    assert status == 400 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["type"].endswith("#content-length")
    assert queued(host) == 0


@pytest.mark.parametrize("method", ["TRACE", "DELETE", "PATCH", "OPTIONS", "CONNECT", "FOO"])
def test_a_method_the_host_does_not_serve_is_a_405_problem(serve: Callable[..., LocalHost], method: str) -> None:
    host = serve()
    status, headers, body = exchange(host, f"{method} /api/halo/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 405 and headers["content-type"] == "application/problem+json"
    assert headers["allow"] == "GET, POST" and json.loads(body)["status"] == 405


def test_a_malformed_request_line_is_a_problem_not_an_html_page(serve: Callable[..., LocalHost]) -> None:
    host = serve()
    status, headers, body = exchange(host, b"GET /api/health HTTP/9\r\n\r\n")
    assert status in (400, 505) and headers["content-type"] == "application/problem+json"
    assert b"<html" not in body.lower()


def test_a_client_that_stalls_is_disconnected(serve: Callable[..., LocalHost]) -> None:
    host = serve(request_timeout=0.3)
    address, port = host.url.removeprefix("http://").split(":")
    with socket.create_connection((address, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /api/halo/events HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        assert conn.recv(4096) == b""  # closed by the server, long before this socket's own 10 s


def test_connections_past_the_limit_get_503_and_the_slot_comes_back(serve: Callable[..., LocalHost]) -> None:
    host = serve(max_connections=2)
    address, port = host.url.removeprefix("http://").split(":")
    idle = [socket.create_connection((address, int(port)), timeout=10) for _ in range(2)]
    try:
        for conn in idle:
            conn.sendall(b"GET /api/health HTTP/1.1\r\n")  # headers never finished: each holds its slot
        status, headers, body = exchange(host, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body)["title"] == "Busy"
    finally:
        for conn in idle:
            conn.close()
    deadline = time.monotonic() + 30
    while httpx.get(f"{host.url}/api/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the slots never came back"
