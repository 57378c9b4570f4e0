"""What every part of the Graph stand-in shares: its state, its lock and its address."""

from __future__ import annotations

import copy
import re
import secrets
import threading
from pathlib import Path
from typing import Any

from tests.standins.graph.model import DEFAULT_SKUS, Answer, Fault, Group, Logged, User
from tests.standins.tls import LoopbackTLSServer


class _State:
    """The stand-in's state; the mixins (batching, entra, users, groups, mailbox) act on it."""

    def __init__(self, directory: Path, *, tenant: str = "contoso-tenant") -> None:
        self.directory = directory
        self.tenant = tenant
        self.users: dict[str, User] = {}
        self.groups: dict[str, Group] = {}
        self.deleted: dict[str, User] = {}  # soft-deleted users (directory/deletedItems)
        self.filter_lag: set[str] = set()  # user ids $filter does not find yet (eventual consistency)
        self.lag_new_users = False  # users created from now on join filter_lag
        # The Temporary Access Pass policy, with Microsoft's defaults (temporaryaccesspassauthenticationmethod
        # configuration), and every pass handed out (so a test can look for them where they must not be).
        self.tap_policy: dict[str, Any] = {
            "state": "enabled",
            "defaultLength": 8,
            "defaultLifetimeInMinutes": 60,
            "minimumLifetimeInMinutes": 60,
            "maximumLifetimeInMinutes": 480,
            "isUsableOnce": False,
        }
        self.issued_passes: list[str] = []
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
        # Application permissions granted (admin consent) in this tenant: client id -> the token's ``roles``.
        self.granted: dict[str, set[str]] = {}
        # Every tenant the server serves, this one included (add_tenant): tenant id -> its directory.
        self.tenants: dict[str, Any] = {tenant: self}  # GraphStandIn values
        self.certificates: dict[str, Any] = {}  # client id -> x509 certificate
        self.identity_header = secrets.token_hex(16)
        self._tokens: set[str] = set()
        self._faults: list[Fault] = []
        # Requests whose path matches one of these get no answer until stop() (a stalled service).
        self.stalled: list[re.Pattern[str]] = []
        self._released = threading.Event()
        self._lock = threading.RLock()
        self._server: LoopbackTLSServer | None = None
        self._thread: threading.Thread | None = None
        self.ca_file: Path | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def graph_url(self) -> str:
        return f"{self.url}/v1.0"

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], raw: bytes, body: Any
    ) -> Answer:
        raise NotImplementedError  # GraphStandIn's (server.py)
