"""Microsoft 365 through Microsoft Graph (msgraph-sdk over kiota/httpx, tokens from msal): ensure-operations.

Where things are:

- ``tokens``: the app-only token (msal: client secret, certificate, managed identity).
- ``transport``: the process's Graph client: requests, ``$batch`` chains, throttling, errors.
- ``state``: the snapshot a group of steps reads, and the writes each step plans (``Plan``, ``Write``).
- ``users`` (sign-in, sessions), ``licences`` (SKUs, plans), ``mailboxes`` (Exchange Online, auto-reply),
  ``groups`` (cloud group memberships), ``photos`` (profile photo): one planner per action.
- ``target``: ``GraphTarget``, which reads, plans and writes a work item's contiguous Graph steps.
- ``mail``: password delivery by ``sendMail``.

Every action is an ensure: a second run reads, finds nothing to change and writes nothing. Nothing here is
imported by the ingress.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lifecycle.targets.graph.mail import DirectoryFacts, PasswordMailer, password_mailer
from lifecycle.targets.graph.state import CloudUser, Group, Plan, Snapshot, Write
from lifecycle.targets.graph.target import GraphTarget
from lifecycle.targets.graph.transport import (
    BATCH_LIMIT,
    INLINE_RETRY_MAX_SECONDS,
    GraphClient,
    Request,
    Response,
    client_for,
    close_clients,
)

if TYPE_CHECKING:
    from lifecycle.targets import TargetContext

__all__ = [
    "BATCH_LIMIT",
    "INLINE_RETRY_MAX_SECONDS",
    "CloudUser",
    "DirectoryFacts",
    "GraphClient",
    "GraphTarget",
    "Group",
    "PasswordMailer",
    "Plan",
    "Request",
    "Response",
    "Snapshot",
    "Write",
    "build",
    "client_for",
    "close_clients",
    "password_mailer",
]


def build(name: str, context: TargetContext) -> GraphTarget:
    """The Graph target of a connection (``lifecycle.targets`` calls this by name)."""
    return GraphTarget(name, context)
