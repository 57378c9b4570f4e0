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

The package, by what changes together: ``model`` (SKUs, users, groups, the log), ``state`` (what the parts share),
``server`` (GraphStandIn, dispatch, test helpers), ``batching`` (faults and ``$batch``), ``entra`` (tokens),
``users`` (users and licences), ``groups`` (membership) and ``mailbox`` (mailboxSettings and the photo).
"""

from __future__ import annotations

from tests.standins.graph.model import (
    DEFAULT_SKUS,
    E1,
    E3,
    EXCHANGE,
    EXCHANGE_PLANS,
    EXCHANGE_STANDARD,
    F3,
    KIOSK,
    SHAREPOINT,
    SKYPE,
    SKYPE_KIOSK,
    TEAMS,
    VISIO,
    WEB,
    WEB_OFFICE,
    WEB_SHAREPOINT,
    WRITE_METHODS,
    Answer,
    Fault,
    Group,
    Logged,
    User,
    error,
    iso,
    not_found,
    now,
)
from tests.standins.graph.server import GraphStandIn

__all__ = [
    "DEFAULT_SKUS",
    "E1",
    "E3",
    "EXCHANGE",
    "EXCHANGE_PLANS",
    "EXCHANGE_STANDARD",
    "F3",
    "KIOSK",
    "SHAREPOINT",
    "SKYPE",
    "SKYPE_KIOSK",
    "TEAMS",
    "VISIO",
    "WEB",
    "WEB_OFFICE",
    "WEB_SHAREPOINT",
    "WRITE_METHODS",
    "Answer",
    "Fault",
    "GraphStandIn",
    "Group",
    "Logged",
    "User",
    "error",
    "iso",
    "not_found",
    "now",
]
