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

The token and the transport are ``lifecycle.halo.session`` (``HaloSession``), the limiters
``lifecycle.halo.ratelimit``; this module adds the API calls and still exports every name it always did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from lifecycle.errors import Permanent
from lifecycle.halo.ratelimit import LimiterBusy, RateLimiter, SharedRateLimiter
from lifecycle.halo.session import (
    BATCH_PATIENCE_SECONDS,
    DEFAULT_TOKEN_LIFETIME_SECONDS,
    TOKEN_RENEW_MARGIN_SECONDS,
    WORKER_PATIENCE_SECONDS,
    HaloAccessDenied,
    HaloSession,
    TokenInfo,
    _retry_after,
    api_base,
)
from lifecycle.observability import log

if TYPE_CHECKING:
    from lifecycle.settings import Settings

__all__ = [
    "BATCH_PATIENCE_SECONDS",
    "DEFAULT_TOKEN_LIFETIME_SECONDS",
    "TOKEN_RENEW_MARGIN_SECONDS",
    "WORKER_PATIENCE_SECONDS",
    "HaloAccessDenied",
    "HaloClient",
    "LimiterBusy",
    "RateLimiter",
    "SharedRateLimiter",
    "TokenInfo",
    "UserListing",
    "UsersPage",
    "_retry_after",  # the unit tests read it here
    "api_base",
    "build_client",
]


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
    # Resuming a listing cut short (the reconcile's page cursor): the first page to read, and the page after the
    # last one whose users were all consumed.
    start_page: int = 1
    next_page: int = 1
    # Asked before every page but the first of this listing: True stops here (``cut``), to resume at ``next_page``.
    stop_before: Callable[[], bool] | None = None
    # Called once every user of a page has been consumed (so the caller can keep the cursor).
    on_page_done: Callable[[UserListing], None] | None = None
    cut: bool = False
    _shifted: bool = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        page_no = self.next_page = self.start_page
        while True:
            if page_no > self.start_page and self.stop_before is not None and self.stop_before():
                self.cut = True
                return
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
            self.next_page = page_no + 1
            if self.on_page_done is not None:
                self.on_page_done(self)
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


class HaloClient(HaloSession):
    """One Halo instance's API. Thread-safe: worker threads share one client (one token, one rate limiter)."""

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
        """Every user, streamed a page at a time (iterate the result; set ``start_page`` first to resume)."""
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
