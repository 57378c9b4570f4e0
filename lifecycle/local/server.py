"""The local host for ``lifecycle serve``: the ingress over HTTP and the worker threads, in one process.

The worker threads block on the embedded queue, which wakes them the moment the ingress enqueues, so a change
reaches AD in about the time the DC takes, not on a polling tick.

The HTTP side is hardened for a network it does not control: every connection has a socket timeout (a client
that sends nothing, or sends slowly, is dropped), at most ``MAX_CONNECTIONS`` are served at once (one more is
answered 503 at once instead of starting another thread), and everything the HTTP library would answer as an
HTML error page (a malformed request line, a method it does not serve such as TRACE) is problem+json.
"""

from __future__ import annotations

import re
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
# A connection idle (or trickling) this long between reads is closed; a Halo delivery arrives in one go.
REQUEST_TIMEOUT_SECONDS = 30.0
# Connections served at once (one thread each); more are answered 503 with Retry-After.
MAX_CONNECTIONS = 32
SERVED_METHODS = "GET, POST"
_LENGTH = re.compile(r"[0-9]{1,19}")


def _problem_bytes(status: int, reason: str, title: str, detail: str, slug: str, extra: str = "") -> bytes:
    response = problem(status, title, detail, slug=slug)
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode("ascii") + response.body


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that never runs more than ``max_connections`` handler threads."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # Every slot is taken (a burst, or slow clients holding connections): say so at once and close,
            # rather than queue threads without bound.
            try:
                request.settimeout(1.0)
                detail = "every connection slot is in use; send again shortly"
                busy = _problem_bytes(503, "Service Unavailable", "Busy", detail, "unavailable", "Retry-After: 1\r\n")
                request.sendall(busy)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    server_version = "halo-lifecycle"
    sys_version = ""
    ingress: Ingress  # set on the subclass made per host
    tickets: TicketRoutes
    console: Any  # lifecycle.console.app.Console, set likewise

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("http: " + format, *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Every error the HTTP library answers itself (bad request line, unknown method...) as problem+json."""
        if code == 501:
            # The library's answer to a method without a do_ handler (TRACE, DELETE, PATCH, OPTIONS, HEAD...).
            code, title, detail = 405, "Method not allowed", f"this service serves {SERVED_METHODS}"
            extra = f"Allow: {SERVED_METHODS}\r\n"
        else:
            title, detail, extra = message or "Bad request", explain or message or "the request was not understood", ""
        self.close_connection = True
        try:
            reason = self.responses.get(code, ("Error",))[0]
            self.wfile.write(_problem_bytes(code, reason, title, detail, str(code), extra))
        except OSError:
            pass

    def _content_length(self) -> int | None:
        """The declared body length; answers 400 (malformed) or 411 (absent) itself and returns None."""
        values = self.headers.get_all("Content-Length") or []
        if not values:
            self.close_connection = True
            self._send(problem(411, "Length required", "send a Content-Length header", slug="length"))
            return None
        stripped = {v.strip() for v in values}
        if len(stripped) != 1 or not _LENGTH.fullmatch(next(iter(stripped))):
            # A malformed or repeated length frames the body ambiguously (request smuggling): refuse it.
            self.close_connection = True
            self._send(
                problem(
                    400,
                    "Malformed Content-Length",
                    "Content-Length must be one decimal number of bytes",
                    slug="content-length",
                )
            )
            return None
        return int(next(iter(stripped)))

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
        handle = self.ingress.events if url.path == EVENTS_PATH else self.tickets.tickets
        length = self._content_length()
        if length is None:
            return
        if length > self.ingress.settings.max_body_bytes:
            # Answer without reading an oversized body, and close: the rest of it is never read.
            self.close_connection = True
            self._send(handle(Request(method, b"", dict(self.headers.items()), query)))
            return
        body = self.rfile.read(length)
        self._send(handle(Request(method, body, dict(self.headers.items()), query)))

    def _manage(self, method: str, path: str, query: dict[str, str]) -> None:
        parts = [p for p in path[len(MANAGE_HELD_PATH) :].split("/") if p]
        if len(parts) not in (0, 2):
            self._send(problem(404, "Not found", f"no route {path}", slug="route"))
            return
        body = self._small_body(method, "send a small JSON body, or none")
        if body is None:
            return
        held_id, decision = (parts[0], parts[1]) if parts else (None, None)
        request = Request(method, body, dict(self.headers.items()), query)
        self._send(self.ingress.manage_held(request, held_id, decision))

    def _small_body(self, method: str, too_large: str) -> bytes | None:
        """The body of a POST to an operator route (empty otherwise), or None once a problem was answered."""
        if method != "POST":
            return b""
        length = self._content_length() if self.headers.get("Content-Length") is not None else 0
        if length is None:
            return None
        if length > self.ingress.settings.max_body_bytes:
            self.close_connection = True
            self._send(problem(413, "Body too large", too_large, slug="413"))
            return None
        return self.rfile.read(length)

    def _console(self, method: str, path: str, query: dict[str, str]) -> None:
        body = self._small_body(method, "the console's forms are small")
        if body is None:
            return
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
        self,
        runtime: Runtime,
        *,
        host: str | None = None,
        port: int | None = None,
        workers: int | None = None,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.ingress = Ingress(runtime)
        from lifecycle.console.app import Console

        self.console = Console(runtime)
        handler = type(
            "Handler",
            (_Handler,),
            {
                "ingress": self.ingress,
                "tickets": TicketRoutes(runtime),
                "console": self.console,
                # StreamRequestHandler sets this socket timeout on every connection.
                "timeout": request_timeout,
            },
        )
        address = (host or settings.host, settings.port if port is None else port)
        self.httpd = _BoundedHTTPServer(address, handler, max_connections)
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
