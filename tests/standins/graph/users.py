"""Users and licences: users by id, UPN or immutable id, PATCH, assignLicense, licence states and plans."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any
from urllib.parse import unquote

from tests.standins.graph.directory import EXTRA_PROPERTIES, DirectoryMixin, PeopleMixin
from tests.standins.graph.groups import GroupsMixin
from tests.standins.graph.mailbox import MailboxMixin, _new_mailbox
from tests.standins.graph.model import EXCHANGE_PLANS, Answer, User, _pick, _select, error, iso, now

_USER_PROPERTIES = EXTRA_PROPERTIES | {
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


class UsersMixin(GroupsMixin, MailboxMixin, DirectoryMixin, PeopleMixin):
    def _find_user(self, key: str) -> User | None:
        key = unquote(key).lower()
        return self.users.get(key) or next((u for u in self.users.values() if u.upn.lower() == key), None)

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
            "proxyAddresses": list(user.proxy_addresses),
            "employeeId": None,
            "employeeHireDate": None,
            **user.extra,
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
            if method == "DELETE":
                return self._soft_delete(user)
            return 405, error("Request_BadRequest", "Method not allowed."), {}
        name = rest[0]
        if name == "manager":
            return self._manager(method, user, rest[1:], body)
        if name == "authentication" and rest[1:] == ["temporaryAccessPassMethods"]:
            return self._tap(method, user, body)
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
            return self._member_of(user, rest, query)
        if name == "transitiveMemberOf" and method == "GET":
            return self._transitive_member_of(user, query)
        if name == "revokeSignInSessions" and method == "POST":
            user.sessions_valid_from = iso(now())
            return 200, {"@odata.context": "$metadata#Edm.Boolean", "value": True}, {}
        if name == "mailboxSettings":
            answer = self._mailbox_settings(method, user, body)
            if answer is not None:
                return answer
        if name == "photo" and rest[1:] == ["$value"]:
            answer = self._photo(method, user, headers, raw)
            if answer is not None:
                return answer
        if name == "sendMail" and method == "POST":
            message = (body or {}).get("message")
            if not isinstance(message, dict) or not message.get("toRecipients"):
                return 400, error("ErrorInvalidRecipients", "At least one recipient is not valid."), {}
            # Which app sent it: the token's ``appid`` claim (tests tell a separate sender identity apart).
            self.sent_mail.append({"from": user.upn, "appid": _appid(headers), **copy.deepcopy(body)})
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
        self._update_extra(user, fields)
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


def _appid(headers: dict[str, str]) -> str:
    """The ``appid`` claim of the request's bearer token (issued by this stand-in: JWT-shaped, unsigned claims)."""
    token = headers.get("authorization", "").removeprefix("Bearer ")
    try:
        claims = token.split(".")[1]
        return str(json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4))).get("appid", ""))
    except (IndexError, ValueError):
        return ""
