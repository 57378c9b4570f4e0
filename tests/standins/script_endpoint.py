"""A stand-in for a script endpoint (an Azure Automation runbook webhook or a Logic App), over HTTPS on 127.0.0.1.

It follows what such an endpoint does, errors included: it checks the ``X-Lifecycle-Signature`` HMAC over the
raw body in constant time (401 otherwise) and refuses a timestamp more than five minutes off (401); it
answers 202 with ``{"JobIds": [...]}`` and a ``Location`` status URL for job-style endpoints (the status URL
answers 202 while the job runs, then 200 with the job's result), 429 with ``Retry-After`` when throttling,
5xx when failing, 400 on a body it cannot read. Each path is a behaviour:

- ``/ok``: 200 ``{"status": "ok", "output": {...}}`` (the output echoes args, plus a "token" to be redacted)
- ``/job``: 202, the job completes after one status poll
- ``/throttle``: 429 with ``Retry-After: 7``; ``/unavailable``: 503; ``/bad``: 400; ``/retry``: 200 status retry
- ``/slow``: answers after ``slow_seconds`` (longer than the caller's timeout)

Every accepted (correctly signed) request is recorded; tests assert on ``calls``.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from hashlib import sha256
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.standins.tls import LoopbackTLSServer, serve_in_background, server_tls, shut_down

MAX_SKEW_SECONDS = 300


@dataclass
class Call:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class _State:
    secret: bytes
    calls: list[Call] = field(default_factory=list)
    rejected: int = 0
    polls: dict[str, int] = field(default_factory=dict)
    slow_seconds: float = 3.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(LoopbackTLSServer):
    state: _State

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that hung up (the time-out test) is not an error of the stand-in


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return

    def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _signed(self, payload: bytes) -> bool:
        state = self.server.state
        header = self.headers.get("X-Lifecycle-Signature", "")
        expected = "sha256=" + hmac.new(state.secret, payload, sha256).hexdigest()
        try:
            skew = abs(time.time() - int(self.headers.get("X-Lifecycle-Timestamp", "0")))
        except ValueError:
            skew = MAX_SKEW_SECONDS + 1
        return hmac.compare_digest(expected.encode(), header.encode()) and skew <= MAX_SKEW_SECONDS

    def do_POST(self) -> None:
        state = self.server.state
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not self._signed(raw):
            with state.lock:
                state.rejected += 1
            self._reply(401, {"error": "bad signature"})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._reply(400, {"error": "not JSON"})
            return
        with state.lock:
            state.calls.append(Call(self.path, body, dict(self.headers.items())))
            number = len(state.calls)
        if self.path == "/ok":
            self._reply(200, {"status": "ok", "output": {"echo": body.get("args"), "token": "tok-should-not-show"}})
        elif self.path == "/job":
            job = f"job-{number}"
            self._reply(202, {"JobIds": [job]}, {"Location": f"/jobs/{job}"})
        elif self.path == "/throttle":
            self._reply(429, {"error": "throttled"}, {"Retry-After": "7"})
        elif self.path == "/unavailable":
            self._reply(503, {"error": "down"})
        elif self.path == "/bad":
            self._reply(400, {"error": "mailbox not found"})
        elif self.path == "/retry":
            self._reply(200, {"status": "retry", "retry_after": 42, "output": "mailbox busy"})
        elif self.path == "/slow":
            time.sleep(state.slow_seconds)
            self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": "no such endpoint"})

    def do_GET(self) -> None:
        state = self.server.state
        if not self._signed(self.path.split("?")[0].encode()):
            self._reply(401, {"error": "bad signature"})
            return
        if not self.path.startswith("/jobs/"):
            self._reply(404, {"error": "no such job"})
            return
        with state.lock:
            seen = state.polls.get(self.path, 0)
            state.polls[self.path] = seen + 1
        if seen == 0:
            self._reply(202, {"status": "running"})
        else:
            self._reply(200, {"status": "ok", "output": {"job": self.path.rsplit("/", 1)[1], "done": True}})


class ScriptEndpoint:
    """The stand-in server; ``https=False`` serves plain HTTP (loopback only)."""

    def __init__(self, directory: Path, secret: str, *, https: bool = True) -> None:
        self.directory = directory
        self.secret = secret
        self.https = https
        self.state = _State(secret.encode())
        self.ca_file: Path | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def calls(self) -> list[Call]:
        with self.state.lock:
            return list(self.state.calls)

    def url(self, path: str) -> str:
        assert self._server is not None
        scheme = "https" if self.https else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}{path}"

    def start(self) -> ScriptEndpoint:
        tls = None
        if self.https:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.ca_file, tls = server_tls(self.directory)
        server = _Server(("127.0.0.1", 0), _Handler)
        server.state = self.state
        server.tls = tls
        self._server = server
        self._thread = serve_in_background(server)
        return self

    def stop(self) -> None:
        shut_down(self._server, self._thread)
        self._server, self._thread = None, None
