"""Cloud-only users in the Graph stand-in: create, filters, soft delete, deleted items and restore.

Sources (Microsoft Learn, mirrored in microsoftgraph/microsoft-graph-docs-contrib; reference/entra.md):
- ``POST /users`` (user-post-users): 201 and the user; ``accountEnabled``, ``displayName``, ``mailNickname``,
  ``userPrincipalName`` and ``passwordProfile`` are required. A UPN another object holds: 400
  ``Request_BadRequest`` "Another object with the same value for property userPrincipalName already exists."
  with ``details`` ``ObjectConflict`` (microsoftgraph/microsoft-graph-docs#1508); a mail or proxy address
  another object holds: 400 "A conflicting object with one or more of the specified property values is
  present in the directory." (microsoft-graph-docs-contrib#6346). ``employeeId``: at most 16 characters.
- Setting ``mail`` adds it as the primary SMTP proxy address (``proxyAddresses`` is read-only; user resource).
- ``$filter``: ``eq`` on userPrincipalName, mail, employeeId, onPremisesImmutableId and
  ``proxyAddresses/any(p:p eq '..')`` are default queries (users created while ``lag_new_users`` is set
  are not found by filters, as the eventually consistent index may not have them yet);
  ``onPremisesExtensionAttributes/...`` is an advanced query, refused without ``ConsistencyLevel:
  eventual`` and ``$count=true`` (aad-advanced-queries).
  Worst plausible (unconfirmed): the ``smtp:``/``SMTP:`` prefix compares case-sensitively; users listed in
  ``filter_lag`` are not found by filters yet (the index behind them is eventually consistent).
- ``DELETE /users/{id}`` (user-delete): 204, soft delete; the user keeps licences, groups and mailbox and
  shows in ``GET /directory/deletedItems/microsoft.graph.user`` (the cast is required) with its UPN prefixed
  by its id, as Microsoft's example of a deleted user shows (Get-EntraDeletedUser); its UPN is free again.
  Worst plausible: ``$filter`` on deleted items is refused ("Invalid filter clause", as reported in the
  techcommunity thread on deletedDateTime filters); ``$top`` pages with ``@odata.nextLink``.
- Manager (user-list-manager, user-post-manager, user-delete-manager): ``GET /users/{id}/manager`` (404
  ``Request_ResourceNotFound`` without one), ``PUT /users/{id}/manager/$ref`` with ``{"@odata.id":
  ".../users/{id}"}`` (204; 400 for an object that does not exist or the user itself),
  ``DELETE /users/{id}/manager/$ref`` (204).
- Temporary Access Pass (authentication-post-temporaryaccesspassmethods, temporaryaccesspassauthentication
  methodconfiguration, howto-authentication-temporary-access-pass): 201 with ``temporaryAccessPass`` in the
  create response only (list answers null); one per user, a new one replaces it; ``lifetimeInMinutes``
  within the policy's minimum and maximum (defaults 60 and 480) else 400; ``isUsableOnce`` forced by a
  one-time policy. With the policy off (``tap_policy["state"] = "disabled"``) or the user outside its
  targets: 400 "Converged UserCredentialPolicy does not allow creating or updating this authentication
  method. AuthMethodType [TemporaryAccessPass]" (MicrosoftDocs/azure-docs#111778, glueckkanja/MyWorkID#47;
  the status is unconfirmed, 400 assumed).
- ``POST /directory/deletedItems/{id}/restore`` (directory-deleteditems-restore): 200 and the user, its UPN
  back; when an active object took the UPN meanwhile the restore is refused (worst plausible: 400 conflict,
  which ``newUserPrincipalName`` exists to avoid); ``autoReconcileProxyConflict`` drops taken proxies.
"""

from __future__ import annotations

import re
import secrets
import uuid
from typing import Any
from urllib.parse import quote, unquote

from tests.standins.graph.model import Answer, User, _pick, _select, error, iso, not_found, now
from tests.standins.graph.state import _State

# Properties a create or PATCH may carry besides the ones User has fields for (kept in User.extra).
EXTRA_PROPERTIES = {
    "employeeId",
    "employeeHireDate",
    "onPremisesExtensionAttributes",
    "givenName",
    "surname",
    "jobTitle",
    "department",
    "officeLocation",
    "companyName",
    "mobilePhone",
    "city",
    "country",
    "state",
    "streetAddress",
    "postalCode",
    "employeeType",
    "preferredLanguage",
    "mailNickname",
}
_CREATE_REQUIRED = ("accountEnabled", "displayName", "mailNickname", "userPrincipalName", "passwordProfile")
_UPN_TAKEN = "Another object with the same value for property userPrincipalName already exists."
_CONFLICT = "A conflicting object with one or more of the specified property values is present in the directory."
_EQ = re.compile(
    r"^(userPrincipalName|mail|employeeId|onPremisesImmutableId|onPremisesExtensionAttributes/"
    r"extensionAttribute\d+) eq '((?:[^']|'')*)'$"
)
_PROXY = re.compile(r"^proxyAddresses/any\((\w+):\1 eq '((?:[^']|'')*)'\)$")


def conflict(message: str, target: str) -> tuple[int, Any]:
    body = error("Request_BadRequest", message)
    body["error"]["details"] = [{"target": target, "code": "ObjectConflict"}]
    return 400, body


class DirectoryMixin(_State):
    """Needs the users module's ``_user_json`` (GraphStandIn has both)."""

    def _user_json(self, user: User) -> dict[str, Any]:
        raise NotImplementedError

    # Filters ---------------------------------------------------------------------------------------------------
    def _filter_users(self, query: dict[str, list[str]], headers: dict[str, str]) -> Answer:
        text = (query.get("$filter") or [""])[0].strip()
        matches = _EQ.fullmatch(text)
        proxy = _PROXY.fullmatch(text)
        if text and matches is None and proxy is None:
            return 400, error("Request_UnsupportedQuery", "Unsupported or invalid query filter clause specified."), {}
        advanced = headers.get("consistencylevel", "").lower() == "eventual" and "true" in query.get("$count", [])
        if matches is not None and "/" in matches.group(1) and not advanced:
            return (
                400,
                error(
                    "Request_UnsupportedQuery",
                    "Property 'extensionAttribute' is an advanced query: it needs ConsistencyLevel: eventual and "
                    "$count=true.",
                ),
                {},
            )
        users = [u for u in self.users.values() if not text or u.id not in self.filter_lag]
        if matches is not None:
            name, value = matches.group(1), matches.group(2).replace("''", "'")
            users = [u for u in users if _equals(_property(self._user_json(u), name), value)]
        elif proxy is not None:
            value = proxy.group(2).replace("''", "'")
            prefix, _, address = value.partition(":")
            users = [
                u
                for u in users
                if any(
                    p.partition(":")[0] == prefix and p.partition(":")[2].lower() == address.lower()
                    for p in u.proxy_addresses
                )
            ]
        select = _select(query)
        # Pages of at most $top (1..999; 100 by default), then @odata.nextLink (user-list, "Optional query
        # parameters"; https://learn.microsoft.com/en-us/graph/paging). Worst plausible: the server's page may be
        # smaller than $top asks (``page_size``), so a caller must follow the link, never count on one page.
        top = min(int((query.get("$top") or [str(self.page_size)])[0]), self.page_size)
        skip = int((query.get("$skiptoken") or ["0"])[0])
        body: dict[str, Any] = {"value": [_pick(self._user_json(u), select) for u in users[skip : skip + top]]}
        if advanced:
            body["@odata.count"] = len(users)
        if skip + top < len(users):
            kept = {k: v[0] for k, v in query.items() if k in ("$filter", "$select", "$count")}
            rest = "".join(f"&{k}={quote(v, safe='')}" for k, v in kept.items())
            body["@odata.nextLink"] = f"{self.graph_url}/users?$top={top}&$skiptoken={skip + top}{rest}"
        return 200, body, {}

    # Create ----------------------------------------------------------------------------------------------------
    def _create_user(self, body: Any) -> Answer:
        if not isinstance(body, dict):
            return 400, error("BadRequest", "Empty Payload. JSON content expected."), {}
        fields = {k: v for k, v in body.items() if k != "@odata.type"}
        missing = [name for name in _CREATE_REQUIRED if name not in fields]
        if missing:
            return (
                400,
                error("Request_BadRequest", f"Invalid value specified for property '{missing[0]}' of resource 'User'."),
                {},
            )
        known = EXTRA_PROPERTIES | set(_CREATE_REQUIRED) | {"mail", "usageLocation"}
        unknown = sorted(set(fields) - known)
        if unknown:
            return (
                400,
                error("Request_BadRequest", f"Property '{unknown[0]}' does not exist on type 'microsoft.graph.user'."),
                {},
            )
        if len(str(fields.get("employeeId") or "")) > 16:
            return 400, error("Request_BadRequest", "The property 'employeeId' exceeds its maximum length of 16."), {}
        upn = str(fields["userPrincipalName"])
        if any(u.upn.lower() == upn.lower() for u in self.users.values()):
            return (*conflict(_UPN_TAKEN, "userPrincipalName"), {})
        mail = fields.get("mail")
        addresses = {str(a).lower() for a in (upn, mail) if a}
        for other in self.users.values():
            held = {p.partition(":")[2].lower() for p in other.proxy_addresses} | {(other.mail or "").lower()}
            if held & addresses:
                return (*conflict(_CONFLICT, "proxyAddresses"), {})
        user = User(
            id=str(uuid.uuid4()),
            upn=upn,
            display_name=str(fields["displayName"]),
            mail=str(mail) if mail else None,
            enabled=bool(fields["accountEnabled"]),
            usage_location=fields.get("usageLocation"),
        )
        user.extra = {k: v for k, v in fields.items() if k in EXTRA_PROPERTIES}
        if mail:
            user.proxy_addresses = [f"SMTP:{mail}"]
        self.users[user.id] = user
        if self.lag_new_users:
            self.filter_lag.add(user.id)
        return 201, self._user_json(user), {}

    def _update_extra(self, user: User, fields: dict[str, Any]) -> None:
        for name, value in fields.items():
            if name in EXTRA_PROPERTIES:
                user.extra[name] = value

    # Soft delete, deleted items, restore -----------------------------------------------------------------------
    def _soft_delete(self, user: User) -> Answer:
        del self.users[user.id]
        user.deleted_upn = user.upn
        user.upn = f"{user.id}{user.upn}"
        user.deleted_at = iso(now())
        self.deleted[user.id] = user
        return 204, None, {}

    def _deleted_items(self, method: str, rest: list[str], query: dict[str, list[str]], body: Any) -> Answer:
        if rest == ["microsoft.graph.user"] and method == "GET":
            if query.get("$filter"):
                return 400, error("Request_UnsupportedQuery", "Invalid filter clause"), {}
            top = int((query.get("$top") or [str(self.page_size)])[0])
            top = min(top, self.page_size)
            skip = int((query.get("$skiptoken") or ["0"])[0])
            users = sorted(self.deleted.values(), key=lambda u: u.id)
            select = _select(query)
            page = [
                _pick({**self._user_json(u), "deletedDateTime": u.deleted_at}, select) for u in users[skip : skip + top]
            ]
            answer: dict[str, Any] = {"value": page}
            if skip + top < len(users):
                selected = f"&$select={','.join(select)}" if select else ""
                answer["@odata.nextLink"] = (
                    f"{self.graph_url}/directory/deletedItems/microsoft.graph.user?$top={top}"
                    f"&$skiptoken={skip + top}{selected}"
                )
            return 200, answer, {}
        if not rest:
            return (
                400,
                error("Request_BadRequest", "The OData cast to a type is required: deletedItems/microsoft.graph.user"),
                {},
            )
        user = self.deleted.get(unquote(rest[0]).lower())
        if user is None:
            return (*not_found(rest[0]), {})
        if rest[1:] == [] and method == "GET":
            return 200, {**self._user_json(user), "deletedDateTime": user.deleted_at}, {}
        if rest[1:] == ["restore"] and method == "POST":
            original = user.deleted_upn or user.upn
            if any(u.upn.lower() == original.lower() for u in self.users.values()):
                return (*conflict(_UPN_TAKEN, "userPrincipalName"), {})
            taken = {p.partition(":")[2].lower() for u in self.users.values() for p in u.proxy_addresses}
            clashing = [p for p in user.proxy_addresses if p.partition(":")[2].lower() in taken]
            if clashing and not (isinstance(body, dict) and body.get("autoReconcileProxyConflict")):
                return (*conflict(_CONFLICT, "proxyAddresses"), {})
            user.proxy_addresses = [p for p in user.proxy_addresses if p not in clashing]
            del self.deleted[user.id]
            user.upn, user.deleted_upn, user.deleted_at = original, None, None
            self.users[user.id] = user
            return 200, self._user_json(user), {}
        return 405, error("Request_BadRequest", "Method not allowed."), {}


class PeopleMixin(_State):
    """Managers and Temporary Access Passes (see the module's sources)."""

    def _manager(self, method: str, user: User, rest: list[str], body: Any) -> Answer:
        if rest == [] and method == "GET":
            manager = self.users.get(user.manager_id or "")
            if manager is None:
                return (*not_found("manager"), {})
            return (
                200,
                {
                    "@odata.type": "#microsoft.graph.user",
                    "id": manager.id,
                    "displayName": manager.display_name,
                    "mail": manager.mail,
                    "userPrincipalName": manager.upn,
                },
                {},
            )
        if rest == ["$ref"] and method == "PUT":
            reference = str((body or {}).get("@odata.id") or "") if isinstance(body, dict) else ""
            manager_id = reference.rstrip("/").rsplit("/", 1)[-1].lower()
            if manager_id not in self.users or manager_id == user.id:
                return 400, error("Request_BadRequest", f"Invalid object identifier '{manager_id}'."), {}
            user.manager_id = manager_id
            return 204, None, {}
        if rest == ["$ref"] and method == "DELETE":
            if user.manager_id is None:
                return (*not_found("manager"), {})
            user.manager_id = None
            return 204, None, {}
        return 405, error("Request_BadRequest", "Method not allowed."), {}

    def _tap(self, method: str, user: User, body: Any) -> Answer:
        policy = self.tap_policy
        if method == "GET":
            return 200, {"value": [{**m, "temporaryAccessPass": None} for m in user.passes]}, {}
        if method != "POST":
            return 405, error("Request_BadRequest", "Method not allowed."), {}
        if policy["state"] != "enabled":
            return (
                400,
                error(
                    "badRequest",
                    "Converged UserCredentialPolicy does not allow creating or updating this authentication "
                    "method. AuthMethodType [TemporaryAccessPass]",
                ),
                {},
            )
        fields = body if isinstance(body, dict) else {}
        lifetime = int(fields.get("lifetimeInMinutes") or policy["defaultLifetimeInMinutes"])
        if not policy["minimumLifetimeInMinutes"] <= lifetime <= policy["maximumLifetimeInMinutes"]:
            return 400, error("badRequest", "The lifetime of the Temporary Access Pass is outside the policy."), {}
        once = bool(fields.get("isUsableOnce", policy["isUsableOnce"]))
        if policy["isUsableOnce"] and not once:
            return 400, error("badRequest", "The policy allows one-time Temporary Access Passes only."), {}
        method_json = {
            "id": str(uuid.uuid4()),
            "temporaryAccessPass": secrets.token_urlsafe(12)[: policy["defaultLength"]],
            "createdDateTime": iso(now()),
            "startDateTime": fields.get("startDateTime") or iso(now()),
            "lifetimeInMinutes": lifetime,
            "isUsableOnce": once,
            "isUsable": not fields.get("startDateTime"),
            "methodUsabilityReason": "NotYetValid" if fields.get("startDateTime") else "EnabledByPolicy",
        }
        user.passes = [method_json]  # one per user: a new pass replaces the old one
        self.issued_passes.append(str(method_json["temporaryAccessPass"]))
        return 201, dict(method_json), {}


def _property(data: dict[str, Any], name: str) -> Any:
    if "/" in name:
        outer, inner = name.split("/", 1)
        return (data.get(outer) or {}).get(inner)
    return data.get(name)


def _equals(value: Any, wanted: str) -> bool:
    return value is not None and str(value).lower() == wanted.lower()
