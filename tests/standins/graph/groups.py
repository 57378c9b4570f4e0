"""Groups: members/$ref add and remove (and Graph's refusals), and a user's memberOf and transitiveMemberOf."""

from __future__ import annotations

from typing import Any

from tests.standins.graph.model import Answer, Group, User, _pick, _select, error, not_found
from tests.standins.graph.state import _State


class GroupsMixin(_State):
    def _member_of(self, user: User, rest: list[str], query: dict[str, list[str]]) -> Answer:
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

    def _transitive_member_of(self, user: User, query: dict[str, list[str]]) -> Answer:
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
        answer: dict[str, Any] = {"value": objects[skip : skip + top]}
        if skip + top < len(objects):
            answer["@odata.nextLink"] = (
                f"{self.graph_url}/users/{user.id}/transitiveMemberOf?$top={top}&$skiptoken={skip + top}"
            )
        return 200, answer, {}

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
