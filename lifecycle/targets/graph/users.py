"""The cloud user's account: sign-in (``accountEnabled``) and sign-in sessions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lifecycle.errors import Permanent
from lifecycle.state import Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.graph.state import Connection, Plan, Snapshot, Write, parse_time

if TYPE_CHECKING:
    from lifecycle.work import Step


def plan_revoke_sessions(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    since = context.item.event.occurred_at
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    valid_from = snap.user.sessions_valid_from
    if valid_from is not None and valid_from >= since:
        return Plan(StepResult("unchanged", message=f"sessions already revoked at {valid_from.isoformat()}"))
    if valid_from is not None and not snap.user.enabled_when_read:
        # Revoked before, and the account cannot sign in: no session can have been issued since (a later
        # delivery of the same leaver, whose event time is later than the revocation).
        return Plan(StepResult("unchanged", message=f"revoked at {valid_from.isoformat()}; sign-in is blocked"))
    snap.user.sessions_valid_from = datetime.now(UTC)
    info = conn.user_builder(snap).revoke_sign_in_sessions.to_post_request_information()
    change = Change("signInSessionsValidFromDateTime", valid_from.isoformat() if valid_from else None, "(now)")
    return Plan(StepResult("changed", changes=[change]), [Write(conn.client.request(info), "revoke sign-in sessions")])


def account_enabled(conn: Connection, snap: Snapshot, enabled: bool) -> Plan:
    if snap.user.synced and enabled:
        # Never enable a synced user from the cloud: AD is the source of authority, and an AD account still
        # disabled would be enabled in Entra until its next change syncs. enable_user in AD brings it back.
        return Plan(
            StepResult(
                "unchanged",
                message="synced from on-premises AD: sign-in is allowed again by enable_user in AD and the "
                "next directory sync",
            )
        )
    if snap.user.enabled == enabled:
        return Plan(StepResult("unchanged"))
    from msgraph.generated.models.user import User

    # A synced user is blocked in Entra too: Graph accepts accountEnabled=false for it, and the next sync
    # writes the same value from the disabled AD account; without it the leaver signs in with the synced
    # password hash until then (Microsoft's guidance disables both and then revokes sessions:
    # https://learn.microsoft.com/en-us/entra/identity/users/users-revoke-access#hybrid-environments).
    snap.user.enabled = enabled
    info = conn.user_builder(snap).to_patch_request_information(User(account_enabled=enabled))
    change = Change("accountEnabled", not enabled, enabled)
    return Plan(
        StepResult(
            "changed", changes=[change], message="synced user: blocked in Entra too" if snap.user.synced else ""
        ),
        [Write(conn.client.request(info), "set accountEnabled")],
    )


def plan_disable_cloud_account(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    return account_enabled(conn, snap, False)


def plan_enable_cloud_account(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    return account_enabled(conn, snap, True)


def _same(now: Any, wanted: Any, name: str) -> bool:
    if name == "employeeHireDate":
        a, b = parse_time(now), parse_time(wanted)
        return a is not None and a == b
    if name == "usageLocation":
        return str(now or "").upper() == str(wanted).upper()
    return bool(now == wanted)


def plan_modify_cloud_user(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    """Set the mapped properties that differ (a field Halo did not send is not in the params: unchanged)."""
    params = step.params
    wanted: dict[str, Any] = dict(params.get("properties", {}))
    if params.get("usage_location"):
        wanted["usageLocation"] = str(params["usage_location"]).upper()
    if params.get("hire_date"):
        wanted["employeeHireDate"] = params["hire_date"]
    if params.get("employee_id"):
        wanted["employeeId"] = params["employee_id"]
    if snap.user.synced:
        # AD is the source of authority of a synced user's names and HR fields (reference/graph.md): Graph
        # refuses them; modify_properties in AD changes them, and the next sync brings them here.
        return Plan(StepResult("unchanged", message="synced from on-premises AD: AD's modify_properties sets these"))
    differ = {k: v for k, v in wanted.items() if not _same(snap.user.raw.get(k), v, k)}
    if not differ:
        return Plan(StepResult("unchanged"))
    from msgraph.generated.models.user import User

    changes = [Change(k, snap.user.raw.get(k), v) for k, v in differ.items()]
    info = conn.user_builder(snap).to_patch_request_information(User())
    request = conn.client.request(info)
    request.body = differ
    request.headers = {"content-type": "application/json"}
    snap.user.raw.update(differ)
    if "usageLocation" in differ:
        snap.user.usage_location = differ["usageLocation"]
    return Plan(StepResult("changed", changes=changes), [Write(request, "set the user's properties", changes=changes)])


def plan_delete_cloud_user(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    """Soft-delete (restorable for 30 days, with mailbox, licences and groups: reference/entra.md (f))."""
    if snap.user.synced:
        raise Permanent(
            f"Graph: {snap.user.upn} is synced from on-premises AD: delete_user in AD removes it (directory sync "
            "then deletes the cloud user); Graph does not delete synced users"
        )
    info = conn.user_builder(snap).to_delete_request_information()
    change = Change("deleted", False, True)
    return Plan(
        StepResult("changed", changes=[change], message=f"soft-deleted {snap.user.upn} (restorable for 30 days)"),
        [Write(conn.client.request(info), "soft-delete the user", changes=[change])],
    )
