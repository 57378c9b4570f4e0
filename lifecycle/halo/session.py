"""The transport under HaloClient: OAuth2 client credentials, the rate limiter, retries and error wording.

- **Token**: client credentials, posted form-encoded to the token URL (configured, or discovered through
  ``GET /api/authinfo``), cached and renewed a minute before it expires, and once more on a 401.
- **Rate**: ``lifecycle.halo.ratelimit``. A 429 waits for ``Retry-After`` or backs off exponentially.
- **Errors**: network failures, 5xx and 429 are ``Retryable`` (with ``retry_after`` when known) once the call's
  patience is used up; 401 after one token renewal and 403 are ``Permanent`` with what to fix. Secrets and
  tokens are never logged or put in an error message.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from lifecycle import deadline as invocation_deadline
from lifecycle.errors import ConfigurationError, Permanent, Retryable
from lifecycle.halo.ratelimit import LimiterBusy, RateLimiter, SharedRateLimiter
from lifecycle.observability import log

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


@dataclass(frozen=True)
class TokenInfo:
    """What ``authenticate`` reports (never the token itself)."""

    token_url: str
    expires_in: float
    scope: str
    discovered: bool


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


class HaloSession:
    """An authenticated, rate-limited connection to one Halo instance; HaloClient adds the API calls."""

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
