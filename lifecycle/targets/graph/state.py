"""What a group of Graph steps reads (the snapshot), and what each step plans to write.

Every planner (``users``, ``licences``, ``mailboxes``, ``groups``, ``photos``) is a function
``(conn, context, step, snapshot) -> Plan``: it reads the snapshot, changes it to what its writes will make
true (so the next step of the group sees the effect), and returns the writes and the result to report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lifecycle.errors import LifecycleError, Retryable
from lifecycle.state import Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.graph.transport import GraphClient, Request, Response

if TYPE_CHECKING:
    from lifecycle.photos import PhotoLoader
    from lifecycle.settings import Settings
    from lifecycle.work import Step


@dataclass
class Connection:
    """One Graph connection (a tenant) as the planners see it: its client, settings and photo loader."""

    name: str
    settings: Settings
    client: GraphClient
    photos: PhotoLoader

    def user_builder(self, snap: Snapshot) -> Any:
        """The SDK's request builder of the snapshot's cloud user."""
        return self.client.sdk.users.by_user_id(snap.user.id)


@dataclass
class Group:
    id: str
    name: str
    group_types: list[str]
    dynamic: bool
    synced: bool
    mail_enabled: bool
    # isAssignableToRole: membership can carry a directory role (https://learn.microsoft.com/en-us/entra/
    # identity/role-based-access-control/groups-concept); never changed by this service.
    role_assignable: bool = False

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
            role_assignable=bool(data.get("isAssignableToRole")),
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
    immutable_id: str | None = None
    licence_errors: list[str] = field(default_factory=list)  # licences in error state, described
    enabled_when_read: bool = True  # ``enabled`` before any step of the group planned a change
    raw: dict[str, Any] = field(default_factory=dict)  # the user as read (cloud-only properties), kept current

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CloudUser:
        direct: dict[str, set[str]] = {}
        by_group: dict[str, set[str]] = {}
        errors: list[str] = []
        states = data.get("licenseAssignmentStates")
        if states is None:
            for lic in data.get("assignedLicenses") or []:
                direct[str(lic["skuId"]).lower()] = {str(p).lower() for p in lic.get("disabledPlans") or []}
        else:
            for state in states:
                sku = str(state.get("skuId")).lower()
                # A licence Graph could not apply (state Error or ActiveWithError; error CountViolation,
                # DependencyViolation, ...: https://learn.microsoft.com/en-us/graph/api/resources/
                # licenseassignmentstate) is reported by the licence steps, never silently taken as assigned.
                if str(state.get("state", "Active")) in ("Error", "ActiveWithError"):
                    source = f"group {state['assignedByGroup']}" if state.get("assignedByGroup") else "direct"
                    errors.append(f"{sku} ({source}): {state.get('state')} {state.get('error') or ''}".strip())
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
            sessions_valid_from=parse_time(data.get("signInSessionsValidFromDateTime")),
            immutable_id=data.get("onPremisesImmutableId"),
            licence_errors=errors,
            enabled_when_read=bool(data.get("accountEnabled", True)),
            raw=dict(data),
        )

    def plan_assigned_at(self, plan_ids: set[str]) -> datetime | None:
        times = [
            parse_time(p.get("assignedDateTime"))
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
    manager: str | None = None  # the manager's object id (read for set_cloud_manager)
    # The user's direct and transitive memberships (groups, directory roles), for the protection check.
    transitive_member_of: list[dict[str, Any]] | None = None


@dataclass
class Write:
    request: Request
    what: str
    # An error answer that still means the desired state holds (a member already added, already removed).
    tolerated: Callable[[Response], bool] | None = None
    # What this write alone changes (audited when its step fails after it was applied); empty: the step's.
    changes: list[Change] = field(default_factory=list)
    # An error answer that means the state changed since it was read: the step is retried and planned anew.
    replan: Callable[[Response], bool] | None = None
    # The error an answer means when the generic one would say less (a licence refused for plan dependencies).
    explain: Callable[[Response], LifecycleError | None] | None = None


@dataclass
class Plan:
    """What one step will write, and what it reports once the writes succeeded."""

    result: StepResult
    writes: list[Write] = field(default_factory=list)
    # Raised after the writes succeeded: the step is not finished yet (a mailbox being provisioned).
    pending: Retryable | None = None


Planner = Callable[[Connection, StepContext, "Step", Snapshot], Plan]


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_ad_time(value: Any) -> datetime | None:
    """AD's GeneralizedTime (``20250101120000.0Z``)."""
    if not value:
        return None
    try:
        return datetime.strptime(str(value)[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def not_member(response: Response) -> bool:
    """A removal Graph answers 404 for: already gone, which is what the step wanted."""
    return response.status == 404
