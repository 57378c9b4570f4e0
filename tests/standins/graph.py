"""A stand-in for Microsoft Graph and Entra ID's token endpoint, over HTTPS on 127.0.0.1.

It follows the contract in shared/reference/graph.md, errors included, because a stand-in that only answers
what the code expects proves nothing:

- Token: ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (msal reads it in its constructor) and
  ``POST /{tenant}/oauth2/v2.0/token`` with ``client_credentials``, by client secret or by a signed client
  assertion (the JWT's signature is checked against the registered certificate, RS256 or PS256); a ``claims``
  field is accepted; wrong credentials get ``invalid_client`` (AADSTS7000215). A managed-identity endpoint
  (App Service style, ``X-IDENTITY-HEADER``) is served at ``/msi/token``.
- Graph (``/v1.0``): bearer tokens checked (401 ``InvalidAuthenticationToken``); users by id or UPN with
  ``$select``; ``$filter=onPremisesImmutableId eq '..'``; PATCH users (204; ``@odata.type`` tolerated, unknown
  properties 400); ``assignLicense`` (both lists required; 400 without ``usageLocation``, for an unknown SKU,
  for removing a licence the user lacks); ``licenseAssignmentStates`` with group-assigned licences;
  ``assignedPlans`` with assignment times; ``licenseDetails``; ``memberOf`` cast to groups, paged with
  ``@odata.nextLink``; group ``members/$ref`` add (204; 400 for a duplicate, a dynamic, synced or
  mail-enabled group) and remove (204; 404 when not a member); ``revokeSignInSessions``; ``mailboxSettings``
  (404 ``MailboxNotEnabledForRESTAPI`` until a mailbox is provisioned; reply messages come back wrapped in
  HTML as Exchange stores them); the photo ``$value`` (GET, PUT ``image/jpeg`` up to 4 MB, DELETE);
  ``sendMail`` (202); ``subscribedSkus``; JSON batching (``$batch``: 20 requests at most, ``dependsOn`` with
  424 for dependents of a failure, binary bodies base64-encoded).
- Faults: ``fail(method, path_pattern, status, times=, retry_after=, commit=)`` answers ``status`` to the next
  matching requests, alone or inside a batch; with ``commit=True`` the request takes effect first (a 503 after
  a committed POST).

Every request is logged (``log``): top-level requests and batch sub-requests, so a test can count HTTP
requests and prove that a run wrote nothing.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tests.standins.tls import LoopbackTLSServer, serve_in_background, server_tls, shut_down

EXCHANGE = "efb87545-963c-4e0d-99df-69c6916d9eb0"  # EXCHANGE_S_ENTERPRISE
EXCHANGE_STANDARD = "9aaf7827-d63c-4b61-89c3-182f06f82e5c"
TEAMS = "57ff2da0-773e-42df-b2af-ffb7a2317929"  # TEAMS1
SKYPE = "0feaeb32-d00e-4d66-bd5a-43b5b83db82c"  # MCOSTANDARD
SHAREPOINT = "5dbe027f-2339-4123-9542-606e4d348a72"  # SHAREPOINTENTERPRISE
E3 = "05e9a617-0261-4cee-bb44-138d3ef5d965"  # SPE_E3
E1 = "18181a46-0d4e-45cd-891e-60aabd171b4e"  # STANDARDPACK
VISIO = "c5928f49-12ba-48f7-ada3-0d743a3601d5"  # VISIOCLIENT
DEFAULT_SKUS: list[dict[str, Any]] = [
    {
        "skuId": E3,
        "skuPartNumber": "SPE_E3",
        "servicePlans": [
            {"servicePlanId": EXCHANGE, "servicePlanName": "EXCHANGE_S_ENTERPRISE"},
            {"servicePlanId": TEAMS, "servicePlanName": "TEAMS1"},
            {"servicePlanId": SKYPE, "servicePlanName": "MCOSTANDARD"},
            {"servicePlanId": SHAREPOINT, "servicePlanName": "SHAREPOINTENTERPRISE"},
        ],
    },
    {
        "skuId": E1,
        "skuPartNumber": "STANDARDPACK",
        "servicePlans": [
            {"servicePlanId": EXCHANGE_STANDARD, "servicePlanName": "EXCHANGE_S_STANDARD"},
            {"servicePlanId": TEAMS, "servicePlanName": "TEAMS1"},
        ],
    },
    {
        "skuId": VISIO,
        "skuPartNumber": "VISIOCLIENT",
        "servicePlans": [{"servicePlanId": "663a804f-1c30-4ff0-9915-9db84f0d1cea", "servicePlanName": "VISIO_CLIENT"}],
    },
]
# Microsoft 365 F3 (frontline): the kiosk mailbox plan under its published id; the SKU's and MCOIMP's ids are
# the stand-in's own (the target resolves them by name through subscribedSkus).
KIOSK = "4a82b400-a79f-41a4-b4e2-e94f5787b113"  # EXCHANGE_S_DESKLESS
F3 = "5f3c2d1e-0000-4000-8000-0000000000f3"  # SPE_F1 (stand-in id)
SKYPE_KIOSK = "5f3c2d1e-0000-4000-8000-00000000c0e1"  # MCOIMP (stand-in id)
DEFAULT_SKUS.append(
    {
        "skuId": F3,
        "skuPartNumber": "SPE_F1",
        "servicePlans": [
            {"servicePlanId": KIOSK, "servicePlanName": "EXCHANGE_S_DESKLESS"},
            {"servicePlanId": TEAMS, "servicePlanName": "TEAMS1"},
            {"servicePlanId": SKYPE_KIOSK, "servicePlanName": "MCOIMP"},
        ],
    }
)
# A SKU whose plans depend on each other: Office for the web needs SharePoint (Microsoft's admin center:
# "to assign a license that contains Office for the web, you must also assign one of the following service
# plans: SharePoint Online (Plan 2), ...", quoted in MicrosoftDocs/OfficeDocs-Enterprise#627). Microsoft
# publishes no dependency list (MicrosoftDocs/azure-docs#23999), and subscribedSkus carries none: the
# stand-in keeps them to itself ("dependsOn" is never answered) and refuses with a message naming the plans.
WEB = "5f3c2d1e-0000-4000-8000-00000000ab01"  # stand-in ids
WEB_SHAREPOINT = "5f3c2d1e-0000-4000-8000-00000000ab02"
WEB_OFFICE = "5f3c2d1e-0000-4000-8000-00000000ab03"
DEFAULT_SKUS.append(
    {
        "skuId": WEB,
        "skuPartNumber": "O365_WEB",
        "servicePlans": [
            {"servicePlanId": WEB_SHAREPOINT, "servicePlanName": "SHAREPOINTSTANDARD"},
            {"servicePlanId": WEB_OFFICE, "servicePlanName": "SHAREPOINTWAC", "dependsOn": [WEB_SHAREPOINT]},
        ],
    }
)
EXCHANGE_PLANS = {EXCHANGE, EXCHANGE_STANDARD, KIOSK}
WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}
_USER_PROPERTIES = {
    "accountEnabled",
    "displayName",
    "usageLocation",
    "givenName",
    "surname",
    "jobTitle",
    "department",
    "mail",
    "mailNickname",
    "userPrincipalName",
    "passwordProfile",
}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error(code: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {"date": iso(now()), "request-id": str(uuid.uuid4()), "client-request-id": str(uuid.uuid4())},
        }
    }


def not_found(what: str) -> tuple[int, Any]:
    return 404, error(
        "Request_ResourceNotFound",
        f"Resource '{what}' does not exist or one of its queried reference-property objects are not present.",
    )


@dataclass
class Logged:
    method: str
    path: str  # below /v1.0, unescaped, without the query
    query: str
    status: int
    in_batch: bool
    body: Any = None

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS and self.path != "/$batch"


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    retry_after: int | None
    commit: bool
    body: Any = None


@dataclass
class User:
    id: str
    upn: str
    display_name: str
    mail: str | None = None
    enabled: bool = True
    synced: bool = False
    immutable_id: str | None = None
    usage_location: str | None = None
    licenses: dict[str, list[str]] = field(default_factory=dict)  # direct: skuId -> disabled plans
    group_licenses: dict[str, str] = field(default_factory=dict)  # skuId -> assigning group id
    # skuId -> licenseAssignmentState error (CountViolation, DependencyViolation, ...): state "Error".
    license_errors: dict[str, str] = field(default_factory=dict)
    plan_times: dict[str, str] = field(default_factory=dict)  # servicePlanId -> assignedDateTime
    sessions_valid_from: str | None = None
    mailbox: dict[str, Any] | None = None
    mailbox_pending: bool = False
    photo: bytes | None = None


@dataclass
class Group:
    id: str
    name: str
    group_types: list[str] = field(default_factory=list)
    membership_rule: str | None = None
    synced: bool = False
    mail_enabled: bool = False
    security_enabled: bool = True
    role_assignable: bool = False
    members: set[str] = field(default_factory=set)


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


Answer = tuple[int, Any, dict[str, str]]


class GraphStandIn:
    """Graph, Entra's token endpoint and a photo server, in one HTTPS server on 127.0.0.1."""

    def __init__(self, directory: Path, *, tenant: str = "contoso-tenant") -> None:
        self.directory = directory
        self.tenant = tenant
        self.users: dict[str, User] = {}
        self.groups: dict[str, Group] = {}
        self.skus: list[dict[str, Any]] = copy.deepcopy(DEFAULT_SKUS)
        self.log: list[Logged] = []
        self.token_requests: list[dict[str, str]] = []
        self.sent_mail: list[dict[str, Any]] = []
        self.photos: dict[str, bytes] = {}  # served at /photos/<name>
        self.roles: dict[str, dict[str, Any]] = {}  # directory role id -> {"displayName", "members": set}
        self.page_size = 100
        # "instant": a mailbox answers as soon as an Exchange plan is assigned; "manual": provision_mailbox().
        self.mailbox_provisioning = "instant"
        self.clients: dict[str, str] = {}  # client id -> secret
        self.certificates: dict[str, Any] = {}  # client id -> x509 certificate
        self.identity_header = secrets.token_hex(16)
        self._tokens: set[str] = set()
        self._faults: list[Fault] = []
        # Requests whose path matches one of these get no answer until stop() (a stalled service).
        self.stalled: list[re.Pattern[str]] = []
        self._released = threading.Event()
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.ca_file: Path | None = None

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

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def graph_url(self) -> str:
        return f"{self.url}/v1.0"

    # Test helpers ------------------------------------------------------------------------------------------
    def add_user(self, upn: str, **fields: Any) -> User:
        with self._lock:
            user = User(id=str(uuid.uuid4()), upn=upn, display_name=fields.pop("display_name", upn), **fields)
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
        if path.startswith(f"/{self.tenant}/"):
            return self._entra(method, path[len(self.tenant) + 1 :], headers, body)
        if path == "/msi/token":
            return self._managed_identity(parts.query, headers)
        if path.startswith("/photos/"):
            name = unquote(path[len("/photos/") :])
            photo = self.photos.get(name)
            return (200, photo, {"content-type": "image/jpeg"}) if photo is not None else (404, None, {})
        if not path.startswith("/v1.0/"):
            return 404, error("BadRequest", f"Invalid version: {path}"), {}
        auth = headers.get("authorization", "")
        with self._lock:
            valid = auth.startswith("Bearer ") and auth[7:] in self._tokens
        if not valid:
            status, payload = 401, error("InvalidAuthenticationToken", "Access token is empty.")
            self._record(method, path[5:], parts.query, status, False, None)
            return status, payload, {}
        return self._graph(method, path[5:], parts.query, headers, body, in_batch=False)

    def _record(self, method: str, path: str, query: str, status: int, in_batch: bool, body: Any) -> None:
        with self._lock:
            self.log.append(Logged(method, unquote(path), unquote(query), status, in_batch, body))

    def _fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.method in (method, "*") and fault.pattern.search(unquote(path)):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _graph(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes, *, in_batch: bool
    ) -> Answer:
        parsed: Any = None
        if body and not headers.get("content-type"):
            # Worst plausible for a body without a media type: refused (415), never guessed.
            self._record(method, path, query, 415, in_batch, None)
            return 415, error("UnsupportedMediaType", "A Content-Type header is required with a body."), {}
        if body and "json" in headers.get("content-type", ""):
            try:
                parsed = json.loads(body)
            except ValueError:
                status, payload = 400, error("BadRequest", "Unable to read JSON request payload.")
                self._record(method, path, query, status, in_batch, None)
                return status, payload, {}
        fault = self._fault(method, path)
        if fault is not None and not fault.commit:
            return self._faulted(fault, method, path, query, in_batch, parsed)
        if path == "/$batch" and method == "POST" and not in_batch:
            self._record(method, path, query, 200, False, None)
            return self._batch(parsed)
        with self._lock:
            status, payload, extra = self._route(method, path, parse_qs(query), headers, body, parsed)
        if fault is not None:
            return self._faulted(fault, method, path, query, in_batch, parsed)
        self._record(method, path, query, status, in_batch, parsed if method in WRITE_METHODS else None)
        return status, payload, extra

    def _faulted(self, fault: Fault, method: str, path: str, query: str, in_batch: bool, parsed: Any) -> Answer:
        self._record(method, path, query, fault.status, in_batch, parsed if method in WRITE_METHODS else None)
        extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        codes = {429: "TooManyRequests", 503: "serviceNotAvailable", 504: "UnknownError", 500: "generalException"}
        payload = fault.body or error(codes.get(fault.status, "BadRequest"), f"Injected {fault.status}")
        return fault.status, payload, extra

    def _batch(self, payload: Any) -> Answer:
        requests = (payload or {}).get("requests")
        if not isinstance(requests, list) or not requests:
            return 400, error("BadRequest", "Invalid batch payload format."), {}
        if len(requests) > 20:
            return 400, error("BadRequest", "Number of batch request steps exceeds the maximum of 20."), {}
        ids = [str(r.get("id")) for r in requests]
        if len(set(ids)) != len(ids):
            return 400, error("BadRequest", "Batch request contains duplicate ids."), {}
        statuses: dict[str, int] = {}
        responses = []
        for request in requests:
            rid = str(request["id"])
            depends = [str(d) for d in request.get("dependsOn") or []]
            if any(d not in ids for d in depends):
                return 400, error("BadRequest", "Batch dependsOn refers to an unknown request id."), {}
            if any(not 200 <= statuses.get(d, 0) < 300 for d in depends):
                statuses[rid] = 424
                responses.append({"id": rid, "status": 424, "body": error("FailedDependency", "Failed dependency.")})
                continue
            sub_headers_check = {str(k).lower() for k in (request.get("headers") or {})}
            if request.get("body") is not None and "content-type" not in sub_headers_check:
                # "If a body is included with the request, the headers object must contain a value for
                # Content-Type" (https://learn.microsoft.com/en-us/graph/json-batching); worst plausible: the
                # whole batch is refused.
                return 400, error("BadRequest", "Content-Type header must be specified for a request with a body."), {}
            url = str(request.get("url", ""))
            if not url.startswith("/"):
                url = "/" + url
            sub = urlsplit(url)
            sub_headers = {str(k).lower(): str(v) for k, v in (request.get("headers") or {}).items()}
            body = request.get("body")
            raw = b""
            if body is not None:
                if "json" in sub_headers.get("content-type", "application/json"):
                    raw = json.dumps(body).encode("utf-8")
                    sub_headers.setdefault("content-type", "application/json")
                else:
                    raw = base64.b64decode(body)
            status, answer, extra = self._graph(
                str(request.get("method", "GET")).upper(), sub.path, sub.query, sub_headers, raw, in_batch=True
            )
            statuses[rid] = status
            item: dict[str, Any] = {"id": rid, "status": status, "headers": dict(extra)}
            if isinstance(answer, bytes):
                item["headers"]["Content-Type"] = item["headers"].pop("content-type", "application/octet-stream")
                item["body"] = base64.b64encode(answer).decode("ascii")
            elif answer is not None:
                item["headers"]["Content-Type"] = "application/json"
                item["body"] = answer
            responses.append(item)
        # "Responses to the batched requests might appear in a different order" (json-batching docs): the
        # stand-in always reverses them, so a client that matches by position fails here.
        return 200, {"responses": list(reversed(responses))}, {}

    # Graph routes ------------------------------------------------------------------------------------------
    def _find_user(self, key: str) -> User | None:
        key = unquote(key).lower()
        return self.users.get(key) or next((u for u in self.users.values() if u.upn.lower() == key), None)

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
            return self._list_users(query)
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

    def _list_users(self, query: dict[str, list[str]]) -> Answer:
        text = (query.get("$filter") or [""])[0]
        match = re.fullmatch(r"onPremisesImmutableId eq '([^']*)'", text.strip())
        if text and match is None:
            return 400, error("Request_UnsupportedQuery", "Unsupported or invalid query filter clause specified."), {}
        users = [u for u in self.users.values() if match is None or u.immutable_id == match.group(1)]
        select = _select(query)
        return 200, {"value": [_pick(self._user_json(u), select) for u in users]}, {}

    def _user_json(self, user: User) -> dict[str, Any]:
        states = [
            {"skuId": sku, "disabledPlans": list(disabled), "assignedByGroup": None, "state": "Active", "error": "None"}
            for sku, disabled in user.licenses.items()
        ]
        states += [
            {"skuId": sku, "disabledPlans": [], "assignedByGroup": group, "state": "Active", "error": "None"}
            for sku, group in user.group_licenses.items()
        ]
        # A licence Entra could not apply keeps its state "Error" and the reason
        # (https://learn.microsoft.com/en-us/graph/api/resources/licenseassignmentstate).
        for state in states:
            if state["skuId"] in user.license_errors:
                state["state"], state["error"] = "Error", user.license_errors[state["skuId"]]
        assigned = {**{s: [] for s in user.group_licenses}, **user.licenses}
        return {
            "@odata.type": "#microsoft.graph.user",
            "id": user.id,
            "userPrincipalName": user.upn,
            "displayName": user.display_name,
            "mail": user.mail,
            "accountEnabled": user.enabled,
            "onPremisesSyncEnabled": True if user.synced else None,
            "onPremisesImmutableId": user.immutable_id,
            "usageLocation": user.usage_location,
            "assignedLicenses": [{"skuId": s, "disabledPlans": list(d)} for s, d in assigned.items()],
            "licenseAssignmentStates": states,
            "assignedPlans": [
                {
                    "assignedDateTime": when,
                    "capabilityStatus": "Enabled" if self._plan_enabled(user, plan) else "Deleted",
                    "service": "exchange" if plan in EXCHANGE_PLANS else "other",
                    "servicePlanId": plan,
                }
                for plan, when in user.plan_times.items()
            ],
            "signInSessionsValidFromDateTime": user.sessions_valid_from,
        }

    def _sku(self, sku_id: str) -> dict[str, Any] | None:
        return next((s for s in self.skus if s["skuId"] == sku_id.lower()), None)

    def _plan_enabled(self, user: User, plan: str) -> bool:
        for sku, disabled in {**{s: [] for s in user.group_licenses}, **user.licenses}.items():
            info = self._sku(sku)
            if info and plan in {p["servicePlanId"] for p in info["servicePlans"]} and plan not in disabled:
                return True
        return False

    def _plans_assigned(self, user: User, sku: str, disabled: list[str]) -> None:
        info = self._sku(sku)
        for plan in info["servicePlans"] if info else []:
            plan_id = plan["servicePlanId"]
            if plan_id not in disabled and plan_id not in user.plan_times:
                user.plan_times[plan_id] = iso(now())
        if any(self._plan_enabled(user, p) for p in EXCHANGE_PLANS) and user.mailbox is None:
            if self.mailbox_provisioning == "instant":
                user.mailbox = _new_mailbox()
            else:
                user.mailbox_pending = True

    def _user_route(
        self,
        method: str,
        user: User,
        rest: list[str],
        query: dict[str, list[str]],
        headers: dict[str, str],
        raw: bytes,
        body: Any,
    ) -> Answer:
        if not rest:
            if method == "GET":
                return 200, _pick(self._user_json(user), _select(query)), {}
            if method == "PATCH":
                return self._patch_user(user, body)
            return 405, error("Request_BadRequest", "Method not allowed."), {}
        name = rest[0]
        if name == "assignLicense" and method == "POST":
            return self._assign_license(user, body)
        if name == "licenseDetails" and method == "GET":
            details = []
            for sku in {**user.group_licenses, **user.licenses}:
                info = self._sku(sku) or {"skuPartNumber": "?", "servicePlans": []}
                details.append(
                    {
                        "id": f"{user.id}-{sku}",
                        "skuId": sku,
                        "skuPartNumber": info["skuPartNumber"],
                        "servicePlans": copy.deepcopy(info["servicePlans"]),
                    }
                )
            return 200, {"value": details}, {}
        if name == "memberOf" and method == "GET":
            if len(rest) > 1 and rest[1] not in ("microsoft.graph.group", "graph.group"):
                return 400, error("BadRequest", f"Unsupported cast {rest[1]}"), {}
            groups = sorted((g for g in self.groups.values() if user.id in g.members), key=lambda g: g.id)
            top = min(int((query.get("$top") or [str(self.page_size)])[0]), self.page_size)
            skip = int((query.get("$skiptoken") or ["0"])[0])
            page = groups[skip : skip + top]
            answer: dict[str, Any] = {"value": [_pick(_group_json(g), _select(query)) for g in page]}
            if skip + top < len(groups):
                select = ",".join(_select(query) or [])
                answer["@odata.nextLink"] = (
                    f"{self.graph_url}/users/{user.id}/memberOf/microsoft.graph.group?$top={top}"
                    f"&$skiptoken={skip + top}" + (f"&$select={select}" if select else "")
                )
            return 200, answer, {}
        if name == "transitiveMemberOf" and method == "GET":
            # Groups (nested ones too; the stand-in has no nesting) and activated directory roles, as
            # directoryObjects with their @odata.type (https://learn.microsoft.com/en-us/graph/api/
            # user-list-transitivememberof). Paged like memberOf.
            objects: list[dict[str, Any]] = [
                _group_json(g) for g in sorted(self.groups.values(), key=lambda g: g.id) if user.id in g.members
            ]
            objects += [
                {"@odata.type": "#microsoft.graph.directoryRole", "id": rid, "displayName": role["displayName"]}
                for rid, role in sorted(self.roles.items())
                if user.id in role["members"]
            ]
            top = min(int((query.get("$top") or [str(self.page_size)])[0]), self.page_size)
            skip = int((query.get("$skiptoken") or ["0"])[0])
            answer = {"value": objects[skip : skip + top]}
            if skip + top < len(objects):
                answer["@odata.nextLink"] = (
                    f"{self.graph_url}/users/{user.id}/transitiveMemberOf?$top={top}&$skiptoken={skip + top}"
                )
            return 200, answer, {}
        if name == "revokeSignInSessions" and method == "POST":
            user.sessions_valid_from = iso(now())
            return 200, {"@odata.context": "$metadata#Edm.Boolean", "value": True}, {}
        if name == "mailboxSettings":
            if user.mailbox is None:
                return (
                    404,
                    error(
                        "MailboxNotEnabledForRESTAPI",
                        "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
                    ),
                    {},
                )
            if method == "GET":
                return 200, copy.deepcopy(user.mailbox), {}
            if method == "PATCH":
                return self._patch_mailbox(user, body)
        if name == "photo" and rest[1:] == ["$value"]:
            if method == "GET":
                if user.photo is None:
                    return 404, error("ImageNotFound", "Exception of type 'ImageNotFoundException' was thrown."), {}
                return 200, user.photo, {"content-type": "image/jpeg"}
            if method == "PUT":
                if headers.get("content-type", "").split(";")[0] not in ("image/jpeg", "image/png"):
                    return 400, error("ErrorInvalidRequest", "The photo must be image/jpeg or image/png."), {}
                if len(raw) > 4 * 1024 * 1024:
                    return 400, error("ErrorInvalidRequest", "The photo is larger than 4 MB."), {}
                # Exchange stores the upload as its own renditions (resized, re-encoded JPEG), so a GET does not
                # answer the uploaded bytes (https://learn.microsoft.com/en-us/graph/api/profilephoto-update:
                # "the photo is resized"; sizes listed at .../resources/profilephoto).
                user.photo = _rendition(raw)
                return 200, None, {}
            if method == "DELETE":
                if user.photo is None:
                    # Worst plausible (unconfirmed for DELETE): the same 404 as a GET of a missing photo.
                    return 404, error("ImageNotFound", "Exception of type 'ImageNotFoundException' was thrown."), {}
                user.photo = None
                return 204, None, {}
        if name == "sendMail" and method == "POST":
            message = (body or {}).get("message")
            if not isinstance(message, dict) or not message.get("toRecipients"):
                return 400, error("ErrorInvalidRecipients", "At least one recipient is not valid."), {}
            self.sent_mail.append({"from": user.upn, **copy.deepcopy(body)})
            return 202, None, {}
        return 400, error("BadRequest", f"Resource not found for the segment '{name}'."), {}

    def _patch_user(self, user: User, body: Any) -> Answer:
        if not isinstance(body, dict):
            return 400, error("BadRequest", "Empty Payload. JSON content expected."), {}
        fields = {k: v for k, v in body.items() if k != "@odata.type"}
        unknown = set(fields) - _USER_PROPERTIES
        if unknown:
            name = sorted(unknown)[0]
            return (
                400,
                error("Request_BadRequest", f"Property '{name}' does not exist on type 'microsoft.graph.user'."),
                {},
            )
        # accountEnabled of a synced user can be changed in Entra (the next sync writes AD's value again);
        # Microsoft's hybrid leaver guidance disables the user in both directories:
        # https://learn.microsoft.com/en-us/entra/identity/users/users-revoke-access#hybrid-environments.
        # Names stay AD's: source of authority (reference/graph.md).
        if user.synced and set(fields) & {"displayName", "userPrincipalName", "givenName", "surname"}:
            return (
                400,
                error(
                    "Request_BadRequest",
                    "Unable to update the specified properties for on-premises mastered Directory Sync objects or "
                    "objects currently undergoing migration.",
                ),
                {},
            )
        if "accountEnabled" in fields:
            user.enabled = bool(fields["accountEnabled"])
        if "usageLocation" in fields:
            user.usage_location = fields["usageLocation"]
        if "displayName" in fields:
            user.display_name = fields["displayName"]
        return 204, None, {}

    def _assign_license(self, user: User, body: Any) -> Answer:
        if not isinstance(body, dict) or "addLicenses" not in body or "removeLicenses" not in body:
            return (
                400,
                error("Request_BadRequest", "Invalid value specified for property 'addLicenses' or 'removeLicenses'."),
                {},
            )
        add = body["addLicenses"] or []
        remove = [str(s).lower() for s in body["removeLicenses"] or []]
        if add and not user.usage_location:
            return (
                400,
                error("Request_BadRequest", "License assignment cannot be done for user with invalid usage location."),
                {},
            )
        for item in add:
            sku = str(item.get("skuId", "")).lower()
            info = self._sku(sku)
            if info is None:
                return (
                    400,
                    error("Request_BadRequest", f"License {sku} does not correspond to a valid company License."),
                    {},
                )
            plans = {p["servicePlanId"] for p in info["servicePlans"]}
            for plan in item.get("disabledPlans") or []:
                if str(plan).lower() not in plans:
                    return 400, error("Request_BadRequest", f"Service plan {plan} is not part of SKU {sku}."), {}
            off = {str(p).lower() for p in item.get("disabledPlans") or []}
            names = {p["servicePlanId"]: p["servicePlanName"] for p in info["servicePlans"]}
            for plan in info["servicePlans"]:
                needs = plan.get("dependsOn") or []
                if plan["servicePlanId"] not in off and needs and all(n in off for n in needs):
                    message = (
                        f"To assign a license that contains {plan['servicePlanName']}, you must also assign one of "
                        f"the following service plans: {', '.join(names[n] for n in needs)}."
                    )
                    return 400, error("Request_BadRequest", message), {}
        for sku in remove:
            if sku not in user.licenses:
                return 400, error("Request_BadRequest", "User does not have a corresponding license."), {}
        for sku in remove:
            del user.licenses[sku]
        for item in add:
            sku = str(item["skuId"]).lower()
            disabled = sorted(str(p).lower() for p in item.get("disabledPlans") or [])
            user.licenses[sku] = disabled
            self._plans_assigned(user, sku, disabled)
        for plan in list(user.plan_times):
            if not self._plan_enabled(user, plan):
                del user.plan_times[plan]
        if not any(self._plan_enabled(user, p) for p in EXCHANGE_PLANS):
            user.mailbox = None  # soft-deleted with the licence
            user.mailbox_pending = False
        return 200, self._user_json(user), {}

    def _patch_mailbox(self, user: User, body: Any) -> Answer:
        assert user.mailbox is not None
        setting = (body or {}).get("automaticRepliesSetting")
        if not isinstance(setting, dict):
            return 400, error("ErrorInvalidRequest", "The request is invalid."), {}
        current = user.mailbox.setdefault("automaticRepliesSetting", {})
        for key, value in setting.items():
            if key == "@odata.type":
                continue
            if key in ("status", "externalAudience"):
                if key == "status" and value not in ("disabled", "alwaysEnabled", "scheduled"):
                    return 400, error("ErrorInvalidRequest", f"Invalid status {value}"), {}
                current[key] = value
            elif key.endswith("ReplyMessage"):
                # Exchange stores replies as HTML and answers with it.
                current[key] = f"<html>\n<body>\n<div>{value}</div>\n</body>\n</html>\n"
            elif key.startswith("scheduled"):
                # Exchange keeps the instant and answers it in UTC whatever zone it was written in (a GET of
                # mailboxSettings returns "timeZone": "UTC": https://learn.microsoft.com/en-us/graph/api/
                # user-get-mailboxsettings, example response). Unknown zone names are refused.
                try:
                    zone = dt.UTC if value["timeZone"] == "UTC" else ZoneInfo(value["timeZone"])
                except (ZoneInfoNotFoundError, ValueError):
                    return 400, error("ErrorInvalidRequest", f"Invalid time zone {value['timeZone']}"), {}
                local = dt.datetime.fromisoformat(value["dateTime"]).replace(tzinfo=zone)
                utc = local.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
                current[key] = {"dateTime": f"{utc}.0000000", "timeZone": "UTC"}
        return 200, copy.deepcopy(user.mailbox), {}

    def _group_route(self, method: str, group: Group, rest: list[str], body: Any) -> Answer:
        if not rest and method == "GET":
            return 200, _group_json(group), {}
        if rest[:1] == ["members"] and method in ("POST", "DELETE") and group.role_assignable:
            # Members of a role-assignable group can be changed only with RoleManagement.ReadWrite.Directory
            # besides GroupMember.ReadWrite.All (https://learn.microsoft.com/en-us/graph/api/group-post-members,
            # https://learn.microsoft.com/en-us/graph/api/group-delete-members); the app here has not got it.
            return 403, error("Authorization_RequestDenied", "Insufficient privileges to complete the operation."), {}
        if rest == ["members", "$ref"] and method == "POST":
            target = str((body or {}).get("@odata.id", ""))
            member = target.rstrip("/").rsplit("/", 1)[-1].lower()
            if member not in self.users:
                return (*not_found(member), {})
            refusal = _refusal(group)
            if refusal:
                return 400, error("Request_BadRequest", refusal), {}
            if member in group.members:
                return (
                    400,
                    error(
                        "Request_BadRequest",
                        "One or more added object references already exist for the following modified properties: "
                        "'members'.",
                    ),
                    {},
                )
            group.members.add(member)
            return 204, None, {}
        if len(rest) == 3 and rest[0] == "members" and rest[2] == "$ref" and method == "DELETE":
            member = rest[1].lower()
            refusal = _refusal(group)
            if refusal:
                return 400, error("Request_BadRequest", refusal), {}
            if member not in group.members:
                return (*not_found(member), {})
            group.members.discard(member)
            return 204, None, {}
        return 400, error("BadRequest", "Unsupported group request."), {}

    # Entra ID ----------------------------------------------------------------------------------------------
    def _entra(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        base = f"{self.url}/{self.tenant}"
        if path == "/v2.0/.well-known/openid-configuration" and method == "GET":
            return (
                200,
                {
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    "issuer": f"{base}/v2.0",
                    "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                },
                {},
            )
        if path == "/oauth2/v2.0/token" and method == "POST":
            form = {k: v[0] for k, v in parse_qs(body.decode("utf-8")).items()}
            with self._lock:
                self.token_requests.append(
                    {k: v for k, v in form.items() if k not in ("client_secret", "client_assertion")}
                )
            if form.get("grant_type") != "client_credentials":
                return 400, {"error": "unsupported_grant_type", "error_description": "AADSTS70003"}, {}
            client = form.get("client_id", "")
            if not form.get("scope", "").endswith("/.default"):
                return (
                    400,
                    {"error": "invalid_scope", "error_description": "AADSTS1002012: scope must be /.default"},
                    {},
                )
            if "client_assertion" in form:
                ok = self._assertion_valid(client, form["client_assertion"], f"{base}/oauth2/v2.0/token")
            else:
                expected = self.clients.get(client)
                ok = expected is not None and secrets.compare_digest(expected, form.get("client_secret", ""))
            if not ok:
                return (
                    401,
                    {
                        "error": "invalid_client",
                        "error_description": "AADSTS7000215: Invalid client secret provided.",
                        "error_codes": [7000215],
                    },
                    {},
                )
            return 200, self._issue(), {}
        return 404, {"error": "not_found"}, {}

    def _managed_identity(self, query: str, headers: dict[str, str]) -> Answer:
        params = {k: v[0] for k, v in parse_qs(query).items()}
        if headers.get("x-identity-header") != self.identity_header:
            return 401, {"error": "unauthorized"}, {}
        with self._lock:
            self.token_requests.append({"managed_identity": params.get("client_id", "system")})
        token = self._issue()
        expires = int(now().timestamp()) + 3600
        return (
            200,
            {
                "access_token": token["access_token"],
                "expires_on": str(expires),
                "resource": params.get("resource", ""),
                "token_type": "Bearer",
            },
            {},
        )

    def _issue(self) -> dict[str, Any]:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens.add(token)
        return {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}

    def _assertion_valid(self, client: str, assertion: str, audience: str) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        certificate = self.certificates.get(client)
        if certificate is None:
            return False
        try:
            head, payload, signature = assertion.split(".")
            header = json.loads(_unb64(head))
            claims = json.loads(_unb64(payload))
            key = certificate.public_key()
            signed = f"{head}.{payload}".encode("ascii")
            if header.get("alg") == "PS256":
                thumb = base64.urlsafe_b64encode(certificate.fingerprint(hashes.SHA256())).rstrip(b"=").decode()
                if str(header.get("x5t#S256", "")).rstrip("=") != thumb:
                    return False
                key.verify(
                    _unb64(signature),
                    signed,
                    padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
                    hashes.SHA256(),
                )
            elif header.get("alg") == "RS256":
                key.verify(_unb64(signature), signed, padding.PKCS1v15(), hashes.SHA256())
            else:
                return False
        except (ValueError, InvalidSignature):
            return False
        return bool(
            claims.get("iss") == client
            and claims.get("sub") == client
            and claims.get("aud") == audience
            and int(claims.get("exp", 0)) > now().timestamp()
        )


def _rendition(raw: bytes) -> bytes:
    """What Exchange keeps of an upload: re-encoded (bytes differ from the upload), at most 648x648."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        opened = Image.open(io.BytesIO(raw))
        opened.load()
    except (UnidentifiedImageError, OSError):
        return raw + b"\x00rendition"  # still never the uploaded bytes
    image = opened.convert("RGB")
    image.thumbnail((648, 648))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=71)
    return out.getvalue()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _new_mailbox() -> dict[str, Any]:
    return {
        "@odata.context": "$metadata#users('x')/mailboxSettings",
        "timeZone": "UTC",
        "automaticRepliesSetting": {
            "status": "disabled",
            "externalAudience": "all",
            "internalReplyMessage": "",
            "externalReplyMessage": "",
            "scheduledStartDateTime": {"dateTime": "2020-01-01T00:00:00.0000000", "timeZone": "UTC"},
            "scheduledEndDateTime": {"dateTime": "2020-01-02T00:00:00.0000000", "timeZone": "UTC"},
        },
    }


def _group_json(group: Group) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.group",
        "id": group.id,
        "displayName": group.name,
        "groupTypes": list(group.group_types),
        "membershipRule": group.membership_rule,
        "onPremisesSyncEnabled": True if group.synced else None,
        "mailEnabled": group.mail_enabled,
        "securityEnabled": group.security_enabled,
        "isAssignableToRole": group.role_assignable,
    }


def _refusal(group: Group) -> str | None:
    # (A role-assignable group answers 403 in _group_route: the app lacks RoleManagement.ReadWrite.Directory.)
    if "DynamicMembership" in group.group_types:
        return "Insufficient privileges to complete the operation: members of a dynamic group cannot be changed."
    if group.synced:
        return (
            "Unable to update the specified properties for on-premises mastered Directory Sync objects or objects "
            "currently undergoing migration."
        )
    if group.mail_enabled and "Unified" not in group.group_types:
        return "Cannot Update a mail-enabled security groups and or distribution list."
    return None


def _select(query: dict[str, list[str]]) -> list[str] | None:
    value = (query.get("$select") or [""])[0]
    return [v.strip() for v in value.split(",") if v.strip()] or None


def _pick(data: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    if not select:
        return data
    wanted = {s.lower() for s in select}
    return {k: v for k, v in data.items() if k.lower() in wanted or k.startswith("@odata")}
