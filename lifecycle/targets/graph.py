"""Microsoft 365 through Microsoft Graph (msgraph-sdk over kiota/httpx, tokens from msal): ensure-operations.

Shape:

- **One Graph client per process** (per connection), built on first use: an msal application (client secret,
  certificate, or the managed identity) whose token is cached in memory, a ``GraphServiceClient`` on an
  ``httpx.AsyncClient`` wrapped with msgraph-core's default middleware (retries 429/503/504 honouring
  ``Retry-After``), and one event loop thread that runs every Graph call of the process. Worker threads hand
  their calls to that loop, so the connection pool and the token are shared and nothing async leaks out.
- **Requests come from the SDK's request builders** (``client.users.by_user_id(..).assign_license...``) as
  ``RequestInformation`` and are sent either alone or inside JSON batches (``$batch``, 20 per batch) with the
  raw response handler: no typed response is parsed, so the ~1 s first-parse cost of the generated models
  (reference/graph.md) is never paid, and nothing of it reaches the ingress, which never imports this module.
- **Contiguous Graph steps of a work item run together**: the first of them reads everything they need in one
  batch, plans every step against that snapshot (each step sees the effect of the ones before it, like the AD
  account of ``lifecycle.targets.ad``), then sends all their writes in one batch, chained with ``dependsOn``
  so Graph applies them in step order. Each step still reports (and is journaled and audited) on its own
  turn. A leaver's licences, sessions, auto-reply and ten cloud groups cost two requests.
- **Every action is an ensure**: a second run reads, finds nothing to change and writes nothing.

The cloud user is the AD account's (by ``userPrincipalName``, or ``objectGUID`` = ``onPremisesImmutableId``),
or the one a step's ``user`` param names. Right after an AD create the cloud user does not exist yet
(directory sync runs every ~30 minutes): the step is rescheduled until ``LIFECYCLE_GRAPH_SYNC_WAIT_SECONDS``
after the account's ``whenCreated``, then fails with a reason.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import quote, urlparse

from lifecycle.errors import LifecycleError, Permanent, Retryable
from lifecycle.photos import GRAPH_PHOTO_MAX_BYTES, PhotoLoader, to_jpeg
from lifecycle.state import AuditEntry, Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.graph_actions import GUID, KNOWN_PLANS

if TYPE_CHECKING:
    from kiota_abstractions.authentication import AccessTokenProvider
    from kiota_abstractions.request_information import RequestInformation

    from lifecycle.runtime import Runtime
    from lifecycle.settings import Settings
    from lifecycle.work import Step

log = logging.getLogger("lifecycle.graph")
T = TypeVar("T")

BATCH_LIMIT = 20
# A throttled request inside a batch is resent in place when Graph asks for at most this long; longer waits
# reschedule the work item instead of holding a worker.
INLINE_RETRY_MAX_SECONDS = 10.0
_TRANSIENT = {429, 500, 502, 503, 504}
_USER_FIELDS = (
    "id,userPrincipalName,displayName,mail,accountEnabled,onPremisesSyncEnabled,onPremisesImmutableId,"
    "usageLocation,assignedLicenses,licenseAssignmentStates,assignedPlans,signInSessionsValidFromDateTime"
)
_GROUP_FIELDS = "id,displayName,groupTypes,membershipRule,onPremisesSyncEnabled,mailEnabled,securityEnabled"
# Actions whose desired state already holds when there is no cloud user at all.
_ABSENT_OK = {
    "set_auto_reply",
    "remove_licenses",
    "disable_mailbox",
    "delete_mailbox",
    "disable_auto_reply",
    "revoke_sessions",
    "disable_cloud_account",
    "disable_teams",
    "remove_from_cloud_groups",
    "remove_photo",
}
_MICROSOFT_AUTHORITIES = ("login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn")


# ----------------------------------------------------------------------------------------------------------
# The process-wide client
# ----------------------------------------------------------------------------------------------------------
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
        self._lock = threading.Lock()
        self._token = _TokenSource(settings, self.resource)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="graph-loop", daemon=True)
        self._thread.start()
        self._skus: dict[str, str] | None = None  # SKU part number (upper) -> skuId
        self._plans: dict[str, str] = {}  # service plan name (upper) -> id
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
        retry = RetryHandlerOption(max_retries=self.settings.graph_max_retries)
        # Without this wrapping a custom client loses the middleware, and with it every retry (graph.md).
        http = GraphClientFactory.create_with_default_middleware(client=http, options={retry.get_key(): retry})
        tokens = cast("AccessTokenProvider", _KiotaTokens(self._token, urlparse(self.base_url)))
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

    async def _send(self, request: Request, *, retry: bool = True) -> Response:
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
        options: list[Any] = [ResponseHandlerOption(NativeResponseHandler())]
        if not retry:
            options.append(RetryHandlerOption(max_retries=0, should_retry=False))
        info.add_request_options(options)
        with self._lock:
            self.requests += 1
        try:
            raw = await self._adapter.send_async(info, None, {})
        except _TokenError as exc:
            raise exc.error from None
        except httpx.TransportError as exc:
            raise Retryable(f"Graph: cannot reach {self.base_url}: {type(exc).__name__}: {exc}") from None
        content_type = raw.headers.get("content-type", "")
        data: bytes = raw.content
        body: Any = None
        if data:
            body = json.loads(data) if "json" in content_type else data
        return Response(raw.status_code, {k.lower(): v for k, v in raw.headers.items()}, body)

    def send(self, request: Request, *, retry: bool = True) -> Response:
        return self.run(self._send(request, retry=retry))

    async def _batch(
        self, requests: list[Request], chained: bool, accept: Callable[[int, Response], bool]
    ) -> list[Response]:
        """Send ``requests`` in $batch calls of 20; resend items Graph throttled (briefly) in place.

        ``accept`` says which error answers still count as done (a member already added): requests chained
        behind one of those failed with 424 and are sent again, in order.
        """
        results: list[Response | None] = [None] * len(requests)

        def settled(index: int) -> bool:
            answer = results[index]
            return answer is not None and (answer.ok or accept(index, answer))

        for start in range(0, len(requests), BATCH_LIMIT):
            chunk = list(range(start, min(start + BATCH_LIMIT, len(requests))))
            for _attempt in range(self.settings.graph_max_retries + 2):
                pending = [i for i in chunk if not settled(i)]
                if any(results[i] is not None and results[i].status not in (*_TRANSIENT, 424) for i in pending):  # type: ignore[union-attr]
                    break  # a real failure: what is chained behind it stays undone (424)
                if not pending:
                    break
                throttled = [r for i in pending if (r := results[i]) is not None and r.status in _TRANSIENT]
                if throttled:
                    wait = max((r.retry_after or 1.0) for r in throttled)
                    if wait > INLINE_RETRY_MAX_SECONDS or _attempt > self.settings.graph_max_retries:
                        break
                    await asyncio.sleep(wait)
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
                    Request("POST", "/$batch", {"content-type": "application/json"}, {"requests": entries})
                )
                if not answer.ok:
                    raise _error(answer, "$batch")
                for item in (answer.body or {}).get("responses", []):
                    headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
                    body = item.get("body")
                    if isinstance(body, str) and "json" not in headers.get("content-type", "json"):
                        body = base64.b64decode(body)  # binary content comes base64-encoded inside a batch
                    results[int(item["id"])] = Response(int(item["status"]), headers, body)
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

    # Names -------------------------------------------------------------------------------------------------
    def resolve_names(self, skus: Iterable[str], plans: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
        """skuId for each SKU name, service plan id for each plan name (GUIDs pass through)."""
        sku_names = {s for s in skus if not GUID.match(s)}
        plan_names = {p for p in plans if not GUID.match(p) and p.upper() not in KNOWN_PLANS}
        if (sku_names and self._skus is None) or any(p.upper() not in self._plans for p in plan_names):
            self._load_skus()
        sku_ids: dict[str, str] = {}
        for sku in skus:
            found = sku.lower() if GUID.match(sku) else (self._skus or {}).get(sku.upper())
            if found is None:
                raise Permanent(f"Graph: the tenant has no subscription to a SKU named {sku!r} (subscribedSkus)")
            sku_ids[sku] = found
        plan_ids: dict[str, str] = {}
        for plan in plans:
            found = plan.lower() if GUID.match(plan) else KNOWN_PLANS.get(plan.upper()) or self._plans.get(plan.upper())
            if found is None:
                raise Permanent(f"Graph: no subscribed SKU has a service plan named {plan!r}")
            plan_ids[plan] = found
        return sku_ids, plan_ids

    def _load_skus(self) -> None:
        answer = self.send(self.request(self.sdk.subscribed_skus.to_get_request_information()))
        if not answer.ok:
            raise _error(answer, "read subscribedSkus")
        skus: dict[str, str] = {}
        for entry in answer.body.get("value", []):
            skus[str(entry.get("skuPartNumber", "")).upper()] = str(entry.get("skuId", "")).lower()
            for plan in entry.get("servicePlans") or []:
                self._plans[str(plan.get("servicePlanName", "")).upper()] = str(plan.get("servicePlanId")).lower()
        self._skus = skus


class _TokenError(Exception):
    def __init__(self, error: LifecycleError) -> None:
        super().__init__(str(error))
        self.error = error


class _TokenSource:
    """An app-only token from msal (client secret, certificate or managed identity), cached in memory."""

    def __init__(self, settings: Settings, resource: str) -> None:
        self.settings = settings
        self.resource = resource
        self._app: Any = None
        self._lock = threading.Lock()

    def _session(self) -> Any:
        import requests

        session = requests.Session()
        # REQUESTS_CA_BUNDLE would override verify= otherwise (graph.md); proxies from the environment too.
        session.trust_env = False
        session.verify = str(self.settings.graph_ca_file) if self.settings.graph_ca_file else True
        return session

    def _build(self) -> Any:
        import msal  # type: ignore[import-untyped]

        settings = self.settings
        if not settings.graph_client_id:
            # No app registration: the Function App's (user-assigned) managed identity.
            client_id = os.environ.get("AZURE_CLIENT_ID", "")
            identity: Any = (
                msal.UserAssignedManagedIdentity(client_id=client_id)
                if client_id
                else msal.SystemAssignedManagedIdentity()
            )
            return msal.ManagedIdentityClient(identity, http_client=self._session())
        if not settings.graph_tenant_id:
            raise Permanent("Graph: LIFECYCLE_GRAPH_TENANT_ID is not set")
        credential: Any
        if settings.graph_certificate_file:
            credential = _certificate_credential(settings.graph_certificate_file)
        elif settings.graph_client_secret.get_secret_value():
            credential = settings.graph_client_secret.get_secret_value()
        else:
            raise Permanent(
                "Graph: LIFECYCLE_GRAPH_CLIENT_ID is set but neither LIFECYCLE_GRAPH_CLIENT_SECRET nor "
                "LIFECYCLE_GRAPH_CERTIFICATE_FILE is"
            )
        host = urlparse(settings.graph_authority_host)
        if host.scheme != "https":
            raise Permanent("Graph: LIFECYCLE_GRAPH_AUTHORITY_HOST must be https")
        return msal.ConfidentialClientApplication(
            settings.graph_client_id,
            authority=f"{settings.graph_authority_host.rstrip('/')}/{settings.graph_tenant_id}",
            client_credential=credential,
            http_client=self._session(),
            # Only Microsoft's own hosts are known to its instance discovery; another host is taken as given.
            instance_discovery=host.hostname in _MICROSOFT_AUTHORITIES,
            timeout=settings.graph_timeout_seconds,
        )

    def token(self) -> str:
        import msal  # type: ignore[import-untyped]
        import requests

        try:
            with self._lock:
                if self._app is None:
                    self._app = self._build()
                app = self._app
            if isinstance(app, msal.ManagedIdentityClient):
                result = app.acquire_token_for_client(resource=self.resource)
            else:
                result = app.acquire_token_for_client(scopes=[f"{self.resource}/.default"])
        except requests.RequestException as exc:
            with self._lock:
                self._app = None  # the constructor's discovery may have failed: build again next time
            raise _TokenError(Retryable(f"Graph: cannot reach the token endpoint: {type(exc).__name__}")) from None
        except ValueError as exc:
            with self._lock:
                self._app = None
            raise _TokenError(Permanent(f"Graph: the token configuration is wrong: {exc}")) from None
        if "access_token" in result:
            return str(result["access_token"])
        error = str(result.get("error", "unknown"))
        description = str(result.get("error_description", "")).splitlines()[0] if result else ""
        if error in ("temporarily_unavailable", "server_error") or result.get("error_codes") == [50058]:
            raise _TokenError(Retryable(f"Graph: token endpoint busy: {error}"))
        raise _TokenError(Permanent(f"Graph: no token for the app ({error}): {description}"))


def _certificate_credential(path: Path) -> dict[str, str]:
    """msal's credential from a PEM file holding the private key and the certificate."""
    try:
        text = path.read_text(encoding="ascii")
    except OSError as exc:
        raise Permanent(f"Graph: cannot read LIFECYCLE_GRAPH_CERTIFICATE_FILE {path}: {exc.strerror}") from None
    key = re.search(
        r"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", text, re.S
    )
    certificate = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    if key is None or certificate is None:
        raise Permanent(f"Graph: {path} must hold a PEM private key and its certificate")
    # With the certificate (not a thumbprint) msal signs with PS256 and the SHA-256 thumbprint.
    return {"private_key": key.group(0), "public_certificate": certificate.group(0)}


class _KiotaTokens:
    """kiota's AccessTokenProvider over msal; sends tokens only to the configured Graph host."""

    def __init__(self, source: _TokenSource, base: Any) -> None:
        from kiota_abstractions.authentication import AllowedHostsValidator

        self._source = source
        self._validator = AllowedHostsValidator([base.hostname or ""])

    async def get_authorization_token(
        self, uri: str, additional_authentication_context: dict[str, Any] | None = None
    ) -> str:
        parsed = urlparse(uri)
        if not self._validator.is_url_host_valid(uri):
            return ""
        if parsed.scheme != "https" and parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            return ""
        # msal is synchronous (requests); its in-memory cache answers almost every call without I/O.
        return await asyncio.to_thread(self._source.token)

    def get_allowed_hosts_validator(self) -> Any:
        return self._validator


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


def _error(response: Response, what: str) -> LifecycleError:
    """The error a failed Graph answer means for the step."""
    detail = f"{response.status} {response.code}: {response.message}".strip()
    if response.status in _TRANSIENT:
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


# ----------------------------------------------------------------------------------------------------------
# The state a group of steps reads, and how each step changes it
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Group:
    id: str
    name: str
    group_types: list[str]
    dynamic: bool
    synced: bool
    mail_enabled: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Group:
        types = [str(t) for t in data.get("groupTypes") or []]
        return cls(
            id=str(data.get("id", "")).lower(),
            name=str(data.get("displayName") or data.get("id")),
            group_types=types,
            dynamic="DynamicMembership" in types or bool(data.get("membershipRule")),
            synced=bool(data.get("onPremisesSyncEnabled")),
            mail_enabled=bool(data.get("mailEnabled")),
        )

    @property
    def unmanageable(self) -> str | None:
        """Why Graph cannot change this group's members, or None when it can."""
        if self.dynamic:
            return "dynamic membership"
        if self.synced:
            return "synced from on-premises AD (change it there)"
        if self.mail_enabled and "Unified" not in self.group_types:
            return "a distribution list or mail-enabled security group (Exchange only)"
        return None


@dataclass
class CloudUser:
    id: str
    upn: str
    enabled: bool
    synced: bool
    usage_location: str | None
    # skuId -> disabled plan ids, for the licences assigned to the user directly (not through a group).
    direct: dict[str, set[str]]
    # skuId -> the groups that assign it.
    by_group: dict[str, set[str]]
    assigned_plans: list[dict[str, Any]]
    sessions_valid_from: datetime | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CloudUser:
        direct: dict[str, set[str]] = {}
        by_group: dict[str, set[str]] = {}
        states = data.get("licenseAssignmentStates")
        if states is None:
            for lic in data.get("assignedLicenses") or []:
                direct[str(lic["skuId"]).lower()] = {str(p).lower() for p in lic.get("disabledPlans") or []}
        else:
            for state in states:
                sku = str(state.get("skuId")).lower()
                if state.get("assignedByGroup"):
                    by_group.setdefault(sku, set()).add(str(state["assignedByGroup"]))
                else:
                    direct[sku] = {str(p).lower() for p in state.get("disabledPlans") or []}
        return cls(
            id=str(data["id"]),
            upn=str(data.get("userPrincipalName", "")),
            enabled=bool(data.get("accountEnabled", True)),
            synced=bool(data.get("onPremisesSyncEnabled")),
            usage_location=data.get("usageLocation"),
            direct=direct,
            by_group=by_group,
            assigned_plans=list(data.get("assignedPlans") or []),
            sessions_valid_from=_parse_time(data.get("signInSessionsValidFromDateTime")),
        )

    def plan_assigned_at(self, plan_ids: set[str]) -> datetime | None:
        times = [
            _parse_time(p.get("assignedDateTime"))
            for p in self.assigned_plans
            if str(p.get("servicePlanId", "")).lower() in plan_ids and p.get("capabilityStatus") == "Enabled"
        ]
        known = [t for t in times if t is not None]
        return max(known) if known else None


@dataclass
class Snapshot:
    """What the group's steps read, kept current as each step plans its writes."""

    user: CloudUser
    member_of: dict[str, Group] | None = None
    groups: dict[str, Group | None] = field(default_factory=dict)  # looked-up targets; None: no such group
    mailbox: dict[str, Any] | None = None
    mailbox_error: Response | None = None
    license_plans: dict[str, set[str]] | None = None  # skuId -> its service plan ids
    photo: bytes | None = None
    photo_read: bool = False


@dataclass
class Write:
    request: Request
    what: str
    # An error answer that still means the desired state holds (a member already added, already removed).
    tolerated: Callable[[Response], bool] | None = None
    retry: bool = True


@dataclass
class Plan:
    """What one step will write, and what it reports once the writes succeeded."""

    result: StepResult
    writes: list[Write] = field(default_factory=list)
    # Raised after the writes succeeded: the step is not finished yet (a mailbox being provisioned).
    pending: Retryable | None = None


class DirectoryFacts(Protocol):
    """What password delivery needs of the AD target (its ``delivery_facts``)."""

    def delivery_facts(self, dn: str) -> dict[str, str]: ...


# ----------------------------------------------------------------------------------------------------------
# The target
# ----------------------------------------------------------------------------------------------------------
class GraphTarget:
    """Runs Graph steps; one per worker thread, sharing the process's client."""

    def __init__(self, name: str, runtime: Runtime) -> None:
        if name != "default":
            raise Permanent(
                f"Graph: connection {name!r} is not configured; only 'default' (LIFECYCLE_GRAPH_*) is. "
                "Route Microsoft 365 steps of other tenants with a custom script, or leave them out."
            )
        self.name = name
        self.runtime = runtime
        self.settings = runtime.settings
        self.client = client_for(runtime.settings)
        self.photos = PhotoLoader(
            max_bytes=self.settings.photo_max_bytes,
            allowed_hosts=tuple(self.settings.photo_allowed_hosts),
            ca_file=self.settings.graph_ca_file,
        )
        # Results of later steps of the same group, computed and written by the group's first step.
        self._ahead: dict[str, StepResult | LifecycleError] = {}
        self._ahead_for: dict[str, Any] | None = None

    def close(self) -> None:
        self._ahead.clear()

    # Entry -------------------------------------------------------------------------------------------------
    def run(self, context: StepContext) -> StepResult:
        # Results computed ahead belong to this delivery only (the worker makes one requested_by per delivery).
        if self._ahead_for is not context.requested_by:
            self._ahead, self._ahead_for = {}, context.requested_by
        ahead = self._ahead.pop(context.step.key, None)
        if isinstance(ahead, StepResult):
            return ahead
        if isinstance(ahead, LifecycleError):
            raise ahead
        group = self._group(context)
        results = self._run_group(context, group)
        for step in group[1:]:
            if step.key in results:
                self._ahead[step.key] = results[step.key]
        first = results[context.step.key]
        if isinstance(first, LifecycleError):
            raise first
        return first

    def _group(self, context: StepContext) -> list[Step]:
        """This step and the Graph steps right after it that address the same cloud user."""
        steps = context.item.steps
        index = next(i for i, s in enumerate(steps) if s.key == context.step.key)
        group = [steps[index]]
        for step in steps[index + 1 :]:
            if step.system != "graph" or step.target != context.step.target:
                break
            if step.params.get("user") != context.step.params.get("user"):
                break
            group.append(step)
        return group

    def _run_group(self, context: StepContext, group: list[Step]) -> dict[str, StepResult | LifecycleError]:
        results: dict[str, StepResult | LifecycleError] = {}
        try:
            user_key, absent = self._user_key(context)
            snapshot = self._read(context, group, user_key) if absent is None else None
        except LifecycleError as exc:
            return {context.step.key: exc}
        if snapshot is None:
            # No cloud user (yet): each step decides whether that is fine (a leaver) or worth waiting for.
            for step in group:
                try:
                    results[step.key] = self._absent(context, step, absent or "not found")
                except LifecycleError as exc:
                    results[step.key] = exc
                    break
            return results
        plans: list[tuple[Step, Plan]] = []
        for step in group:
            try:
                plan = self._plan(context, step, snapshot)
            except LifecycleError as exc:
                results[step.key] = exc
                break
            plans.append((step, plan))
            if plan.pending is not None:
                break  # later steps may need what this one waits for (a mailbox)
        if context.dry_run:
            for step, plan in plans:
                if plan.writes:
                    plan.result.outcome = "dry_run"
                results[step.key] = plan.result
            return results
        results.update(self._write(context, plans))
        return results

    # Reading -----------------------------------------------------------------------------------------------
    def _user_key(self, context: StepContext) -> tuple[str, str | None]:
        """How to address the cloud user (UPN or id), or (.., why it cannot be found yet)."""
        override = context.step.params.get("user")
        if override:
            return str(override), None
        account = context.ad_account()
        if account is None:
            return "", "the person has no AD account (and the step names no cloud user)"
        if self.settings.graph_match == "immutable_id":
            guid = account.first("objectGUID")
            if not guid:
                raise Permanent(f"Graph: the AD account {account.dn} has no objectGUID to match its cloud user by")
            immutable = base64.b64encode(uuid.UUID(str(guid)).bytes_le).decode("ascii")
            sdk = self.client.sdk
            from kiota_abstractions.base_request_configuration import RequestConfiguration
            from msgraph.generated.users.users_request_builder import UsersRequestBuilder

            config = RequestConfiguration(
                query_parameters=UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
                    filter=f"onPremisesImmutableId eq '{immutable}'", select=["id"]
                )
            )
            answer = self.client.send(self.client.request(sdk.users.to_get_request_information(config)))
            if not answer.ok:
                raise _error(answer, "find the cloud user by onPremisesImmutableId")
            found = answer.body.get("value", [])
            if not found:
                return "", f"no cloud user has onPremisesImmutableId {immutable} (objectGUID {guid})"
            return str(found[0]["id"]), None
        upn = account.first("userPrincipalName")
        if not upn:
            raise Permanent(f"Graph: the AD account {account.dn} has no userPrincipalName to match its cloud user by")
        return str(upn), None

    def _read(self, context: StepContext, group: list[Step], user_key: str) -> Snapshot | None:
        """One batch: the user and whatever the group's steps need (memberships, mailbox, plans, photo)."""
        sdk = self.client.sdk
        user = sdk.users.by_user_id(user_key)
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder

        config = RequestConfiguration(
            query_parameters=UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(
                select=_USER_FIELDS.split(",")
            )
        )
        requests: dict[str, Request] = {"user": self.client.request(user.to_get_request_information(config))}
        actions = {s.action for s in group}
        if actions & {"add_to_cloud_groups", "remove_from_cloud_groups", "sync_cloud_groups"}:
            from msgraph.generated.users.item.member_of.graph_group.graph_group_request_builder import (
                GraphGroupRequestBuilder,
            )

            member_config = RequestConfiguration(
                query_parameters=GraphGroupRequestBuilder.GraphGroupRequestBuilderGetQueryParameters(
                    select=_GROUP_FIELDS.split(","), top=999
                )
            )
            requests["memberOf"] = self.client.request(
                user.member_of.graph_group.to_get_request_information(member_config)
            )
            wanted: list[str] = []
            for step in group:
                if step.action == "add_to_cloud_groups":
                    wanted += step.params.get("group_ids", [])
                elif step.action == "sync_cloud_groups":
                    wanted += step.params.get("desired", [])
            from msgraph.generated.groups.item.group_item_request_builder import GroupItemRequestBuilder

            group_config = RequestConfiguration(
                query_parameters=GroupItemRequestBuilder.GroupItemRequestBuilderGetQueryParameters(
                    select=_GROUP_FIELDS.split(",")
                )
            )
            for group_id in dict.fromkeys(g.lower() for g in wanted):
                requests[f"group:{group_id}"] = self.client.request(
                    sdk.groups.by_group_id(group_id).to_get_request_information(group_config)
                )
        if actions & {"set_auto_reply", "disable_auto_reply", "create_mailbox"}:
            requests["mailbox"] = self.client.request(user.mailbox_settings.to_get_request_information())
        if actions & {"create_mailbox", "disable_mailbox", "delete_mailbox", "disable_teams"}:
            requests["licenseDetails"] = self.client.request(user.license_details.to_get_request_information())
        if actions & {"set_photo", "remove_photo"}:
            requests["photo"] = self.client.request(user.photo.content.to_get_request_information())
        names = list(requests)
        answers = dict(zip(names, self.client.batch([requests[n] for n in names]), strict=True))
        first = answers["user"]
        if first.status == 404:
            return None
        if not first.ok:
            raise _error(first, f"read the cloud user {user_key}")
        snapshot = Snapshot(CloudUser.from_json(first.body))
        for name, answer in answers.items():
            if name == "memberOf":
                if not answer.ok:
                    raise _error(answer, "read the user's groups")
                entries = list(answer.body.get("value", []))
                entries += self._next_pages(answer.body.get("@odata.nextLink"))
                snapshot.member_of = {g.id: g for g in (Group.from_json(e) for e in entries)}
            elif name.startswith("group:"):
                if answer.status == 404:
                    snapshot.groups[name[6:]] = None
                elif not answer.ok:
                    raise _error(answer, f"read the group {name[6:]}")
                else:
                    snapshot.groups[name[6:]] = Group.from_json(answer.body)
            elif name == "mailbox":
                if answer.ok:
                    snapshot.mailbox = answer.body
                elif answer.status in _TRANSIENT or answer.status in (401, 403):
                    raise _error(answer, "read the mailbox settings")
                else:
                    snapshot.mailbox_error = answer
            elif name == "licenseDetails":
                if not answer.ok:
                    raise _error(answer, "read the licence details")
                snapshot.license_plans = {
                    str(d.get("skuId")).lower(): {
                        str(p.get("servicePlanId")).lower() for p in d.get("servicePlans") or []
                    }
                    for d in answer.body.get("value", [])
                }
            elif name == "photo":
                snapshot.photo_read = True
                if answer.ok:
                    snapshot.photo = answer.body if isinstance(answer.body, bytes) else None
                elif answer.status != 404:
                    raise _error(answer, "read the profile photo")
        return snapshot

    def _next_pages(self, link: str | None) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        while link:
            relative = link[len(self.client.base_url) :] if link.startswith(self.client.base_url) else link
            answer = self.client.send(Request("GET", relative))
            if not answer.ok:
                raise _error(answer, "read the next page")
            entries += answer.body.get("value", [])
            link = answer.body.get("@odata.nextLink")
        return entries

    def _absent(self, context: StepContext, step: Step, why: str) -> StepResult:
        """No cloud user: fine for removals of a long-gone user, worth waiting for right after an AD create."""
        # A step that names its cloud user is about a cloud-only user: no AD account to wait for.
        account = None if step.params.get("user") else context.ad_account()
        created = _parse_ad_time(account.first("whenCreated")) if account is not None else None
        now = datetime.now(UTC)
        wait = timedelta(seconds=self.settings.graph_sync_wait_seconds)
        if created is not None and now - created < wait:
            raise Retryable(
                f"Graph: no cloud user yet for {account.dn if account else '?'} ({why}); directory sync has not "
                f"created it; looking again in {self.settings.graph_poll_seconds:.0f} s",
                retry_after=self.settings.graph_poll_seconds,
            )
        if step.action in _ABSENT_OK:
            return StepResult("unchanged", message=f"no cloud user ({why}): nothing to change for a leaver")
        since = f" {(now - created).total_seconds() / 60:.0f} min after the AD account was created" if created else ""
        raise Permanent(
            f"Graph: no cloud user{since} ({why}): is the account's OU in directory sync's scope, and does its "
            "userPrincipalName (or objectGUID) match? Replay this work item once the cloud user exists."
        )

    # Planning ----------------------------------------------------------------------------------------------
    def _plan(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        planner: Callable[[StepContext, Step, Snapshot], Plan] = getattr(self, f"_plan_{step.action}")
        return planner(context, step, snap)

    def _user_builder(self, snap: Snapshot) -> Any:
        return self.client.sdk.users.by_user_id(snap.user.id)

    def _resolve(self, skus: Iterable[str] = (), plans: Iterable[str] = ()) -> tuple[dict[str, str], dict[str, str]]:
        return self.client.resolve_names(list(skus), list(plans))

    def _usage_location(self, snap: Snapshot, wanted: str | None, changes: list[Change]) -> list[Write]:
        current = snap.user.usage_location
        if wanted and (current or "").upper() != wanted.upper():
            from msgraph.generated.models.user import User

            changes.append(Change("usageLocation", current, wanted.upper()))
            snap.user.usage_location = wanted.upper()
            info = self._user_builder(snap).to_patch_request_information(User(usage_location=wanted.upper()))
            return [Write(self.client.request(info), "set usageLocation")]
        if not snap.user.usage_location:
            raise Permanent(
                f"Graph: {snap.user.upn} has no usageLocation and Graph assigns no licence without one: "
                'give the step usage_location (e.g. "{cf.country|default:GB}")'
            )
        return []

    def _assign(self, snap: Snapshot, add: dict[str, set[str]], remove: Iterable[str], what: str) -> Write:
        from msgraph.generated.models.assigned_license import AssignedLicense
        from msgraph.generated.users.item.assign_license.assign_license_post_request_body import (
            AssignLicensePostRequestBody,
        )

        removed = sorted(set(remove))
        body = AssignLicensePostRequestBody(
            add_licenses=[
                AssignedLicense(sku_id=uuid.UUID(sku), disabled_plans=[uuid.UUID(p) for p in sorted(plans)])
                for sku, plans in add.items()
            ],
            remove_licenses=[uuid.UUID(sku) for sku in removed],
        )
        for sku, plans in add.items():
            snap.user.direct[sku] = set(plans)
        for sku in removed:
            snap.user.direct.pop(sku, None)
        info = self._user_builder(snap).assign_license.to_post_request_information(body)
        return Write(self.client.request(info), what)

    def _plan_assign_licenses(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        specs = step.params["skus"]
        sku_ids, plan_ids = self._resolve(
            [s["sku"] for s in specs], [p for s in specs for p in s.get("disabled_plans", [])]
        )
        changes: list[Change] = []
        notes: list[str] = []
        add: dict[str, set[str]] = {}
        for spec in specs:
            sku = sku_ids[spec["sku"]]
            disabled = {plan_ids[p] for p in spec.get("disabled_plans", [])}
            current = snap.user.direct.get(sku)
            if current is None and sku in snap.user.by_group:
                notes.append(f"{spec['sku']} is assigned by group {sorted(snap.user.by_group[sku])[0]}: left to it")
                continue
            if current != disabled:
                add[sku] = disabled
                changes.append(Change(f"licence {spec['sku']}", _licence_text(current), _licence_text(disabled)))
        remove: list[str] = []
        if step.params.get("remove_unlisted"):
            listed = set(sku_ids.values())
            remove = [sku for sku in snap.user.direct if sku not in listed]
            changes += [Change(f"licence {sku}", _licence_text(snap.user.direct[sku]), None) for sku in remove]
        if not add and not remove:
            return Plan(StepResult("unchanged", message="; ".join(notes), data={"cloud_user": snap.user.id}))
        writes = self._usage_location(snap, step.params.get("usage_location"), changes) if add else []
        writes.append(self._assign(snap, add, remove, "assign licences"))
        return Plan(StepResult("changed", changes=changes, message="; ".join(notes)), writes)

    def _plan_remove_licenses(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        wanted = step.params.get("skus", "all")
        kept = set(self._resolve(step.params.get("keep", []))[0].values())
        notes: list[str] = []
        if wanted == "all":
            remove = list(snap.user.direct)
            names = {sku: sku for sku in remove}
            grouped = list(snap.user.by_group)
        else:
            sku_ids, _ = self._resolve(wanted)
            names = {sku_ids[s]: s for s in wanted}
            remove = [sku for sku in names if sku in snap.user.direct]
            grouped = [sku for sku in names if sku in snap.user.by_group]
        for sku in grouped:
            notes.append(f"{names.get(sku, sku)} is assigned by a group: remove the user from the group instead")
        remove = [sku for sku in remove if sku not in kept]
        if not remove:
            return Plan(StepResult("unchanged", message="; ".join(notes)))
        changes = [Change(f"licence {names[sku]}", _licence_text(snap.user.direct[sku]), None) for sku in remove]
        return Plan(
            StepResult("changed", changes=changes, message="; ".join(notes)),
            [self._assign(snap, {}, remove, "remove licences")],
        )

    def _plans_in(self, snap: Snapshot, plan_ids: set[str]) -> tuple[list[str], list[str]]:
        """(direct SKUs, group-assigned SKUs) of the user that contain one of ``plan_ids``."""
        details = snap.license_plans or {}
        direct = [sku for sku in snap.user.direct if details.get(sku, set()) & plan_ids]
        grouped = [
            sku for sku in snap.user.by_group if sku not in snap.user.direct and details.get(sku, set()) & plan_ids
        ]
        return direct, grouped

    def _disable_plans(self, snap: Snapshot, plan_names: list[str], what: str) -> Plan:
        _, ids = self._resolve(plans=plan_names)
        plan_ids = set(ids.values())
        direct, grouped = self._plans_in(snap, plan_ids)
        notes = [f"SKU {sku} is assigned by a group: its plans are the group's to change" for sku in grouped]
        add: dict[str, set[str]] = {}
        changes: list[Change] = []
        for sku in direct:
            targets = (snap.license_plans or {}).get(sku, set()) & plan_ids
            if not targets <= snap.user.direct[sku]:
                add[sku] = snap.user.direct[sku] | targets
                changes.append(Change(f"licence {sku}", _licence_text(snap.user.direct[sku]), _licence_text(add[sku])))
        if not add:
            return Plan(StepResult("unchanged", message="; ".join(notes)))
        return Plan(
            StepResult("changed", changes=changes, message="; ".join(notes)), [self._assign(snap, add, [], what)]
        )

    def _plan_disable_mailbox(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        return self._disable_plans(snap, step.params["exchange_plans"], "disable the Exchange plan")

    def _plan_disable_teams(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        return self._disable_plans(snap, step.params["plans"], "disable the Teams and Skype plans")

    def _plan_delete_mailbox(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        if step.params.get("remove") == "plan":
            return self._disable_plans(snap, step.params["exchange_plans"], "remove the Exchange plan")
        _, ids = self._resolve(plans=step.params["exchange_plans"])
        direct, grouped = self._plans_in(snap, set(ids.values()))
        notes = [f"SKU {sku} is assigned by a group: remove the user from the group instead" for sku in grouped]
        if not direct:
            return Plan(StepResult("unchanged", message="; ".join(notes)))
        changes = [Change(f"licence {sku}", _licence_text(snap.user.direct[sku]), None) for sku in direct]
        write = self._assign(snap, {}, direct, "remove the Exchange licence")
        return Plan(StepResult("changed", changes=changes, message="; ".join(notes)), [write])

    def _plan_create_mailbox(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        params = step.params
        _, exchange = self._resolve(plans=params["exchange_plans"])
        exchange_ids = set(exchange.values())
        changes: list[Change] = []
        writes: list[Write] = []
        if params.get("sku"):
            sku_ids, plan_ids = self._resolve([params["sku"]], params.get("disabled_plans", []))
            sku = sku_ids[params["sku"]]
            disabled = {plan_ids[p] for p in params.get("disabled_plans", [])} - exchange_ids
            current = snap.user.direct.get(sku)
            if current is None or current & exchange_ids or (current != disabled):
                changes.append(Change(f"licence {params['sku']}", _licence_text(current), _licence_text(disabled)))
                writes = self._usage_location(snap, params.get("usage_location"), changes)
                writes.append(self._assign(snap, {sku: disabled}, [], "assign the Exchange licence"))
        else:
            direct, grouped = self._plans_in(snap, exchange_ids)
            if not direct and not grouped:
                raise Permanent(
                    f"Graph: {snap.user.upn} has no licence with an Exchange plan: give create_mailbox a sku"
                )
            enabled = grouped or [sku for sku in direct if not snap.user.direct[sku] & exchange_ids]
            if not enabled:
                # Every licence with Exchange has the plan disabled: enable it in them.
                add = {sku: snap.user.direct[sku] - exchange_ids for sku in direct}
                for sku, plans in add.items():
                    changes.append(Change(f"licence {sku}", _licence_text(snap.user.direct[sku]), _licence_text(plans)))
                writes.append(self._assign(snap, add, [], "enable the Exchange plan"))
        if snap.mailbox is not None and not writes:
            return Plan(StepResult("unchanged", message="the mailbox answers"))
        assigned = snap.user.plan_assigned_at(exchange_ids)
        waited = datetime.now(UTC) - assigned if assigned is not None and not writes else timedelta(0)
        limit = timedelta(minutes=int(params.get("wait_minutes", 24 * 60)))
        if waited > limit:
            code = snap.mailbox_error.code if snap.mailbox_error is not None else "no answer"
            raise Permanent(
                f"Graph: the Exchange Online mailbox of {snap.user.upn} has not answered "
                f"{waited.total_seconds() / 60:.0f} min after the Exchange plan was assigned ({code}); "
                "check it in the Exchange admin center"
            )
        pending = Retryable(
            f"Graph: the mailbox of {snap.user.upn} is being provisioned; looking again in "
            f"{self.settings.graph_poll_seconds:.0f} s",
            retry_after=self.settings.graph_poll_seconds,
        )
        return Plan(StepResult("changed", changes=changes, message="licence with Exchange assigned"), writes, pending)

    def _mailbox_or_fail(self, snap: Snapshot) -> dict[str, Any]:
        if snap.mailbox is not None:
            return snap.mailbox
        error = snap.mailbox_error
        code = f"{error.status} {error.code}" if error is not None else "no answer"
        assigned = snap.user.plan_assigned_at(
            set(KNOWN_PLANS[p] for p in ("EXCHANGE_S_ENTERPRISE", "EXCHANGE_S_STANDARD"))
        )
        if assigned is not None and datetime.now(UTC) - assigned < timedelta(
            seconds=self.settings.graph_sync_wait_seconds
        ):
            raise Retryable(
                f"Graph: the mailbox of {snap.user.upn} does not answer yet ({code}); it is being provisioned",
                retry_after=self.settings.graph_poll_seconds,
            )
        raise Permanent(
            f"Graph: {snap.user.upn} has no Exchange Online mailbox that answers ({code}); an on-premises mailbox "
            "needs the custom-script action"
        )

    def _plan_set_auto_reply(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        params = step.params
        current = dict(self._mailbox_or_fail(snap).get("automaticRepliesSetting") or {})
        internal = str(params["internal_message"])
        external = str(params.get("external_message") or internal)
        wanted: dict[str, Any] = {
            "status": "scheduled" if params.get("start") else "alwaysEnabled",
            "externalAudience": params.get("external_audience", "all"),
            "internalReplyMessage": internal,
            "externalReplyMessage": external,
        }
        if params.get("start"):
            zone = params.get("time_zone", "UTC")
            wanted["scheduledStartDateTime"] = {"dateTime": _graph_time(params["start"]), "timeZone": zone}
            wanted["scheduledEndDateTime"] = {"dateTime": _graph_time(params["end"]), "timeZone": zone}
        changes = _reply_changes(current, wanted)
        if not changes:
            return Plan(StepResult("unchanged"))
        return self._patch_reply(snap, wanted, changes)

    def _plan_disable_auto_reply(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        if snap.mailbox is None:
            return Plan(StepResult("unchanged", message="no mailbox answers: no automatic reply to turn off"))
        current = dict(snap.mailbox.get("automaticRepliesSetting") or {})
        if str(current.get("status", "disabled")).lower() == "disabled":
            return Plan(StepResult("unchanged"))
        return self._patch_reply(
            snap, {"status": "disabled"}, [Change("automaticReplies.status", current.get("status"), "disabled")]
        )

    def _patch_reply(self, snap: Snapshot, wanted: dict[str, Any], changes: list[Change]) -> Plan:
        from msgraph.generated.models.automatic_replies_setting import AutomaticRepliesSetting
        from msgraph.generated.models.automatic_replies_status import AutomaticRepliesStatus
        from msgraph.generated.models.date_time_time_zone import DateTimeTimeZone
        from msgraph.generated.models.external_audience_scope import ExternalAudienceScope
        from msgraph.generated.models.mailbox_settings import MailboxSettings

        setting = AutomaticRepliesSetting(status=AutomaticRepliesStatus(wanted["status"]))
        if "internalReplyMessage" in wanted:
            setting.internal_reply_message = wanted["internalReplyMessage"]
            setting.external_reply_message = wanted["externalReplyMessage"]
            setting.external_audience = ExternalAudienceScope(wanted["externalAudience"])
        if "scheduledStartDateTime" in wanted:
            start, end = wanted["scheduledStartDateTime"], wanted["scheduledEndDateTime"]
            setting.scheduled_start_date_time = DateTimeTimeZone(
                date_time=start["dateTime"], time_zone=start["timeZone"]
            )
            setting.scheduled_end_date_time = DateTimeTimeZone(date_time=end["dateTime"], time_zone=end["timeZone"])
        info = self._user_builder(snap).mailbox_settings.to_patch_request_information(
            MailboxSettings(automatic_replies_setting=setting)
        )
        if snap.mailbox is not None:
            snap.mailbox["automaticRepliesSetting"] = {**(snap.mailbox.get("automaticRepliesSetting") or {}), **wanted}
        return Plan(
            StepResult("changed", changes=changes), [Write(self.client.request(info), "set the automatic reply")]
        )

    def _plan_revoke_sessions(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        since = context.item.event.occurred_at
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        valid_from = snap.user.sessions_valid_from
        if valid_from is not None and valid_from >= since:
            return Plan(StepResult("unchanged", message=f"sessions already revoked at {valid_from.isoformat()}"))
        if valid_from is not None and not snap.user.enabled:
            # Revoked before, and the account cannot sign in: no session can have been issued since (a later
            # delivery of the same leaver, whose event time is later than the revocation).
            return Plan(StepResult("unchanged", message=f"revoked at {valid_from.isoformat()}; sign-in is blocked"))
        snap.user.sessions_valid_from = datetime.now(UTC)
        info = self._user_builder(snap).revoke_sign_in_sessions.to_post_request_information()
        change = Change("signInSessionsValidFromDateTime", valid_from.isoformat() if valid_from else None, "(now)")
        return Plan(
            StepResult("changed", changes=[change]), [Write(self.client.request(info), "revoke sign-in sessions")]
        )

    def _account_enabled(self, snap: Snapshot, enabled: bool) -> Plan:
        if snap.user.synced:
            return Plan(
                StepResult(
                    "unchanged",
                    message="synced from on-premises AD: AD is the source of authority for the enabled state "
                    "(disable_user/enable_user there); Graph is not used, so the next sync does not undo it",
                )
            )
        if snap.user.enabled == enabled:
            return Plan(StepResult("unchanged"))
        from msgraph.generated.models.user import User

        snap.user.enabled = enabled
        info = self._user_builder(snap).to_patch_request_information(User(account_enabled=enabled))
        change = Change("accountEnabled", not enabled, enabled)
        return Plan(StepResult("changed", changes=[change]), [Write(self.client.request(info), "set accountEnabled")])

    def _plan_disable_cloud_account(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        return self._account_enabled(snap, False)

    def _plan_enable_cloud_account(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        return self._account_enabled(snap, True)

    def _membership(self, snap: Snapshot, add: list[str], remove: list[str]) -> Plan:
        from msgraph.generated.models.reference_create import ReferenceCreate

        member_of = snap.member_of or {}
        changes: list[Change] = []
        writes: list[Write] = []
        skipped: list[str] = []
        for group_id in dict.fromkeys(g.lower() for g in add):
            if group_id in member_of:
                continue
            group = snap.groups.get(group_id)
            if group is None:
                raise Permanent(f"Graph: the cloud group {group_id} does not exist (fix the mapping)")
            if group.unmanageable:
                skipped.append(f"{group.name}: {group.unmanageable}")
                continue
            reference = ReferenceCreate(odata_id=f"{self.client.base_url}/directoryObjects/{snap.user.id}")
            info = self.client.sdk.groups.by_group_id(group_id).members.ref.to_post_request_information(reference)
            writes.append(Write(self.client.request(info), f"add to group {group.name}", _already_member))
            changes.append(Change("memberOf", None, group.name))
            member_of[group_id] = group
        for group_id in dict.fromkeys(g.lower() for g in remove):
            group = member_of.get(group_id)
            if group is None:
                continue
            if group.unmanageable:
                skipped.append(f"{group.name}: {group.unmanageable}")
                continue
            builder = self.client.sdk.groups.by_group_id(group_id).members.by_directory_object_id(snap.user.id)
            writes.append(
                Write(
                    self.client.request(builder.ref.to_delete_request_information()),
                    f"remove from group {group.name}",
                    _not_member,
                )
            )
            changes.append(Change("memberOf", group.name, None))
            del member_of[group_id]
        message = f"not manageable through Graph: {'; '.join(skipped)}" if skipped else ""
        data = {"not_manageable": skipped} if skipped else {}
        if not writes:
            return Plan(StepResult("unchanged", message=message, data=data))
        return Plan(StepResult("changed", changes=changes, message=message, data=data), writes)

    def _plan_add_to_cloud_groups(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        return self._membership(snap, list(step.params["group_ids"]), [])

    def _plan_remove_from_cloud_groups(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        wanted = step.params["group_ids"]
        remove = list(snap.member_of or {}) if wanted == "all" else list(wanted)
        return self._membership(snap, [], remove)

    def _plan_sync_cloud_groups(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        desired = {g.lower() for g in step.params.get("desired", [])}
        managed = [g.lower() for g in step.params.get("managed", []) if g.lower() not in desired]
        return self._membership(snap, sorted(desired), managed)

    def _plan_set_photo(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        raw = self.photos(step.params)
        if raw is None:
            return Plan(StepResult("unchanged", message="the event carries no photo"))
        jpeg = to_jpeg(raw, max_pixels=int(step.params.get("max_pixels", 648)), max_bytes=GRAPH_PHOTO_MAX_BYTES)
        if snap.photo == jpeg:
            return Plan(StepResult("unchanged"))
        change = Change("photo", f"{len(snap.photo)} bytes" if snap.photo else None, f"{len(jpeg)} bytes (JPEG)")
        info = self._user_builder(snap).photo.content.to_put_request_information(jpeg)
        request = self.client.request(info)
        request.headers["content-type"] = "image/jpeg"
        if request.info is not None:
            request.info.headers.remove("Content-Type")
            request.info.headers.try_add("Content-Type", "image/jpeg")
        snap.photo = jpeg
        return Plan(StepResult("changed", changes=[change]), [Write(request, "upload the profile photo")])

    def _plan_remove_photo(self, context: StepContext, step: Step, snap: Snapshot) -> Plan:
        if snap.photo is None:
            return Plan(StepResult("unchanged"))
        change = Change("photo", f"{len(snap.photo)} bytes", None)
        snap.photo = None
        info = self._user_builder(snap).photo.content.to_delete_request_information()
        return Plan(
            StepResult("changed", changes=[change]),
            [Write(self.client.request(info), "remove the profile photo", _not_member)],
        )

    # Writing -----------------------------------------------------------------------------------------------
    def _write(self, context: StepContext, plans: list[tuple[Step, Plan]]) -> dict[str, StepResult | LifecycleError]:
        """Send every planned write in step order; each step's result, or the error of its first failed write."""
        results: dict[str, StepResult | LifecycleError] = {}
        owners: list[tuple[str, Write]] = [(step.key, w) for step, plan in plans for w in plan.writes]
        answers: list[Response] = []
        batchable: list[tuple[str, Write]] = []

        def flush() -> None:
            writes = [w for _, w in batchable]

            def accept(index: int, answer: Response) -> bool:
                tolerated = writes[index].tolerated
                return tolerated is not None and tolerated(answer)

            answers.extend(self.client.batch([w.request for w in writes], chained=True, accept=accept))
            batchable.clear()

        for owner, write in owners:
            if write.request.content is not None:
                # Binary bodies (photos) go alone, in order: flush what came before.
                flush()
                answers.append(self.client.send(write.request))
            else:
                batchable.append((owner, write))
        flush()
        failed: dict[str, LifecycleError] = {}
        for (owner, write), answer in zip(owners, answers, strict=True):
            if owner in failed or answer.ok or (write.tolerated is not None and write.tolerated(answer)):
                continue
            failed[owner] = _error(answer, write.what)
        for step, plan in plans:
            if step.key in failed:
                results[step.key] = failed[step.key]
                continue
            if plan.pending is not None:
                if plan.writes:
                    self._audit_partial(context, step, plan.result)
                results[step.key] = plan.pending
                continue
            if plan.result.outcome == "dry_run":
                plan.result.outcome = "changed"
            results[step.key] = plan.result
        first_failure = next((i for i, (step, _) in enumerate(plans) if step.key in failed), None)
        if first_failure is not None:
            # Steps after a failed one were not applied (424) or not in order: they plan again on their turn.
            for step, _ in plans[first_failure + 1 :]:
                results.pop(step.key, None)
        return results

    def _audit_partial(self, context: StepContext, step: Step, result: StepResult) -> None:
        """Audit writes of a step that is not finished yet (it is rescheduled and will report again)."""
        event = context.item.event
        self.runtime.store.append_audit(
            AuditEntry(
                at=datetime.now(UTC),
                work_id=context.item.work_id,
                user_id=event.user_id,
                step=step.key,
                action=step.action,
                target=f"graph:{self.name}",
                outcome="changed",
                dn=None,
                changes=tuple(result.changes),
                requested_by=context.requested_by,
                message=f"{result.message}; waiting for the mailbox".strip("; "),
            )
        )


# ----------------------------------------------------------------------------------------------------------
# Password delivery
# ----------------------------------------------------------------------------------------------------------
class PasswordMailer:
    """Sends a generated password to the person's manager (or a fallback address) with Graph ``sendMail``.

    The password exists only in memory: it is not logged, not stored, not audited, and the mail is not
    saved in the sender's Sent Items. A sendMail that may have been sent twice is not retried blindly.
    """

    def __init__(self, settings: Settings, directory: Callable[[], DirectoryFacts]) -> None:
        if not settings.password_mail_sender:
            raise Permanent("password delivery by mail needs LIFECYCLE_PASSWORD_MAIL_SENDER (the sending mailbox)")
        self.settings = settings
        self._directory = directory

    def __call__(self, dn: str, password: str) -> None:
        facts = self._directory().delivery_facts(dn)
        recipient = facts.get("manager_mail") or self.settings.password_mail_fallback
        if not recipient:
            raise Permanent(
                f"the password of {dn} was set but not delivered: the account has no manager with a mail address "
                "and LIFECYCLE_PASSWORD_MAIL_FALLBACK is empty; reset the password once one is configured"
            )
        values = {
            "name": facts.get("name", ""),
            "upn": facts.get("upn", ""),
            "sam": facts.get("sam", ""),
            "manager": facts.get("manager_name") or "colleague",
            "password": password,
        }
        subject = _fill(self.settings.password_mail_subject, {**values, "password": ""})
        body = _fill(self.settings.password_mail_body, values)
        client = client_for(self.settings)
        message = {
            "message": {
                "subject": subject,
                "body": {"contentType": "Text", "content": body},
                "toRecipients": [{"emailAddress": {"address": recipient}}],
            },
            "saveToSentItems": False,
        }
        sender = self.settings.password_mail_sender
        path = f"/users/{quote(sender, safe='')}/sendMail"
        request = Request("POST", path, {"content-type": "application/json"}, message)
        # sendMail is not idempotent: only a 429 (refused, so not sent) is retried here; the middleware would
        # also resend after a 503 that may have been sent.
        for _ in range(self.settings.graph_max_retries + 1):
            answer = client.send(request, retry=False)
            if answer.status != 429:
                break
            wait = answer.retry_after or 1.0
            if wait > INLINE_RETRY_MAX_SECONDS:
                break
            client.run(asyncio.sleep(wait))
        del values, body, message, request
        if answer.ok:
            log.info("delivered the initial password of %s by mail to %s", dn, recipient)
            return
        if answer.status in (500, 502, 503, 504):
            raise Permanent(
                f"the password of {dn} may or may not have been mailed to {recipient} (Graph answered "
                f"{answer.status}); ask them, and reset the password if it did not arrive"
            )
        raise Permanent(
            f"the password of {dn} was set but not delivered: sendMail answered {answer.status} {answer.code}; "
            "reset the password once the cause is fixed"
        )


def password_mailer(runtime: Runtime, directory: Callable[[], DirectoryFacts]) -> Callable[[str, str], None]:
    """The password sink the worker gives the AD target when LIFECYCLE_PASSWORD_DELIVERY is graph_mail."""
    return PasswordMailer(runtime.settings, directory)


def build(name: str, runtime: Runtime) -> GraphTarget:
    return GraphTarget(name, runtime)


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------
def _fill(template: str, values: dict[str, str]) -> str:
    """``{name}`` placeholders only: a template from settings never reaches attributes or methods."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def _already_member(response: Response) -> bool:
    # A POST $ref that committed before a 503 is resent by the middleware and then answers "already exist".
    return response.status == 400 and "already exist" in response.message.lower()


def _not_member(response: Response) -> bool:
    return response.status == 404


def _licence_text(disabled: set[str] | None) -> str | None:
    if disabled is None:
        return None
    names = {v: k for k, v in KNOWN_PLANS.items()}
    plans = sorted(names.get(p, p) for p in disabled)
    return f"assigned, disabled plans: {', '.join(plans)}" if plans else "assigned"


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parse_ad_time(value: Any) -> datetime | None:
    """AD's GeneralizedTime (``20250101120000.0Z``)."""
    if not value:
        return None
    try:
        return datetime.strptime(str(value)[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _graph_time(value: Any) -> str:
    parsed = _parse_time(value)
    if parsed is None:
        raise Permanent(f"Graph: {value!r} is not a date and time")
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


_TAGS = re.compile(r"<[^>]+>")


def _text(value: Any) -> str:
    """A reply message as text: Exchange stores it as HTML, so compare what a reader sees."""
    return " ".join(html.unescape(_TAGS.sub(" ", str(value or ""))).split())


def _reply_changes(current: dict[str, Any], wanted: dict[str, Any]) -> list[Change]:
    changes: list[Change] = []
    for key, value in wanted.items():
        before = current.get(key)
        if key.endswith("Message"):
            same = _text(before) == _text(value)
        elif key.startswith("scheduled"):
            same = isinstance(before, dict) and _parse_time(before.get("dateTime")) == _parse_time(value["dateTime"])
        else:
            same = str(before or "").lower() == str(value).lower()
        if not same:
            shown_before = _text(before) if key.endswith("Message") else before
            changes.append(Change(f"automaticReplies.{key}", shown_before, value))
    return changes
