"""The local host for ``lifecycle serve``: the ingress over HTTP and the worker threads, in one process.

The worker threads block on the embedded queue, which wakes them the moment the ingress enqueues, so a change
reaches AD in about the time the DC takes, not on a polling tick.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from lifecycle.ingress import Ingress, Request, Response, problem
from lifecycle.observability import log
from lifecycle.requests.http import TicketRoutes
from lifecycle.runtime import Runtime
from lifecycle.worker import Worker

EVENTS_PATH = "/api/halo/events"
HEALTH_PATH = "/api/health"
# Ticket requests: POST tickets (webhooks, runbooks), GET a request's state.
TICKETS_PATH = "/api/halo/tickets"
REQUESTS_PATH = "/api/halo/requests/"
# How often open ticket requests are re-read (the safety net under the ticket webhook).
REQUEST_POLL_SECONDS = 300.0
# The mass-change guard's operator routes: GET .../held, POST .../held/{id}/approve|reject.
MANAGE_HELD_PATH = "/api/manage/held"
# The operator console (lifecycle/console): HTML pages, GET and POST.
CONSOLE_PATH = "/api/console"
# How often staged work (deletions N days after a leaver) is checked for being due.
DUE_CHECK_SECONDS = 60.0


class _Handler(BaseHTTPRequestHandler):
    server_version = "halo-lifecycle"
    sys_version = ""
    ingress: Ingress  # set on the subclass made per host
    tickets: TicketRoutes
    console: Any  # lifecycle.console.app.Console, set likewise

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("http: " + format, *args)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        if url.path == HEALTH_PATH and method == "GET":
            self._send(self.ingress.health())
            return
        if url.path == MANAGE_HELD_PATH or url.path.startswith(MANAGE_HELD_PATH + "/"):
            self._manage(method, url.path, query)
            return
        if url.path == CONSOLE_PATH or url.path.startswith(CONSOLE_PATH + "/"):
            self._console(method, url.path[len(CONSOLE_PATH) :], query)
            return
        if url.path.startswith(REQUESTS_PATH):
            request = Request(method, b"", dict(self.headers.items()), query)
            self._send(self.tickets.request_status(request, url.path[len(REQUESTS_PATH) :]))
            return
        if url.path not in (EVENTS_PATH, TICKETS_PATH):
            self._send(problem(404, "Not found", f"no route {url.path}; events go to POST {EVENTS_PATH}", slug="route"))
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self.close_connection = True
            self._send(problem(411, "Length required", "send a Content-Length header", slug="length"))
            return
        length = int(length_header)
        if length > self.ingress.settings.max_body_bytes:
            # Answer without reading an oversized body, and close: the rest of it is never read.
            self.close_connection = True
            self._send(self.ingress.events(Request(method, b"", dict(self.headers.items()), query)))
            return
        body = self.rfile.read(length)
        handle = self.ingress.events if url.path == EVENTS_PATH else self.tickets.tickets
        self._send(handle(Request(method, body, dict(self.headers.items()), query)))

    def _manage(self, method: str, path: str, query: dict[str, str]) -> None:
        parts = [p for p in path[len(MANAGE_HELD_PATH) :].split("/") if p]
        if len(parts) not in (0, 2):
            self._send(problem(404, "Not found", f"no route {path}", slug="route"))
            return
        body = b""
        if method == "POST":
            length_header = self.headers.get("Content-Length", "0")
            length = int(length_header) if length_header.isdigit() else -1
            if length < 0 or length > self.ingress.settings.max_body_bytes:
                self.close_connection = True
                self._send(problem(413, "Body too large", "send a small JSON body, or none", slug="413"))
                return
            body = self.rfile.read(length)
        held_id, decision = (parts[0], parts[1]) if parts else (None, None)
        request = Request(method, body, dict(self.headers.items()), query)
        self._send(self.ingress.manage_held(request, held_id, decision))

    def _console(self, method: str, path: str, query: dict[str, str]) -> None:
        body = b""
        if method == "POST":
            length_header = self.headers.get("Content-Length", "0")
            length = int(length_header) if length_header.isdigit() else -1
            if length < 0 or length > self.ingress.settings.max_body_bytes:
                self.close_connection = True
                self._send(problem(413, "Body too large", "the console's forms are small", slug="413"))
                return
            body = self.rfile.read(length)
        self._send(self.console.handle(Request(method, body, dict(self.headers.items()), query), path))

    def do_POST(self) -> None:
        self._route("POST")

    def do_GET(self) -> None:
        self._route("GET")

    def do_PUT(self) -> None:
        self._route("PUT")


class LocalHost:
    """Ingress HTTP server plus ``workers`` worker threads and the staged-work timer."""

    def __init__(
        self, runtime: Runtime, *, host: str | None = None, port: int | None = None, workers: int | None = None
    ) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.ingress = Ingress(runtime)
        from lifecycle.console.app import Console

        self.console = Console(runtime)
        handler = type(
            "Handler", (_Handler,), {"ingress": self.ingress, "tickets": TicketRoutes(runtime), "console": self.console}
        )
        self.httpd = ThreadingHTTPServer((host or settings.host, settings.port if port is None else port), handler)
        self.httpd.daemon_threads = True
        self.worker = Worker(runtime)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers = workers or settings.worker_concurrency

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def console_sign_in_link(self) -> str:
        """A one-time link that signs a browser in to the console (printed by ``serve`` and ``make run``)."""
        return str(self.console.sign_in_link(self.url))

    def start(self) -> None:
        # Fail now, not at the first request, on a broken mapping or unusable queue/store.
        _ = self.runtime.mapping, self.runtime.queue, self.runtime.store
        self._threads.append(threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True))
        for index in range(self._workers):
            self._threads.append(
                threading.Thread(
                    target=self.worker.run_forever, args=(self._stop,), name=f"worker-{index}", daemon=True
                )
            )
        self._threads.append(threading.Thread(target=self._release_due, name="staged", daemon=True))
        for thread in self._threads:
            thread.start()
        log.info("serving on %s with %d worker(s)", self.url, self._workers)

    def _release_due(self) -> None:
        from lifecycle.requests.service import TicketRequests

        polled_at = 0.0
        while not self._stop.is_set():
            try:
                released = self.worker.release_due()
                if released:
                    log.info("released %d staged work item(s)", released)
            except Exception:
                log.exception("releasing staged work failed; trying again later")
            if self.runtime.mapping.requests is not None and time.monotonic() - polled_at >= REQUEST_POLL_SECONDS:
                polled_at = time.monotonic()
                try:
                    TicketRequests(self.runtime).poll()
                except Exception:
                    log.exception("polling open ticket requests failed; trying again later")
            self._stop.wait(DUE_CHECK_SECONDS)

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()

    def __enter__(self) -> LocalHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
