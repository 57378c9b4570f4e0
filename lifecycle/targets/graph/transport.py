"""The Graph transport of one process: requests, $batch, throttling, errors, and the client registry.

**One Graph client per process** (per connection), built on first use: an msal token source
(``tokens``), a ``GraphServiceClient`` on an ``httpx.AsyncClient`` wrapped with msgraph-core's default
middleware (retries 429/503/504 honouring ``Retry-After``), and one event loop thread that runs every Graph
call of the process. Worker threads hand their calls to that loop, so the connection pool and the token are
shared and nothing async leaks out.

**Tenants are isolated**: each connection (tenant) has its own client, token, connection pool, event loop
thread and throttling state. Graph throttles per app and tenant pair
(https://learn.microsoft.com/en-us/graph/throttling-limits, identity and access service): once a tenant asks for a
wait (``Retry-After``), or cannot be reached, its other requests are not sent until the wait is over; their
items are rescheduled at once (immediate retries count against the quota,
https://learn.microsoft.com/en-us/graph/throttling), and the other tenants' items go on.

**Requests come from the SDK's request builders** as ``RequestInformation`` and are sent either alone or
inside JSON batches (``$batch``, 20 per batch) with the raw response handler: no typed response is parsed,
so the ~1 s first-parse cost of the generated models (reference/graph.md) is never paid.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlparse

from lifecycle import deadline
from lifecycle.errors import LifecycleError, Permanent, Retryable
from lifecycle.targets.graph.tokens import KiotaTokens, TokenError, TokenSource

if TYPE_CHECKING:
    from kiota_abstractions.authentication import AccessTokenProvider
    from kiota_abstractions.request_information import RequestInformation

    from lifecycle.settings import Settings

T = TypeVar("T")

BATCH_LIMIT = 20
# A throttled request inside a batch is resent in place when Graph asks for at most this long; longer waits
# reschedule the work item instead of holding a worker.
INLINE_RETRY_MAX_SECONDS = 10.0
TRANSIENT = {429, 500, 502, 503, 504}
# Answers resent in place (after a short wait): throttled, or the service briefly unavailable. 500 and 502 are
# not (Graph's throttling guidance names 429, 503 and 504: https://learn.microsoft.com/en-us/graph/throttling).
RESEND = {429, 503, 504}
# After a tenant could not be reached (timeout, connection refused, token endpoint down), its requests wait this
# long (at most LIFECYCLE_RETRY_CAP_SECONDS) before the next try: one broken tenant does not hold every worker.
UNREACHABLE_COOL_DOWN_SECONDS = 30.0
GATE_SLACK_SECONDS = 0.05


@dataclass(frozen=True)
class Response:
    """One HTTP answer from Graph (alone or inside a batch)."""

    status: int
    headers: dict[str, str]
    body: Any = None  # parsed JSON, bytes (binary content) or None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def code(self) -> str:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("code", "")) if isinstance(error, dict) else ""

    @property
    def message(self) -> str:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("message", "")) if isinstance(error, dict) else ""

    @property
    def retry_after(self) -> float | None:
        value = self.headers.get("retry-after", "")
        return float(value) if value.strip().isdigit() else None


@dataclass
class Request:
    """One request to send alone or inside a batch."""

    method: str
    url: str  # relative to the base URL, already escaped
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # JSON-able
    content: bytes | None = None  # binary body (photos); such a request is never batched
    info: RequestInformation | None = None


class GraphClient:
    """Graph for one process: msal token, kiota adapter with the default middleware, one event loop thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_url = settings.graph_base_url.rstrip("/")  # no trailing slash: httpx would double it
        parsed = urlparse(self.base_url)
        if parsed.scheme != "https" and parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise Permanent(f"LIFECYCLE_GRAPH_BASE_URL must be https (got {self.base_url})")
        self.resource = f"{parsed.scheme}://{parsed.netloc}"
        self.requests = 0  # HTTP requests sent to Graph ($batch counts once), for benchmarks
        self.tenant = settings.graph_tenant_id or "(managed identity's tenant)"
        # This app and tenant pair's throttling state: nothing is sent before this time (of ``clock``).
        self.clock: Callable[[], float] = time.monotonic
        self._blocked_until = 0.0
        self._blocked_why = ""
        self._lock = threading.Lock()
        self._token = TokenSource(settings, self.resource)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="graph-loop", daemon=True)
        self._thread.start()
        self._adapter, self.sdk = self.run(self._build())

    async def _build(self) -> tuple[Any, Any]:
        import ssl

        import httpx
        from kiota_abstractions.authentication import BaseBearerTokenAuthenticationProvider
        from kiota_http.middleware.options import RetryHandlerOption
        from msgraph.graph_request_adapter import GraphRequestAdapter
        from msgraph.graph_service_client import GraphServiceClient
        from msgraph_core import GraphClientFactory  # type: ignore[import-untyped]

        ca_file = self.settings.graph_ca_file
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        http = httpx.AsyncClient(
            verify=verify,
            trust_env=False,  # no proxy or CA from the environment: the settings say where Graph is
            timeout=self.settings.graph_timeout_seconds,
        )
        # No retries in the middleware (its handler sleeps as long as Retry-After says, up to 180 s): _send
        # resends in place only for short waits. The wrapping keeps the rest of the default middleware.
        retry = RetryHandlerOption(max_retries=0, should_retry=False)
        http = GraphClientFactory.create_with_default_middleware(client=http, options={retry.get_key(): retry})
        tokens = cast("AccessTokenProvider", KiotaTokens(self._token, urlparse(self.base_url)))
        provider = BaseBearerTokenAuthenticationProvider(tokens)
        adapter = GraphRequestAdapter(provider, client=http)
        adapter.base_url = self.base_url
        return adapter, GraphServiceClient(request_adapter=adapter)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the client's loop from any thread and wait for it."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def close(self) -> None:
        async def shutdown() -> None:
            adapter = getattr(self, "_adapter", None)
            client = getattr(adapter, "_http_client", None)
            if client is not None:
                await client.aclose()

        try:
            self.run(shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    # Sending -----------------------------------------------------------------------------------------------
    def request(self, info: RequestInformation) -> Request:
        """A ``Request`` from a builder's ``RequestInformation`` (URL relative to the base, body as JSON)."""
        headers = {k: ",".join(sorted(v)) for k, v in info.headers.get_all().items()}
        body: Any = None
        content: bytes | None = None
        if info.content is not None:
            if "json" in headers.get("content-type", ""):
                body = json.loads(info.content)
            else:
                content = bytes(info.content)
        headers = {k: v for k, v in headers.items() if k == "content-type" and (body is not None or content)}
        method = info.http_method.value if info.http_method is not None else "GET"
        url = info.url
        # Builders of a client whose base URL is known expand it into the URL; batch items are relative.
        url = url[len(self.base_url) :] if url.startswith(self.base_url) else url
        return Request(method, url, headers, body, content, info)

    async def _send_once(self, request: Request) -> Response:
        import httpx
        from kiota_abstractions.headers_collection import HeadersCollection
        from kiota_abstractions.method import Method
        from kiota_abstractions.native_response_handler import NativeResponseHandler
        from kiota_abstractions.request_information import RequestInformation
        from kiota_http.middleware.options import ResponseHandlerOption, RetryHandlerOption

        info = request.info
        if info is None:
            info = RequestInformation()
            info.http_method = Method(request.method)
            info.url_template = "{+baseurl}" + request.url
            info.path_parameters = {}
            info.headers = HeadersCollection()
            for name, value in request.headers.items():
                info.headers.try_add(name, value)
            if request.body is not None:
                info.content = json.dumps(request.body).encode("utf-8")
        # kiota's retry handler would sleep up to 180 s per Retry-After (and resend outside our bound): our own
        # loop in _send retries instead, and only while the wait is short.
        info.add_request_options(
            [ResponseHandlerOption(NativeResponseHandler()), RetryHandlerOption(max_retries=0, should_retry=False)]
        )
        # The invocation's deadline (lifecycle.deadline) cuts the attempt: past it the step is rescheduled. The
        # deadline reaches this loop thread because run_coroutine_threadsafe copies the caller's context.
        timeout = deadline.bounded(self.settings.graph_timeout_seconds)
        if timeout <= 0:
            what = f"{request.method} {request.url}"
            raise Retryable(f"Graph: {what} not sent: the invocation's time is up", retry_after=1)
        with self._lock:
            self.requests += 1
        try:
            # A hard bound on the whole attempt (token, connect, upload, answer): httpx's timeout is per phase.
            raw = await asyncio.wait_for(self._adapter.send_async(info, None, {}), timeout)
        except TokenError as exc:
            raise exc.error from None
        except TimeoutError:
            raise Retryable(f"Graph: {request.method} {request.url} had no answer within {timeout:.3g} s") from None
        except httpx.TransportError as exc:
            raise Retryable(f"Graph: cannot reach {self.base_url}: {type(exc).__name__}: {exc}") from None
        content_type = raw.headers.get("content-type", "")
        data: bytes = raw.content
        body: Any = None
        if data:
            body = json.loads(data) if "json" in content_type else data
        return Response(raw.status_code, {k.lower(): v for k, v in raw.headers.items()}, body)

    async def _send(self, request: Request, *, retry: bool = True, gate: bool = True) -> Response:
        """Send alone; a throttled or busy answer is resent in place only while Graph asks for a short wait.

        A longer ``Retry-After`` is returned as it is: ``error_for`` turns it into a ``Retryable`` whose
        ``retry_after`` reschedules the work item, so no worker sleeps for minutes (reference/graph.md).
        ``gate=False``: the caller checked the tenant's gate itself (a batch that already applied some writes).
        """
        attempt = 0
        while True:
            if gate:
                self._check_gate()
            try:
                answer = await self._send_once(request)
            except Retryable as exc:
                cool_down = min(UNREACHABLE_COOL_DOWN_SECONDS, self.settings.retry_cap_seconds)
                self._block(cool_down, f"could not be reached ({exc})")
                raise
            self.note(answer)
            if not retry or answer.status not in RESEND or attempt >= self.settings.graph_max_retries:
                return answer
            wait = self.inline_wait(answer, attempt)
            if wait is None:
                return answer
            attempt += 1
            await asyncio.sleep(wait)

    def _check_gate(self) -> None:
        wait = self._blocked_until - self.clock()
        # The request that slept through its own Retry-After may wake a hair early (the loop's clock resolution).
        if wait > GATE_SLACK_SECONDS:
            raise Retryable(
                f"Graph: tenant {self.tenant} {self._blocked_why}; nothing is sent to it for another {wait:.1f} s",
                retry_after=wait,
            )

    def _block(self, seconds: float, why: str) -> None:
        until = self.clock() + seconds
        if until > self._blocked_until:
            self._blocked_until, self._blocked_why = until, why

    def note(self, answer: Response) -> None:
        """Record a throttled answer: until its ``Retry-After`` is over the tenant gets no other request. The one
        that was answered waits in place (a short wait) or is rescheduled; every other request for the tenant is
        rescheduled at once, so a throttled tenant holds at most the workers already waiting on it."""
        if answer.status in RESEND and answer.retry_after:
            self._block(answer.retry_after, f"asked to wait ({answer.status}, Retry-After {answer.retry_after:g} s)")

    def inline_wait(self, answer: Response, attempt: int) -> float | None:
        """How long to wait before resending in place, or None when the wait is too long to hold a worker.

        Too long is past ``INLINE_RETRY_MAX_SECONDS`` or past what is left of the invocation (the resend needs
        time too): the answer then goes back as a ``Retryable`` that reschedules the item with Retry-After.
        """
        wait = answer.retry_after
        if wait is None:
            wait = min(INLINE_RETRY_MAX_SECONDS, self.settings.retry_base_seconds * 2**attempt)
        return wait if wait <= INLINE_RETRY_MAX_SECONDS and wait < deadline.remaining() else None

    def send(self, request: Request, *, retry: bool = True, gate: bool = True) -> Response:
        return self.run(self._send(request, retry=retry, gate=gate))

    async def _batch(
        self, requests: list[Request], chained: bool, accept: Callable[[int, Response], bool]
    ) -> list[Response]:
        """Send ``requests`` in $batch calls of 20; resend items Graph throttled (briefly) in place.

        ``accept`` says which error answers still count as done (a member already added): requests chained
        behind one of those failed with 424 and are sent again, in order. A chain stops at its first real
        failure: nothing after it is sent, in this batch or a later one (the answers of the unsent are 424).
        """
        results: list[Response | None] = [None] * len(requests)

        def settled(index: int) -> bool:
            answer = results[index]
            return answer is not None and (answer.ok or accept(index, answer))

        def closed() -> bool:
            # Once part of the batch was sent, a closed gate (another request of the tenant was throttled) stops
            # it here: what was applied is returned and reported, what was not is planned again later. Raising
            # would lose which writes took effect.
            return any(r is not None for r in results) and self._blocked_until - self.clock() > GATE_SLACK_SECONDS

        for start in range(0, len(requests), BATCH_LIMIT):
            if chained and not all(settled(i) for i in range(start)):
                break  # an earlier write of the chain failed or was not applied: later ones must not run
            if closed():
                break
            chunk = list(range(start, min(start + BATCH_LIMIT, len(requests))))
            for attempt in range(self.settings.graph_max_retries + 2):
                pending = [i for i in chunk if not settled(i)]
                if any(results[i] is not None and results[i].status not in (*RESEND, 424) for i in pending):  # type: ignore[union-attr]
                    break  # a real failure: what is chained behind it stays undone (424)
                if not pending:
                    break
                throttled = [r for i in pending if (r := results[i]) is not None and r.status in RESEND]
                if throttled:
                    waits = [self.inline_wait(r, attempt - 1) for r in throttled]
                    if any(w is None for w in waits) or attempt > self.settings.graph_max_retries:
                        break
                    await asyncio.sleep(max(w for w in waits if w is not None))
                if closed():
                    break
                entries = []
                for position, index in enumerate(pending):
                    req = requests[index]
                    entry: dict[str, Any] = {"id": str(index), "method": req.method, "url": req.url}
                    if req.headers:
                        entry["headers"] = req.headers
                    if req.body is not None:
                        entry["body"] = req.body
                    if chained and position > 0:
                        entry["dependsOn"] = [str(pending[position - 1])]
                    entries.append(entry)
                answer = await self._send(
                    Request("POST", "/$batch", {"content-type": "application/json"}, {"requests": entries}),
                    gate=all(r is None for r in results),
                )
                if not answer.ok:
                    raise error_for(answer, "$batch")
                # Answers come in any order: each is matched to its request by id (Graph's JSON batching docs:
                # https://learn.microsoft.com/en-us/graph/json-batching, "Responses ... might appear in a
                # different order").
                for item in (answer.body or {}).get("responses", []):
                    headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
                    body = item.get("body")
                    if isinstance(body, str) and "json" not in headers.get("content-type", "json"):
                        body = base64.b64decode(body)  # binary content comes base64-encoded inside a batch
                    got = Response(int(item["status"]), headers, body)
                    results[int(item["id"])] = got
                    self.note(got)
        return [r if r is not None else Response(424, {}, None) for r in results]

    def batch(
        self,
        requests: list[Request],
        *,
        chained: bool = False,
        accept: Callable[[int, Response], bool] | None = None,
    ) -> list[Response]:
        """Many requests in as few calls as possible; ``chained`` makes Graph apply them in order."""
        if not requests:
            return []
        if len(requests) == 1 and not chained:
            return [self.send(requests[0])]
        return self.run(self._batch(requests, chained, accept or (lambda _i, _r: False)))


_clients: dict[str, GraphClient] = {}
_clients_lock = threading.Lock()


def client_for(settings: Settings) -> GraphClient:
    """The process's Graph client for these settings (built on first use)."""
    key = f"{settings.graph_base_url}|{settings.graph_tenant_id}|{settings.graph_client_id}"
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = GraphClient(settings)
        return client


def close_clients() -> None:
    """Close every Graph client of the process (tests; a host shutting down)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


def error_for(response: Response, what: str) -> LifecycleError:
    """The error a failed Graph answer means for the step."""
    detail = f"{response.status} {response.code}: {response.message}".strip()
    if response.status in TRANSIENT:
        return Retryable(f"Graph: {what}: {detail}", retry_after=response.retry_after)
    if response.status == 401:
        return Retryable(f"Graph: {what}: the token was refused ({detail})")
    if response.status == 403:
        return Permanent(
            f"Graph: {what}: access denied ({detail}); grant the app the permission docs/deployment.md lists"
        )
    if response.status == 424:
        return Retryable(f"Graph: {what}: not applied because an earlier request of its batch failed")
    return Permanent(f"Graph: {what}: {detail}")
