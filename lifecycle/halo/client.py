"""Halo's REST API over httpx: OAuth2 client credentials, a client-side rate limiter, users paging and updates.

What the service needs of Halo: one user in full (``GET /api/Users/{id}``, thin webhooks and write-back), every
user page by page (``GET /api/Users?pageinate=true``, reconciliation; one page in memory at a time), and partial
updates (``POST /api/Users`` with an array whose items carry an existing ``id``, write-back).

- **Token**: client credentials, posted form-encoded to the token URL (configured, or discovered through
  ``GET /api/authinfo``), cached and renewed a minute before it expires, and once more on a 401.
- **Rate**: hosted Halo allows 300 requests per rolling 5 minutes. The limiter lets a request go only while
  fewer than ``limit`` requests were answered within the last ``window`` seconds (counting those in flight),
  and starts a request's window when its answer arrived, so however the network delays requests Halo never
  sees more than ``limit`` in a window. A 429 waits for ``Retry-After`` or backs off exponentially.
- **Errors**: network failures, 5xx and 429 are ``Retryable`` (with ``retry_after`` when known) once the call's
  patience is used up; 401 after one token renewal and 403 are ``Permanent`` with what to fix; 404 of one user
  is None. Secrets and tokens are never logged or put in an error message.
"""

from __future__ import annotations

import math
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import httpx

from lifecycle import deadline as invocation_deadline
from lifecycle.errors import ConfigurationError, Permanent, Retryable
from lifecycle.observability import log

if TYPE_CHECKING:
    from lifecycle.settings import Settings

# Renew a token this long before it expires (client credentials have no refresh token).
TOKEN_RENEW_MARGIN_SECONDS = 60.0
# Used when the token response omits expires_in (every known client assumes an hour).
DEFAULT_TOKEN_LIFETIME_SECONDS = 3600.0
# How long one worker-side call (a thin webhook's fetch, a write-back) may wait in total for the rate limiter
# and for retries before it hands the wait to the queue as Retryable.
WORKER_PATIENCE_SECONDS = 30.0
# Reconciliation is a batch: it waits out throttling (a 429 storm delays it, it does not fail it).
BATCH_PATIENCE_SECONDS = 1800.0
_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_ERROR_TEXT_LIMIT = 300


class HaloAccessDenied(Permanent):
    """Halo refused the credentials or the permission (401 after a new token, 403, a refused token request)."""


class LimiterBusy(Exception):
    """The rate limiter has no free slot within the caller's patience."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"no request slot for {wait:.1f} s")
        self.wait = wait


class RateLimiter:
    """At most ``limit`` requests per rolling ``window`` seconds, measured so the server never sees more.

    A request takes a slot before it is sent and gives it back when its answer arrived; the slot is free again
    ``window`` seconds after that. Since a request reaches the server after it was sent and before its answer
    arrives, any two requests ``limit`` apart reach the server more than ``window`` seconds apart. Thread-safe.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("the rate limit needs limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._released: deque[float] = deque()
        self._in_flight = 0
        self._lock = threading.Condition()
        # For reports and tests: how often and how long callers waited for a slot.
        self.waits = 0
        self.waited_seconds = 0.0

    def _free_in(self, now: float) -> float | None:
        """Seconds until a slot frees (0: one is free now); None when every slot is in flight."""
        while self._released and self._released[0] + self.window <= now:
            self._released.popleft()
        if self._in_flight + len(self._released) < self.limit:
            return 0.0
        if not self._released:
            return None
        return self._released[0] + self.window - now

    def acquire(self, max_wait: float) -> None:
        """Take a slot, waiting up to ``max_wait`` seconds; raises ``LimiterBusy`` with the wait needed."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                wait = self._free_in(now)
                if wait == 0.0:
                    self._in_flight += 1
                    if waited:
                        self.waits += 1
                        self.waited_seconds += waited
                    return
                if wait is None:
                    # Every slot is held by a request in flight: its answer frees one (plus the window).
                    if waited >= max_wait:
                        raise LimiterBusy(self.window)
                    started = self._clock()
                    self._lock.wait(timeout=min(1.0, max(0.01, max_wait - waited)))
                    waited += max(0.0, self._clock() - started)
                    continue
            if waited + wait > max_wait:
                raise LimiterBusy(wait)
            # A hair over the edge: the slot's window must have passed, not just reached, when we send.
            wait += 0.001
            self._sleep(wait)
            waited += wait

    def release(self) -> None:
        """Give back a slot: its request was answered (or failed) now."""
        with self._lock:
            self._in_flight -= 1
            self._released.append(self._clock())
            self._lock.notify_all()

    @contextmanager
    def slot(self, max_wait: float) -> Iterator[None]:
        self.acquire(max_wait)
        try:
            yield
        finally:
            self.release()


class SharedRateLimiter:
    """The rate limit across every instance: a sliding window of request slots kept in the store.

    Each request takes a slot in the store's ``halo-rate`` window (an atomic check-and-record shared by all
    processes, embedded or Table storage) before it is sent, and moves the slot to the time its answer arrived
    when it is done, so, as with ``RateLimiter``, requests ``limit`` apart reach Halo more than ``window``
    seconds apart whichever instance sent them. A full window is polled until a slot frees.
    """

    WINDOW = "halo-rate"

    def __init__(
        self,
        store: Any,
        limit: int,
        window: float,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self.waits = 0

    def acquire(self, max_wait: float) -> str:
        """Take a slot (returns its key), waiting up to ``max_wait`` seconds; raises ``LimiterBusy``."""
        import uuid

        key = uuid.uuid4().hex
        waited = 0.0
        # Poll about ten times per slot's share of the window: quick enough, and cheap for the store.
        step = max(0.01, min(1.0, self.window / self.limit / 2))
        while True:
            now = datetime.fromtimestamp(self._clock(), UTC)
            admission = self.store.admit_destructive(
                key, now=now, window_seconds=self.window, limit=self.limit, window=self.WINDOW
            )
            if admission.admitted:
                if waited:
                    self.waits += 1
                return key
            if waited + step > max_wait:
                raise LimiterBusy(step)
            self._sleep(step)
            waited += step

    def release(self, key: str) -> None:
        """The request's answer arrived now: its slot's window starts now."""
        self.store.touch_window(key, now=datetime.fromtimestamp(self._clock(), UTC), window=self.WINDOW)

    @contextmanager
    def slot(self, max_wait: float) -> Iterator[None]:
        key = self.acquire(max_wait)
        try:
            yield
        finally:
            self.release(key)


@dataclass(frozen=True)
class TokenInfo:
    """What ``authenticate`` reports (never the token itself)."""

    token_url: str
    expires_in: float
    scope: str
    discovered: bool


@dataclass
class UsersPage:
    record_count: int
    users: list[dict[str, Any]]


@dataclass
class UserListing:
    """Every Halo user, streamed page by page: iterate it; its counters describe what was received so far.

    Pages are requested ordered by id so that users created during the listing come last. ``complete`` tells
    whether the listing reached the ``record_count`` Halo announced and that count held still from the first
    page to the last (a user deleted meanwhile shifts the pages, so someone may have been skipped).
    """

    client: HaloClient
    page_size: int
    params: Mapping[str, str] = field(default_factory=dict)
    patience: float = BATCH_PATIENCE_SECONDS
    on_page: Callable[[UserListing], None] | None = None
    record_count: int | None = None
    received: int = 0
    pages: int = 0
    invalid: int = 0
    complete: bool = False
    # When the page being iterated was requested: the time its users' state was read.
    page_read_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _shifted: bool = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        page_no = 1
        while True:
            self.page_read_at = datetime.now(UTC)
            page = self.client.users_page(page_no, page_size=self.page_size, params=self.params, patience=self.patience)
            self.pages += 1
            if self.record_count is not None and page.record_count != self.record_count:
                # Users were added or deleted while we paged: pages shifted, someone may have been skipped.
                self._shifted = True
            self.record_count = page.record_count
            count = len(page.users)
            valid = [u for u in page.users if _user_id(u) is not None]
            self.invalid += count - len(valid)
            self.received += count
            if self.on_page is not None:
                self.on_page(self)
            yield from valid
            if count == 0 or count < self.page_size or self.received >= page.record_count:
                break
            if page_no > math.ceil(page.record_count / self.page_size) + 1:
                # Halo keeps answering pages past its own count: stop rather than loop forever.
                log.warning("Halo kept sending pages past its record_count; the listing stops here")
                break
            page_no += 1
        self.complete = not self._shifted and self.record_count is not None and self.received >= self.record_count


def _user_id(user: Any) -> int | None:
    if not isinstance(user, dict):
        return None
    value = user.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else None


def _retry_after(response: httpx.Response, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _excerpt(response: httpx.Response) -> str:
    text = " ".join(response.text.split())
    return text[:_ERROR_TEXT_LIMIT] + ("..." if len(text) > _ERROR_TEXT_LIMIT else "")


def _lookup(data: Mapping[str, Any], name: str) -> Any:
    """A key of a JSON object, case-insensitively (Halo's casing varies between versions)."""
    for key, value in data.items():
        if key.lower() == name:
            return value
    return None


def api_base(url: str) -> str:
    """The instance URL without a trailing ``/api`` (operators paste either form)."""
    url = url.rstrip("/")
    return url[: -len("/api")] if url.lower().endswith("/api") else url


class HaloClient:
    """One Halo instance's API. Thread-safe: worker threads share one client (one token, one rate limiter)."""

    def __init__(
        self,
        *,
        api_url: str,
        client_id: str,
        client_secret: str,
        auth_url: str = "",
        tenant: str = "",
        scope: str = "all",
        ca_file: Path | None = None,
        timeout: float = 30.0,
        rate_limit: int = 300,
        rate_window: float = 300.0,
        page_size: int = 100,
        backoff_base: float = 5.0,
        backoff_cap: float = 60.0,
        patience: float = WORKER_PATIENCE_SECONDS,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_url.lower().startswith("https://"):
            raise ConfigurationError("the Halo API URL must start with https://")
        self.base_url = api_base(api_url)
        self._client_id = client_id
        self._client_secret = client_secret
        self._auth_url = auth_url.rstrip("/")
        self._tenant = tenant
        self.scope = scope
        self.page_size = page_size
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        # How long a worker-side call waits in all (limiter, retries) before it is Retryable for the queue.
        self.patience = patience
        self._clock = clock
        self._sleep = sleep
        self.limiter = RateLimiter(rate_limit, rate_window, clock=clock, sleep=sleep)
        # Set by build_client when a store is at hand: the same limit across every instance of the app.
        self.shared: SharedRateLimiter | None = None
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._http = httpx.Client(
            timeout=timeout,
            verify=verify,
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "halo-lifecycle"},
            follow_redirects=False,
        )
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_expires_at = 0.0
        self._token_url: str | None = None
        self._token_url_discovered = False
        # Counters for reports and tests.
        self.requests = 0
        self.throttled = 0
        self.token_requests = 0

    @classmethod
    def from_settings(cls, settings: Settings, *, store: Any = None) -> HaloClient:
        """A client for ``settings``; with ``store``, its rate limit is shared by every instance using the store.

        The limit is ``LIFECYCLE_HALO_RATE_SHARE`` of ``LIFECYCLE_HALO_RATE_LIMIT`` (Halo's limit is the whole
        tenant's: other integrations use it too).
        """
        limit = max(1, math.floor(settings.halo_rate_limit * settings.halo_rate_share))
        client = cls(
            api_url=settings.halo_api_url,
            client_id=settings.halo_client_id,
            client_secret=settings.halo_client_secret.get_secret_value(),
            auth_url=settings.halo_auth_url,
            tenant=settings.halo_tenant,
            scope=settings.halo_scope,
            ca_file=settings.halo_ca_file,
            timeout=settings.halo_timeout_seconds,
            rate_limit=limit,
            rate_window=settings.halo_rate_limit_window_seconds,
            page_size=settings.halo_page_size,
        )
        if store is not None:
            client.shared = SharedRateLimiter(store, limit, settings.halo_rate_limit_window_seconds)
        return client

    def close(self) -> None:
        self._http.close()

    # Transport -------------------------------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        return float(min(self.backoff_cap, self.backoff_base * 2**attempt))

    def _send(
        self,
        method: str,
        url: str,
        *,
        patience: float | None,
        authenticated: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request, with the rate limiter, retries of transient failures and one token renewal on a 401.

        Returns any response that is not transient (the caller interprets 2xx/4xx); raises ``Retryable`` when
        the transient failures outlast ``patience`` seconds.
        """
        # Never past the invocation's deadline (lifecycle.deadline): a longer wait is a rescheduled retry.
        deadline = self._clock() + invocation_deadline.bounded(self.patience if patience is None else patience)
        what = f"{method} {urlsplit(url).path}"
        attempt = 0
        renewed = False
        while True:
            headers: dict[str, str] = {}
            if authenticated:
                headers["Authorization"] = f"Bearer {self._bearer(deadline)}"
            remaining = max(0.0, deadline - self._clock())
            error: Retryable
            try:
                with self.limiter.slot(remaining), self._shared_slot(max(0.0, deadline - self._clock())):
                    self.requests += 1
                    response = self._http.request(method, url, headers=headers, **kwargs)
            except LimiterBusy as exc:
                raise Retryable(
                    f"Halo API: the client-side rate limit ({self.limiter.limit} requests per "
                    f"{self.limiter.window:g} s) is used up for now",
                    retry_after=exc.wait,
                ) from None
            except httpx.TimeoutException:
                delay = self._backoff(attempt)
                error = Retryable(f"Halo API: {what} timed out", retry_after=delay)
            except httpx.TransportError as exc:
                delay = self._backoff(attempt)
                error = Retryable(
                    f"Halo API: cannot reach {urlsplit(url).netloc}: {type(exc).__name__}: {exc}", retry_after=delay
                )
            else:
                status = response.status_code
                if status == 401 and authenticated and not renewed:
                    # An expired or revoked token: one fresh token, then a 401 means the credentials are refused.
                    self._forget_token()
                    renewed = True
                    continue
                if status not in _RETRYABLE_STATUSES:
                    return response
                if status == 429:
                    self.throttled += 1
                hinted = _retry_after(response)
                delay = hinted if hinted is not None else self._backoff(attempt)
                reason = "rate limit reached" if status == 429 else f"{status} {response.reason_phrase}".strip()
                error = Retryable(f"Halo API: {what}: {reason}", retry_after=delay)
            attempt += 1
            if self._clock() + delay > deadline:
                raise error
            log.warning("Halo API: %s; retrying in %.1f s", error, delay)
            self._sleep(delay)

    def _shared_slot(self, max_wait: float) -> Any:
        from contextlib import nullcontext

        return self.shared.slot(max_wait) if self.shared is not None else nullcontext()

    def _refuse(self, response: httpx.Response, what: str) -> Permanent:
        """The Permanent error for a non-transient failure answer, saying what an operator can do."""
        status = response.status_code
        if status == 401:
            return HaloAccessDenied(
                f"Halo API: {what} was refused (401) even with a new token: check the API application's client "
                "id, secret and scope in Halo (Configuration > Integrations > Halo API)"
            )
        if status == 403:
            return HaloAccessDenied(
                f"Halo API: {what} is forbidden (403): the API application (and its agent) lacks permission for "
                "users; grant it read (and, for write-back, edit) access to users/customers in Halo"
            )
        return Permanent(f"Halo API: {what} failed with {status}: {_excerpt(response)}")

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise Permanent(f"Halo API: {what} answered {response.status_code} without JSON") from None

    # Token -------------------------------------------------------------------------------------------------
    def auth_info(self, *, patience: float | None = None) -> dict[str, Any]:
        """``GET /api/authinfo`` (no authentication): where Halo's auth server is, and the tenant."""
        response = self._send("GET", f"{self.base_url}/api/authinfo", patience=patience, authenticated=False)
        if response.status_code != 200:
            raise Permanent(
                f"Halo API: GET /api/authinfo answered {response.status_code}; set LIFECYCLE_HALO_AUTH_URL "
                "(and LIFECYCLE_HALO_TENANT) instead of discovering them"
            )
        data = self._json(response, "GET /api/authinfo")
        if not isinstance(data, dict):
            raise Permanent("Halo API: GET /api/authinfo did not answer an object; set LIFECYCLE_HALO_AUTH_URL")
        return data

    def token_url(self, *, patience: float | None = None) -> str:
        """The token endpoint: configured, or discovered once through ``/api/authinfo``."""
        if self._token_url is not None:
            return self._token_url
        base, tenant = self._auth_url, self._tenant
        if not base:
            info = self.auth_info(patience=patience)
            discovered = _lookup(info, "auth_url")
            if not isinstance(discovered, str) or not discovered.strip():
                raise Permanent("Halo API: /api/authinfo names no auth_url; set LIFECYCLE_HALO_AUTH_URL")
            base = discovered.strip().rstrip("/")
            if not base.lower().startswith("https://"):
                raise Permanent(
                    f"Halo API: /api/authinfo names {base!r}, which is not https; refusing to send "
                    "credentials there (set LIFECYCLE_HALO_AUTH_URL)"
                )
            if not tenant:
                found = _lookup(info, "tenant_id")
                tenant = str(found).strip() if found not in (None, "") else ""
            self._token_url_discovered = True
        url = base if base.lower().endswith("/token") else f"{base}/token"
        if tenant and "tenant=" not in url:
            url += ("&" if "?" in url else "?") + urlencode({"tenant": tenant})
        self._token_url = url
        return url

    def _forget_token(self) -> None:
        with self._token_lock:
            self._token = None
            self._token_expires_at = 0.0

    def _bearer(self, deadline: float) -> str:
        with self._token_lock:
            if self._token is not None and self._clock() < self._token_expires_at:
                return self._token
            token, lifetime = self._request_token(max(0.0, deadline - self._clock()))
            # Renew a minute early (half-way for short-lived tokens), so no request carries an expiring token.
            margin = min(TOKEN_RENEW_MARGIN_SECONDS, lifetime / 2)
            self._token = token
            self._token_expires_at = self._clock() + lifetime - margin
            return token

    def _request_token(self, patience: float | None) -> tuple[str, float]:
        url = self.token_url(patience=patience)
        self.token_requests += 1
        response = self._send(
            "POST",
            url,
            patience=patience,
            authenticated=False,
            data={
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._client_secret,
                "scope": self.scope,
            },
        )
        if response.status_code != 200:
            detail = ""
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("error"):
                detail = f": {body.get('error')}"
                if body.get("error_description"):
                    detail += f" ({str(body['error_description'])[:200]})"
            raise HaloAccessDenied(
                f"Halo's auth server refused the client credentials ({response.status_code}{detail}); check "
                "LIFECYCLE_HALO_CLIENT_ID, LIFECYCLE_HALO_CLIENT_SECRET, LIFECYCLE_HALO_SCOPE and the tenant"
            )
        body = self._json(response, "the token request")
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise Permanent("Halo's auth server answered without an access_token")
        try:
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME_SECONDS)
        except (TypeError, ValueError):
            lifetime = DEFAULT_TOKEN_LIFETIME_SECONDS
        return token, max(1.0, lifetime)

    def authenticate(self, *, patience: float | None = None) -> TokenInfo:
        """Get a fresh token now (``lifecycle halo test``); returns where and for how long, never the token."""
        self._forget_token()
        with self._token_lock:
            token, lifetime = self._request_token(patience)
            self._token = token
            self._token_expires_at = self._clock() + lifetime - min(TOKEN_RENEW_MARGIN_SECONDS, lifetime / 2)
        return TokenInfo(self.token_url(), lifetime, self.scope, self._token_url_discovered)

    # Users -------------------------------------------------------------------------------------------------
    def fetch_user(self, user_id: int, *, patience: float | None = None) -> dict[str, Any] | None:
        """``GET /api/Users/{id}``: the full user as Halo returns it, or None if Halo has no such user."""
        what = f"GET /api/Users/{user_id}"
        # includedetails: Halo's "include extra objects" (OpenAPI), which is where custom fields come from.
        response = self._send(
            "GET", f"{self.base_url}/api/Users/{int(user_id)}", patience=patience, params={"includedetails": "true"}
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._refuse(response, what)
        data = self._json(response, what)
        if data is None or (isinstance(data, dict) and _user_id(data) is None):
            return None  # some Halo versions answer an empty object for an unknown id
        if not isinstance(data, dict):
            raise Permanent(f"Halo API: {what} did not answer a user object")
        if _user_id(data) != user_id:
            raise Permanent(f"Halo API: {what} answered user {data.get('id')!r}")
        return data

    def users_page(
        self,
        page_no: int,
        *,
        page_size: int | None = None,
        params: Mapping[str, str] | None = None,
        patience: float | None = None,
    ) -> UsersPage:
        """One page of ``GET /api/Users`` (pages count from 1), active and inactive users, ordered by id."""
        size = page_size or self.page_size
        query = {
            "pageinate": "true",
            "page_size": str(size),
            "page_no": str(page_no),
            "includeactive": "true",
            "includeinactive": "true",
            "order": "id",
            "orderdesc": "false",
            **(params or {}),
        }
        what = f"GET /api/Users (page {page_no})"
        response = self._send("GET", f"{self.base_url}/api/Users", patience=patience, params=query)
        if response.status_code != 200:
            raise self._refuse(response, what)
        data = self._json(response, what)
        if isinstance(data, list):
            # Pagination ignored: the whole list came back.
            return UsersPage(len(data), data)
        if not isinstance(data, dict) or not isinstance(data.get("users", []), list):
            raise Permanent(f"Halo API: {what} did not answer {{record_count, users}}")
        users: list[dict[str, Any]] = data.get("users") or []
        count = data.get("record_count")
        record_count = int(count) if isinstance(count, (int, float)) and not isinstance(count, bool) else len(users)
        return UsersPage(record_count, users)

    def list_users(
        self,
        *,
        page_size: int | None = None,
        params: Mapping[str, str] | None = None,
        patience: float = BATCH_PATIENCE_SECONDS,
        on_page: Callable[[UserListing], None] | None = None,
    ) -> UserListing:
        """Every user, streamed a page at a time (iterate the result)."""
        return UserListing(self, page_size or self.page_size, dict(params or {}), patience, on_page)

    def update_users(
        self, items: Sequence[Mapping[str, Any]], *, patience: float | None = None
    ) -> list[dict[str, Any]]:
        """``POST /api/Users`` with an array; an item with an existing ``id`` is a partial update of that user.

        Returns what Halo answered (the saved users, when it returns them).
        """
        ids = ", ".join(str(item.get("id")) for item in items)
        what = f"POST /api/Users (user {ids})"
        response = self._send("POST", f"{self.base_url}/api/Users", patience=patience, json=list(items))
        if response.status_code not in (200, 201):
            raise self._refuse(response, what)
        if not response.content.strip():
            return []
        data = self._json(response, what)
        if isinstance(data, dict):
            return [data]
        return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


    # Webhooks ----------------------------------------------------------------------------------------------
    def webhooks(self, webhook_id: str | None = None, *, patience: float | None = None) -> list[dict[str, Any]]:
        """``GET /api/Webhook`` (every webhook) or ``GET /api/Webhook/{id}?includedetails=true`` (one).

        Halo's OpenAPI documents no response body for the list, so a bare array and an object wrapping one
        (``{"webhooks": [...]}``) are both read.
        """
        url = f"{self.base_url}/api/Webhook" + (f"/{quote(webhook_id, safe='')}" if webhook_id else "")
        what = "GET /api/Webhook" + (f"/{webhook_id}" if webhook_id else "")
        params = {"includedetails": "true"} if webhook_id else None
        response = self._send("GET", url, patience=patience, params=params)
        if response.status_code == 404 and webhook_id:
            return []
        if response.status_code != 200:
            raise self._refuse(response, what)
        data = self._json(response, what)
        if isinstance(data, dict) and webhook_id:
            return [data] if data.get("id") else []
        if isinstance(data, dict):
            data = data.get("webhooks", data.get("records", []))
        if not isinstance(data, list):
            raise Permanent(f"Halo API: {what} did not answer a list of webhooks")
        return [w for w in data if isinstance(w, dict)]


def build_client(settings: Settings, *, store: Any = None) -> HaloClient | None:
    """The Halo API client for these settings, or None when the Halo API is not configured."""
    if not settings.halo_api_url:
        return None
    return HaloClient.from_settings(settings, store=store)
