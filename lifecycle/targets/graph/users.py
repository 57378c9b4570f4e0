"""The cloud user's account: sign-in (``accountEnabled``) and sign-in sessions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from lifecycle.state import Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.graph.state import Connection, Plan, Snapshot, Write

if TYPE_CHECKING:
    from lifecycle.work import Step


def plan_revoke_sessions(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
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
    info = conn.user_builder(snap).revoke_sign_in_sessions.to_post_request_information()
    change = Change("signInSessionsValidFromDateTime", valid_from.isoformat() if valid_from else None, "(now)")
    return Plan(StepResult("changed", changes=[change]), [Write(conn.client.request(info), "revoke sign-in sessions")])


def account_enabled(conn: Connection, snap: Snapshot, enabled: bool) -> Plan:
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
    info = conn.user_builder(snap).to_patch_request_information(User(account_enabled=enabled))
    change = Change("accountEnabled", not enabled, enabled)
    return Plan(StepResult("changed", changes=[change]), [Write(conn.client.request(info), "set accountEnabled")])


def plan_disable_cloud_account(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    return account_enabled(conn, snap, False)


def plan_enable_cloud_account(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    return account_enabled(conn, snap, True)
