"""A stand-in for Halo's REST API, over HTTPS on 127.0.0.1, following the contract the service relies on.

What it serves, as Halo does (shared/reference/halo-api.md):

- ``GET /api/authinfo`` (no authentication): ``auth_url`` and ``tenant_id``.
- ``POST /auth/token``: OAuth2 client credentials, form-encoded; ``?tenant=`` when a tenant is configured;
  ``invalid_client`` / ``invalid_scope`` / ``unsupported_grant_type`` errors; tokens that expire.
- ``GET /api/Users?pageinate=true&page_size=&page_no=``: ``{"record_count": N, "users": [...]}``, pages from 1,
  list items *partial* (the fields of Halo's own list sample, not the whole user), inactive users only with
  ``includeinactive=true``.
- ``GET /api/Users/{id}``: the full user, unwrapped; 404 for an unknown id.
- ``POST /api/Users``: a JSON array; an item with an existing ``id`` is a partial update; Halo's automations
  fire unless the item carries ``_dont_fire_automations: true`` (recorded in ``automations``).
- The hosted rate limit: more than ``rate_limit`` requests in a rolling ``rate_window`` gets 429 "Rate Limit
  Reached", with or without ``Retry-After``; canned failures (a 429 storm, 5xx) can be queued with ``inject``.

Tickets, actions, approvals, outcomes and statuses are served by ``tests.standins.halo_tickets`` (``tickets``).

Users are generated from their id on demand, so a data set of 100,000 users costs an array of ids plus the
users a test changed. Run it in another process with ``python -m tests.standins.halo`` (see ``main``).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hmac
import json
import math
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from array import array
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.standins.halo_tickets import TicketDesk
from tests.standins.tls import LoopbackTLSServer, serve_in_background, server_tls, shut_down

# The fields of a user as Halo's list returns it (the keys of the seed article's sample, GET /api/Users).
LIST_FIELDS: frozenset[str] = frozenset(
    {
        "id",
        "name",
        "site_id",
        "site_name",
        "client_name",
        "firstname",
        "surname",
        "initials",
        "emailaddress",
        "phonenumber_preferred",
        "sitephonenumber",
        "phonenumber",
        "telpref",
        "activedirectory_dn",
        "onpremise_activedirectory_dn",
        "login",
        "inactive",
        "colour",
        "isimportantcontact",
        "neversendemails",
        "priority_id",
        "linked_agent_id",
        "isserviceaccount",
        "isimportantcontact2",
        "connectwiseid",
        "autotaskid",
        "use",
        "client_id",
    }
)
RATE_LIMIT_TEXT = "Rate Limit Reached - {limit} Requests per rolling {minutes:g} minute window"
BASE_UPDATE = dt.datetime(2026, 1, 5, 8, 0, 0)

_FIRST = ["Ada", "Bjorn", "Chiara", "Dmitri", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Zoë", "Łukasz"]
_LAST = ["Balaji", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Ñúñez", "Kowalski", "Haddad", "Silva", "Novak"]
_DEPARTMENTS = ["Sales", "Engineering", "Finance", "Support", "Marketing"]
_SITES = [("Main", 18.0), ("London", 19.0), ("Remote", 20.0)]
_TITLES = ["Analyst", "Engineer", "Manager", "Consultant"]


def generated_user(user_id: int, *, inactive: bool = False) -> dict[str, Any]:
    """The full Halo user a data set holds for ``user_id`` until a test changes it (deterministic)."""
    first = _FIRST[user_id % len(_FIRST)]
    last = f"{_LAST[(user_id // len(_FIRST)) % len(_LAST)]}{user_id}"
    site, site_id = _SITES[user_id % len(_SITES)]
    plain = f"{first}.{last}".lower().replace("ë", "e").replace("ł", "l").replace("ñ", "n").replace("ú", "u")
    return {
        "id": user_id,
        "name": f"{first} {last}",
        "firstname": first,
        "surname": last,
        "initials": first[0] + last[0],
        "title": _TITLES[user_id % len(_TITLES)],
        "emailaddress": f"{plain}@halo.example.test",
        "login": "",
        "samaccountname": "",
        "site_id": site_id,
        "site_name": site,
        "client_id": 12,
        "client_name": "DemoDoftware",
        "department": _DEPARTMENTS[user_id % len(_DEPARTMENTS)],
        "inactive": inactive,
        "isserviceaccount": False,
        "use": "user",
        "phonenumber_preferred": f"+44 20 7946 {user_id % 10000:04d}",
        "phonenumber": f"+44 20 7946 {user_id % 10000:04d}",
        "sitephonenumber": "",
        "mobilenumber": "",
        "telpref": 0,
        "activedirectory_dn": "",
        "onpremise_activedirectory_dn": "",
        "azureoid": "",
        "colour": "#2bd3c6",
        "isimportantcontact": False,
        "neversendemails": False,
        "priority_id": 0,
        "linked_agent_id": 0,
        "isimportantcontact2": False,
        "connectwiseid": 0,
        "autotaskid": -1,
        "ulastupdate": BASE_UPDATE.isoformat(),
        "customfields": [
            {
                "id": 101,
                "name": "CFEmployeeType",
                "label": "Employee type",
                "type": 0,
                "value": "Permanent",
                "display": "Permanent",
            },
        ],
    }


def _copy(user: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(user)


class UserSet:
    """Halo's users: ``count`` generated ones from ``first_id``, plus what tests changed, added and deleted."""

    def __init__(self, count: int, *, first_id: int = 1, inactive_every: int = 0) -> None:
        self.first_id = first_id
        self.count = count
        # Every ``inactive_every``-th generated user is inactive (0: none).
        self.inactive_every = inactive_every
        self._changed: dict[int, dict[str, Any]] = {}
        self._added: dict[int, dict[str, Any]] = {}
        self._deleted: set[int] = set()
        self._lock = threading.RLock()
        self._version = 0
        self._views: dict[tuple[bool, bool], tuple[int, array[int]]] = {}
        self._clock_ticks = 0

    def _generated(self, user_id: int) -> bool:
        return self.first_id <= user_id < self.first_id + self.count

    def exists(self, user_id: int) -> bool:
        with self._lock:
            if user_id in self._deleted:
                return False
            return user_id in self._added or self._generated(user_id)

    def get(self, user_id: int) -> dict[str, Any] | None:
        """The full user, or None."""
        with self._lock:
            if not self.exists(user_id):
                return None
            if user_id in self._changed:
                return _copy(self._changed[user_id])
            if user_id in self._added:
                return _copy(self._added[user_id])
            inactive = bool(self.inactive_every) and (user_id - self.first_id) % self.inactive_every == 0
            return generated_user(user_id, inactive=inactive)

    def _is_inactive(self, user_id: int) -> bool:
        if user_id in self._changed or user_id in self._added:
            user = self._changed.get(user_id) or self._added[user_id]
            return bool(user.get("inactive"))
        return bool(self.inactive_every) and (user_id - self.first_id) % self.inactive_every == 0

    def _next_update(self) -> str:
        self._clock_ticks += 1
        return (BASE_UPDATE + dt.timedelta(seconds=self._clock_ticks)).isoformat()

    def update(self, user_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        """Apply a partial update (as ``POST /api/Users`` does) and return the saved user."""
        with self._lock:
            user = self.get(user_id)
            if user is None:
                raise KeyError(user_id)
            custom = fields.get("customfields")
            user.update({k: v for k, v in fields.items() if not k.startswith("_") and k not in ("id", "customfields")})
            if isinstance(custom, list):
                # A written custom field replaces the one with its id or name; the others stay (how Halo merges
                # a partial list is not documented: this is the reading under which a partial write is safe).
                present = user.setdefault("customfields", [])
                for entry in custom:
                    found = next(
                        (
                            c
                            for c in present
                            if ("id" in entry and c.get("id") == entry["id"])
                            or ("name" in entry and str(c.get("name", "")).lower() == str(entry["name"]).lower())
                        ),
                        None,
                    )
                    if found is None:
                        present.append(dict(entry))
                    else:
                        found.update({"value": entry.get("value"), "display": entry.get("value")})
            user["ulastupdate"] = self._next_update()
            if user_id in self._added:
                self._added[user_id] = user
            else:
                self._changed[user_id] = user
            self._version += 1
            return _copy(user)

    def add(self, user: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            user_id = int(user.get("id") or max([self.first_id + self.count - 1, *self._added]) + 1)
            saved = {**user, "id": user_id, "ulastupdate": self._next_update()}
            self._added[user_id] = saved
            self._deleted.discard(user_id)
            self._version += 1
            return _copy(saved)

    def delete(self, user_id: int) -> None:
        with self._lock:
            self._deleted.add(user_id)
            self._changed.pop(user_id, None)
            self._added.pop(user_id, None)
            self._version += 1

    def _view(self, include_active: bool, include_inactive: bool) -> array[int]:
        with self._lock:
            key = (include_active, include_inactive)
            cached = self._views.get(key)
            if cached is not None and cached[0] == self._version:
                return cached[1]
            ids: array[int] = array("q")
            for user_id in (*range(self.first_id, self.first_id + self.count), *sorted(self._added)):
                if user_id in self._deleted:
                    continue
                inactive = self._is_inactive(user_id)
                if (inactive and include_inactive) or (not inactive and include_active):
                    ids.append(user_id)
            self._views[key] = (self._version, ids)
            return ids

    def page(
        self,
        page_no: int,
        page_size: int,
        *,
        include_active: bool,
        include_inactive: bool,
        order: str = "id",
        descending: bool = False,
        search: str = "",
    ) -> tuple[int, list[dict[str, Any]]]:
        ids: Sequence[int] = self._view(include_active, include_inactive)
        if search:
            # Halo's OpenAPI lists `search` for GET /api/Users without saying which fields it reads [SW]: the
            # worst plausible answer for a caller wanting one exact user is a loose one, a substring of the
            # name, the e-mail address or the login, so callers must compare the field they meant themselves.
            needle = search.lower()
            ids = [
                i
                for i in ids
                if (u := self.get(i)) is not None
                and any(needle in str(u.get(f) or "").lower() for f in ("name", "emailaddress", "login"))
            ]
        if order.lower() == "ulastupdate":
            # Halo's OpenAPI: `order` names the field to order by first, `orderdesc` the direction. Generated
            # users all carry BASE_UPDATE; only users a test changed or added are newer. Ties: by id.
            with self._lock:
                touched = {**self._added, **self._changed}
                stamps = {i: str(touched[i].get("ulastupdate") or "") for i in ids if i in touched}
            ids = sorted(ids, key=lambda i: (stamps.get(i, BASE_UPDATE.isoformat()), i), reverse=descending)
        elif descending:
            ids = list(reversed(ids))
        start = (page_no - 1) * page_size
        users = [u for u in (self.get(i) for i in ids[start : start + page_size]) if u is not None]
        return len(ids), users


class _Server(LoopbackTLSServer):
    standin: HaloStandIn


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle and delayed ACKs add 40 ms to each answer.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return

    def _reply(
        self, status: int, body: Any = None, *, headers: dict[str, str] | None = None, text: bool = False
    ) -> None:
        if body is None:
            payload = b""
        elif text:
            payload = str(body).encode("utf-8")
        else:
            payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "text/plain; charset=utf-8" if text else "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        self.server.standin.handle(self, "GET")

    def do_POST(self) -> None:
        self.server.standin.handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.standin.handle(self, "DELETE")


class HaloStandIn:
    """Halo's API on ``https://127.0.0.1:<port>``; start with ``start()`` (or ``with``), stop with ``stop()``."""

    def __init__(
        self,
        users: UserSet | None = None,
        *,
        client_id: str = "lifecycle-test-client",
        client_secret: str | None = None,
        tenant: str = "",
        scopes: Iterable[str] = ("all", "read:customers", "edit:customers"),
        token_lifetime: float = 3600.0,
        rate_limit: int = 300,
        rate_window: float = 300.0,
        rate_limit_retry_after: bool = True,
        partial_lists: bool = True,
        list_ulastupdate: bool = False,
        directory: Path | None = None,
    ) -> None:
        self.users = users or UserSet(0)
        # Tickets, actions, approvals, outcomes, statuses (tests/standins/halo_tickets.py).
        self.tickets = TicketDesk()
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.tenant = tenant
        self.scopes = frozenset(scopes)
        self.token_lifetime = token_lifetime
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.rate_limit_retry_after = rate_limit_retry_after
        # List items carry only LIST_FIELDS (as Halo's do), plus ulastupdate when list_ulastupdate.
        self.partial_lists = partial_lists
        self.list_ulastupdate = list_ulastupdate
        self._own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="halo-standin-"))
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}
        self._arrivals: deque[float] = deque()
        self._injected: deque[tuple[int, str | None]] = deque()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # What happened, for assertions.
        self.requests = 0
        self.routes: Counter[str] = Counter()
        self.max_in_window = 0
        self.rate_limited = 0  # 429s because the client went over the limit
        self.injected_served = 0
        self.tokens_issued = 0
        self.writes: list[list[dict[str, Any]]] = []
        # Halo Webhook objects (halo-openapi-subset.json, schema Webhook) served by GET /api/Webhook.
        self.webhooks: list[dict[str, Any]] = []
        self.automations: list[int] = []
        self.ca_file: Path | None = None

    # Lifecycle ---------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> HaloStandIn:
        self.ca_file, tls = server_tls(self.directory)
        server = _Server(("127.0.0.1", port), _Handler)
        server.standin = self
        server.tls = tls
        self._server = server
        self._thread = serve_in_background(server)
        return self

    def stop(self) -> None:
        shut_down(self._server, self._thread)
        self._server, self._thread = None, None
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> HaloStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Test controls -----------------------------------------------------------------------------------------
    def inject(self, responses: Sequence[tuple[int, str | None]]) -> None:
        """Answer the next authenticated API requests with these (status, Retry-After or None)."""
        with self._lock:
            self._injected.extend(responses)

    def clear_injections(self) -> None:
        """Drop the canned answers not served yet (Halo is back)."""
        with self._lock:
            self._injected.clear()

    def revoke_tokens(self) -> None:
        """Forget every issued token (a restart of Halo's auth server): the next API call gets 401."""
        with self._lock:
            self._tokens.clear()

    @property
    def pending_injections(self) -> int:
        with self._lock:
            return len(self._injected)

    # Requests ----------------------------------------------------------------------------------------------
    def handle(self, request: _Handler, method: str) -> None:
        parts = urlsplit(request.path)
        path = parts.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body = request._body() if method == "POST" else b""
        now = time.monotonic()
        with self._lock:
            self.requests += 1
            while self._arrivals and self._arrivals[0] <= now - self.rate_window:
                self._arrivals.popleft()
            if len(self._arrivals) >= self.rate_limit:
                self.rate_limited += 1
                wait = self._arrivals[0] + self.rate_window - now
                limited = True
            else:
                self._arrivals.append(now)
                self.max_in_window = max(self.max_in_window, len(self._arrivals))
                limited = False
            route = self._route_name(method, path)
            self.routes[route] += 1
            authenticated_route = path.startswith("/api/") and path.lower() != "/api/authinfo"
            injected = self._injected.popleft() if self._injected and authenticated_route else None
            if injected is not None:
                self.injected_served += 1
        if limited:
            headers = {"Retry-After": str(max(1, math.ceil(wait)))} if self.rate_limit_retry_after else {}
            minutes = self.rate_window / 60
            return request._reply(
                429, RATE_LIMIT_TEXT.format(limit=self.rate_limit, minutes=minutes), headers=headers, text=True
            )
        if injected is not None:
            status, retry_after = injected
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            text = "Rate Limit Reached" if status == 429 else "Service Unavailable"
            return request._reply(status, text, headers=headers, text=True)
        if path == "/auth/token" and method == "POST":
            return self._token(request, query, body)
        if path.lower() == "/api/authinfo" and method == "GET":
            return request._reply(200, {"auth_url": f"{self.url}/auth", "tenant_id": self.tenant or None})
        if path.startswith("/api/"):
            if not self._authorised(request):
                return request._reply(401, {"message": "Unauthorized"}, headers={"WWW-Authenticate": "Bearer"})
            return self._api(request, method, path, query, body)
        return request._reply(404, {"message": "Not found"})

    @staticmethod
    def _route_name(method: str, path: str) -> str:
        lowered = path.lower()
        if lowered.startswith("/api/users/"):
            return f"{method} /api/Users/{{id}}"
        if lowered == "/api/users":
            return f"{method} /api/Users"
        return TicketDesk.route_name(method, lowered) or f"{method} {path}"

    def _token(self, request: _Handler, query: dict[str, str], body: bytes) -> None:
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "client_credentials":
            return request._reply(400, {"error": "unsupported_grant_type"})
        if self.tenant and query.get("tenant") != self.tenant:
            return request._reply(400, {"error": "invalid_client", "error_description": "unknown tenant"})
        id_ok = hmac.compare_digest(form.get("client_id", "").encode(), self.client_id.encode())
        secret_ok = hmac.compare_digest(form.get("client_secret", "").encode(), self.client_secret.encode())
        if not (id_ok and secret_ok):
            return request._reply(400, {"error": "invalid_client"})
        scopes = form.get("scope", "all").split()
        if not scopes or any(s not in self.scopes for s in scopes):
            return request._reply(400, {"error": "invalid_scope"})
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_lifetime
            self.tokens_issued += 1
        return request._reply(
            200,
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "scope": " ".join(scopes),
            },
        )

    def _authorised(self, request: _Handler) -> bool:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        with self._lock:
            expires = self._tokens.get(token.strip())
        return expires is not None and expires > time.monotonic()

    def _list_item(self, user: dict[str, Any]) -> dict[str, Any]:
        if not self.partial_lists:
            return user
        keep = LIST_FIELDS | ({"ulastupdate"} if self.list_ulastupdate else set())
        return {k: v for k, v in user.items() if k in keep}

    def _api(self, request: _Handler, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        lowered = path.lower()
        if lowered == "/api/users" and method == "GET":
            include_inactive = query.get("includeinactive", "false").lower() == "true"
            include_active = query.get("includeactive", "true").lower() != "false"
            if query.get("pageinate", "false").lower() == "true":
                try:
                    page_size = int(query.get("page_size", "50"))
                    page_no = int(query.get("page_no", "1"))
                except ValueError:
                    return request._reply(400, {"message": "page_size and page_no must be whole numbers"})
                if page_size < 1 or page_no < 1:
                    return request._reply(400, {"message": "page_size and page_no start at 1"})
            else:
                page_no, page_size = 1, int(query.get("count", "100") or 100)
            total, users = self.users.page(
                page_no,
                page_size,
                include_active=include_active,
                include_inactive=include_inactive,
                order=query.get("order", "id"),
                descending=query.get("orderdesc", "false").lower() == "true",
                search=query.get("search", ""),
            )
            return request._reply(200, {"record_count": total, "users": [self._list_item(u) for u in users]})
        if lowered.startswith("/api/users/") and method == "GET":
            raw = path.rsplit("/", 1)[1]
            if not raw.isdigit():
                return request._reply(400, {"message": "the id must be a whole number"})
            user = self.users.get(int(raw))
            if user is None:
                return request._reply(404, {"message": f"User {raw} not found"})
            if query.get("includedetails", "false").lower() != "true":
                # "Include extra objects in the response" (Halo's OpenAPI): without it, assume the worst
                # plausible answer, no custom fields.
                user = {k: v for k, v in user.items() if k != "customfields"}
            return request._reply(200, user)
        if lowered == "/api/users" and method == "POST":
            return self._write(request, body)
        if self.tickets.handle(request, method, path, query, body):
            return None
        if lowered == "/api/webhook" and method == "GET":
            # Halo's OpenAPI: GET /Webhook lists them (filters isazureautomation, type); its response body is
            # undocumented, so the stand-in answers a bare array of Webhook objects as they were stored,
            # secrets (basic_password) included: the worst plausible case for a client that must not print them.
            wanted = query.get("type")
            return request._reply(200, [w for w in self.webhooks if wanted is None or str(w.get("type", 0)) == wanted])
        if lowered.startswith("/api/webhook/") and method == "GET":
            # GET /Webhook/{id} (a uuid), includedetails optional; an unknown id is a 404 like other entities.
            wanted_id = path.rsplit("/", 1)[1]
            found = next((w for w in self.webhooks if str(w.get("id")) == wanted_id), None)
            return request._reply(200, found) if found else request._reply(404, {"message": "Not found"})
        return request._reply(404, {"message": "Not found"})

    def _write(self, request: _Handler, body: bytes) -> None:
        try:
            items = json.loads(body)
        except ValueError:
            return request._reply(400, {"message": "the body is not JSON"})
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            return request._reply(400, {"message": "send an array of user objects"})
        for item in items:
            if "id" in item and not self.users.exists(int(item["id"])):
                return request._reply(400, {"message": f"User {item['id']} not found"})
        saved = []
        with self._lock:
            self.writes.append(json.loads(json.dumps(items)))
        for item in items:
            user = self.users.update(int(item["id"]), item) if "id" in item else self.users.add(item)
            if item.get("_dont_fire_automations") is not True:
                with self._lock:
                    self.automations.append(int(user["id"]))
            saved.append(user)
        return request._reply(200, saved)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a generated data set until SIGTERM; write ``{url, ca_file, client_id, client_secret}`` when ready."""
    parser = argparse.ArgumentParser(prog="python -m tests.standins.halo")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--first-id", type=int, default=1)
    parser.add_argument("--rate-limit", type=int, default=1_000_000)
    parser.add_argument("--rate-window", type=float, default=300.0)
    parser.add_argument("--full-lists", action="store_true", help="list items carry the whole user")
    parser.add_argument("--list-ulastupdate", action="store_true", help="list items carry ulastupdate")
    parser.add_argument("--change", type=int, nargs="*", default=[], help="ids whose department changes")
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args(argv)
    users = UserSet(args.users, first_id=args.first_id)
    for user_id in args.change:
        users.update(user_id, {"department": "Changed"})
    standin = HaloStandIn(
        users,
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        partial_lists=not args.full_lists,
        list_ulastupdate=args.list_ulastupdate,
    ).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ready = {
        "url": standin.url,
        "ca_file": str(standin.ca_file),
        "client_id": standin.client_id,
        "client_secret": standin.client_secret,
        "pid": os.getpid(),
    }
    partial = args.ready_file.with_suffix(".partial")
    partial.write_text(json.dumps(ready), encoding="utf-8")
    partial.replace(args.ready_file)
    try:
        stop.wait()
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
