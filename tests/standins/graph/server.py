"""The HTTPS server: GraphStandIn, its lifecycle, the test helpers and the dispatch of every request."""

from __future__ import annotations

import copy
import json
import re
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.standins.graph.batching import BatchingMixin
from tests.standins.graph.entra import EntraMixin
from tests.standins.graph.mailbox import _new_mailbox
from tests.standins.graph.model import Answer, Fault, Group, Logged, User, error, not_found
from tests.standins.graph.users import UsersMixin
from tests.standins.tls import LoopbackTLSServer, serve_in_background, server_tls, shut_down


class _Server(LoopbackTLSServer):
    standin: GraphStandIn


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, payload, extra = self.server.standin.handle(self.command, self.path, headers, body)
        if isinstance(payload, bytes):
            data, content_type = payload, extra.pop("content-type", "application/octet-stream")
        elif payload is None:
            data, content_type = b"", ""
        else:
            data, content_type = json.dumps(payload).encode("utf-8"), "application/json"
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle  # noqa: N815 - http.server's names


class GraphStandIn(BatchingMixin, EntraMixin, UsersMixin):
    """Graph, Entra's token endpoint and a photo server, in one HTTPS server on 127.0.0.1."""

    # Lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> GraphStandIn:
        self.ca_file, tls = server_tls(self.directory)
        server = _Server(("127.0.0.1", 0), _Handler)
        server.standin = self
        server.tls = tls
        self._server = server
        self._thread = serve_in_background(server)
        return self

    def stop(self) -> None:
        self._released.set()  # stalled handlers return (their clients gave up long ago)
        shut_down(self._server, self._thread)
        self._server, self._thread = None, None

    def add_tenant(self, tenant: str) -> GraphStandIn:
        """Another tenant on the same server: its own token endpoint (``/{tenant}/oauth2/v2.0/token``), tokens,
        users, groups, SKUs, request log and faults. Graph itself has one address for every tenant; the token
        says which directory a request reaches (a client-credentials token is issued for the tenant named in
        the token URL: https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow).
        Register the app in it (``clients``) to stand for the customer's admin consent.
        """
        assert self._server is not None, "start the stand-in first"
        other = GraphStandIn(self.directory, tenant=tenant)
        other._server, other._thread, other.ca_file, other._released = self._server, None, self.ca_file, self._released
        other.tenants = self.tenants
        self.tenants[tenant] = other
        return other

    # Test helpers ------------------------------------------------------------------------------------------
    def add_user(self, upn: str, **fields: Any) -> User:
        with self._lock:
            user = User(id=str(uuid.uuid4()), upn=upn, display_name=fields.pop("display_name", upn), **fields)
            if user.mail and not user.proxy_addresses:
                user.proxy_addresses = [f"SMTP:{user.mail}"]
            for sku, disabled in user.licenses.items():
                self._plans_assigned(user, sku, disabled)
            self.users[user.id] = user
            return user

    def add_group(self, name: str, **fields: Any) -> Group:
        with self._lock:
            group = Group(id=str(fields.pop("id", None) or uuid.uuid4()).lower(), name=name, **fields)
            self.groups[group.id] = group
            return group

    def add_role(self, name: str, *members: User) -> str:
        """An activated directory role (``directoryRole``) with these members."""
        with self._lock:
            role_id = str(uuid.uuid4())
            self.roles[role_id] = {"displayName": name, "members": {m.id for m in members}}
            return role_id

    def user(self, upn: str) -> User:
        with self._lock:
            return next(u for u in self.users.values() if u.upn.lower() == upn.lower())

    def anchored(self, value: str) -> User | None:
        """The active or soft-deleted user whose employeeId is ``value``."""
        with self._lock:
            users = [*self.users.values(), *self.deleted.values()]
            return next((u for u in users if u.extra.get("employeeId") == value), None)

    def provision_mailbox(self, upn: str) -> None:
        with self._lock:
            user = self.user(upn)
            user.mailbox_pending = False
            user.mailbox = _new_mailbox()

    def fail(
        self,
        method: str,
        path_pattern: str,
        status: int,
        *,
        times: int = 1,
        retry_after: int | None = None,
        commit: bool = False,
        body: Any = None,
    ) -> None:
        """Answer ``status`` to the next ``times`` requests matching (alone or in a batch)."""
        with self._lock:
            self._faults.append(
                Fault(method.upper(), re.compile(path_pattern), status, times, retry_after, commit, body)
            )

    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.times for f in self._faults)

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def writes(self) -> list[Logged]:
        with self._lock:
            return [e for e in self.log if e.is_write]

    def http_requests(self) -> list[Logged]:
        """Requests that were HTTP requests of their own (a batch counts once)."""
        with self._lock:
            return [e for e in self.log if not e.in_batch]

    # Dispatch ----------------------------------------------------------------------------------------------
    def stall(self, path_pattern: str) -> None:
        """Accept requests whose path matches and never answer them (until the stand-in stops)."""
        with self._lock:
            self.stalled.append(re.compile(path_pattern))

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        parts = urlsplit(target)
        path = parts.path
        with self._lock:
            stalled = any(p.search(path) for p in self.stalled)
        if stalled:
            self._released.wait()
            return 503, None, {}
        for tenant, issuer in self._directories().items():
            if path.startswith(f"/{tenant}/"):
                return issuer._entra(method, path[len(tenant) + 1 :], headers, body)
        if path == "/msi/token":
            return self._managed_identity(parts.query, headers)
        if path.startswith("/photos/"):
            name = unquote(path[len("/photos/") :])
            photo = self.photos.get(name)
            return (200, photo, {"content-type": "image/jpeg"}) if photo is not None else (404, None, {})
        if not path.startswith("/v1.0/"):
            return 404, error("BadRequest", f"Invalid version: {path}"), {}
        auth = headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        # The token's tenant decides the directory (each tenant knows only the tokens it issued).
        directory = next((d for d in self._directories().values() if d.holds(token)), None)
        if directory is None:
            status, payload = 401, error("InvalidAuthenticationToken", "Access token is empty.")
            self._record(method, path[5:], parts.query, status, False, None)
            return status, payload, {}
        return directory._graph(method, path[5:], parts.query, headers, body, in_batch=False)

    def _directories(self) -> dict[str, GraphStandIn]:
        return dict(self.tenants)

    def holds(self, token: str) -> bool:
        """Whether this tenant issued ``token``."""
        with self._lock:
            return bool(token) and token in self._tokens

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], raw: bytes, body: Any
    ) -> Answer:
        segments = [unquote(s) for s in path.strip("/").split("/")]
        if segments == ["subscribedSkus"] and method == "GET":
            skus = copy.deepcopy(self.skus)
            for sku in skus:
                for plan in sku["servicePlans"]:
                    plan.pop("dependsOn", None)  # not part of servicePlanInfo
            return 200, {"value": skus}, {}
        if segments == ["users"] and method == "GET":
            return self._filter_users(query, headers)
        if segments == ["users"] and method == "POST":
            return self._create_user(body)
        if segments[0] == "directory" and segments[1:2] == ["deletedItems"]:
            return self._deleted_items(method, segments[2:], query, body)
        if len(segments) >= 2 and segments[0] == "users":
            user = self._find_user(segments[1])
            if user is None:
                return (*not_found(segments[1]), {})
            return self._user_route(method, user, segments[2:], query, headers, raw, body)
        if len(segments) >= 2 and segments[0] == "groups":
            group = self.groups.get(segments[1].lower())
            if group is None:
                return (*not_found(segments[1]), {})
            return self._group_route(method, group, segments[2:], body)
        return 400, error("BadRequest", f"Resource not found for the segment '{segments[0]}'."), {}
