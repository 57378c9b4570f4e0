"""Passwordless onboarding: a Temporary Access Pass, mailed to the manager like an initial password.

``POST /users/{id}/authentication/temporaryAccessPassMethods`` answers the pass once, in its create response
(later reads return it as null: reference/entra.md (b)). It is handed to the mailer at once and dropped: it is
never logged, stored, journaled or audited (the audit says when it is valid and to whom it went). Where it
would go is decided before it is made, so a pass nobody could receive is never created. The step runs at
most once per work item (the journal guards it, ``once_only``): an interrupted attempt is left to an operator,
since a second pass replaces the first (one per user).

The tenant's Authentication methods policy must enable Temporary Access Pass for the users it is made for;
otherwise Graph refuses with "Converged UserCredentialPolicy does not allow creating or updating this
authentication method" (MicrosoftDocs/azure-docs#111778), which the step reports with what to change.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from lifecycle.errors import Permanent, Retryable
from lifecycle.state import Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.graph import cloudusers
from lifecycle.targets.graph.state import parse_time
from lifecycle.targets.graph.transport import Request, error_for

if TYPE_CHECKING:
    from lifecycle.targets.graph.target import GraphTarget

POLICY_OFF = "does not allow creating or updating this authentication method"


def valid_from(params: dict[str, Any], now: datetime) -> datetime | None:
    """When the pass becomes valid (UTC), or None for at once (no start, or a start already past)."""
    text = params.get("start")
    if not text:
        return None
    parsed = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    if len(str(text).strip()) == 10:  # a date: at start_time in the person's zone
        hour, minute = (int(p) for p in str(params.get("start_time", "08:00")).split(":"))
        zone = str(params.get("time_zone", "UTC"))
        parsed = parsed.replace(hour=hour, minute=minute, tzinfo=UTC if zone.upper() == "UTC" else ZoneInfo(zone))
    elif parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    start = parsed.astimezone(UTC)
    return start if start > now else None


def create(target: GraphTarget, context: StepContext) -> StepResult:
    params = context.step.params
    snapshot = target.checked_snapshot(context)
    if isinstance(snapshot, StepResult):
        return snapshot
    user = snapshot.user
    now = datetime.now(UTC)
    start = valid_from(params, now)
    lifetime = int(params.get("lifetime_minutes", 480))
    begins = start or now
    window = f"{begins:%Y-%m-%d %H:%M} to {begins + timedelta(minutes=lifetime):%Y-%m-%d %H:%M} UTC"
    if target.settings.password_delivery != "graph_mail":  # noqa: S105 - a channel name
        raise Permanent(
            "Graph: a Temporary Access Pass is only made when it can be delivered: set "
            "LIFECYCLE_PASSWORD_DELIVERY=graph_mail (and LIFECYCLE_PASSWORD_MAIL_SENDER)"
        )
    from lifecycle.targets.graph.mail import PasswordMailer

    mailer = PasswordMailer(target.settings)  # refuses a missing sender before any pass exists
    facts = cloudusers.delivery_facts(target, user.id)
    recipient = facts.get("manager_mail") or target.settings.password_mail_fallback
    if not recipient:
        raise Permanent(
            f"Graph: no Temporary Access Pass made for {user.upn}: it has no manager with a mail address and "
            "LIFECYCLE_PASSWORD_MAIL_FALLBACK is empty (set_cloud_manager, or a fallback address)"
        )
    path = f"/users/{quote(user.id, safe='')}/authentication/temporaryAccessPassMethods"
    current = target.client.send(Request("GET", path))
    if not current.ok:
        raise error_for(current, "read the user's Temporary Access Pass")
    for method in current.body.get("value", []):
        method_start = parse_time(method.get("startDateTime")) or now
        method_end = method_start + timedelta(minutes=int(method.get("lifetimeInMinutes") or 0))
        if method_end > now:
            # An ensure: a later event of the same person (a new joiner delivery) does not make a second pass.
            return StepResult(
                "unchanged", message=f"a Temporary Access Pass valid until {method_end:%Y-%m-%d %H:%M} UTC exists"
            )
    change = Change("temporaryAccessPassMethods", None, f"a pass valid {window}, mailed to {recipient}")
    if context.dry_run:
        return StepResult("dry_run", changes=[change], message="would make a Temporary Access Pass")
    body: dict[str, Any] = {"lifetimeInMinutes": lifetime, "isUsableOnce": bool(params.get("usable_once"))}
    if start is not None:
        body["startDateTime"] = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    # Never resent blindly: a second pass replaces the first, and the first may already be on its way.
    answer = target.client.send(Request("POST", path, {"content-type": "application/json"}, body), retry=False)
    if not answer.ok:
        if POLICY_OFF in answer.message:
            raise Permanent(
                f"Graph: Temporary Access Pass is not enabled for {user.upn}: enable it in Entra (Protection > "
                "Authentication methods > Temporary Access Pass) for a group holding the new joiners, with a "
                f"lifetime that allows {lifetime} minutes; then replay ({answer.status} {answer.code})"
            )
        if answer.status == 429 and answer.retry_after is not None:
            raise Retryable(
                f"Graph: Temporary Access Pass throttled ({answer.message})", retry_after=answer.retry_after
            )
        raise error_for(answer, "make the Temporary Access Pass")
    secret = str((answer.body or {}).pop("temporaryAccessPass", "") or "")
    if not secret:
        raise Permanent(f"Graph: the Temporary Access Pass of {user.upn} was made but Graph returned no pass")
    delivered = mailer.deliver(
        user.upn,
        facts,
        secret,
        kind="tap",
        start=f"{begins:%Y-%m-%d %H:%M}",
        end=f"{begins + timedelta(minutes=lifetime):%Y-%m-%d %H:%M}",
    )
    del secret, answer
    return StepResult("changed", changes=[change], message=delivered)
