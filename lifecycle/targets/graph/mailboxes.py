"""Exchange Online mailboxes (through the licence that carries them) and automatic replies.

Graph cannot create a mailbox: Exchange Online makes one, asynchronously, when a licence with an Exchange plan
is assigned (reference/graph.md). ``create_mailbox`` assigns it and reschedules itself until the mailbox
answers; disabling and deleting change the Exchange plan or the licence.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lifecycle.errors import Permanent, Retryable
from lifecycle.state import Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.graph.licences import (
    assign,
    disable_plans,
    licence_text,
    plan_set,
    plans_in,
    resolve,
    usage_location,
)
from lifecycle.targets.graph.state import Connection, Plan, Snapshot, Write
from lifecycle.targets.graph_actions import EXCHANGE_PLANS

if TYPE_CHECKING:
    from lifecycle.work import Step


def plan_disable_mailbox(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    plan = disable_plans(conn, snap, step.params["exchange_plans"], "disable the Exchange plan")
    if plan.writes:
        # Not a reversible "disable": without the Exchange plan the mailbox is disconnected and Exchange
        # Online deletes it after its 30-day grace period (reference/graph.md); say so in the audit.
        warning = (
            "the mailbox is disconnected now and deleted by Exchange Online 30 days later unless the Exchange "
            "plan is enabled again (create_mailbox); to keep mail, convert it to a shared mailbox instead"
        )
        plan.result.message = "; ".join(m for m in (plan.result.message, warning) if m)
    return plan


def plan_delete_mailbox(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    if step.params.get("remove") == "plan":
        return disable_plans(conn, snap, step.params["exchange_plans"], "remove the Exchange plan")
    direct, grouped = plans_in(conn, snap, plan_set(conn, step.params["exchange_plans"]))
    notes = [f"SKU {sku} is assigned by a group: remove the user from the group instead" for sku in grouped]
    if not direct:
        return Plan(StepResult("unchanged", message="; ".join(notes)))
    changes = [Change(f"licence {sku}", licence_text(snap.user.direct[sku]), None) for sku in direct]
    write = assign(conn, snap, {}, direct, "remove the Exchange licence")
    return Plan(StepResult("changed", changes=changes, message="; ".join(notes)), [write])


def plan_create_mailbox(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    params = step.params
    exchange_ids = plan_set(conn, params["exchange_plans"])
    changes: list[Change] = []
    writes: list[Write] = []
    if params.get("sku"):
        sku_ids, plan_ids = resolve(conn, [params["sku"]], params.get("disabled_plans", []))
        sku = sku_ids[params["sku"]]
        disabled = {plan_ids[p] for p in params.get("disabled_plans", [])} - exchange_ids
        current = snap.user.direct.get(sku)
        if current is None or current & exchange_ids or (current != disabled):
            changes.append(Change(f"licence {params['sku']}", licence_text(current), licence_text(disabled)))
            writes = usage_location(conn, snap, params.get("usage_location"), changes)
            writes.append(assign(conn, snap, {sku: disabled}, [], "assign the Exchange licence"))
    else:
        direct, grouped = plans_in(conn, snap, exchange_ids)
        if not direct and not grouped:
            raise Permanent(f"Graph: {snap.user.upn} has no licence with an Exchange plan: give create_mailbox a sku")
        enabled = grouped or [sku for sku in direct if not snap.user.direct[sku] & exchange_ids]
        if not enabled:
            # Every licence with Exchange has the plan disabled: enable it in them.
            add = {sku: snap.user.direct[sku] - exchange_ids for sku in direct}
            for sku, plans in add.items():
                changes.append(Change(f"licence {sku}", licence_text(snap.user.direct[sku]), licence_text(plans)))
            writes.append(assign(conn, snap, add, [], "enable the Exchange plan"))
    if snap.mailbox is not None and not writes:
        return Plan(StepResult("unchanged", message="the mailbox answers"))
    assigned = snap.user.plan_assigned_at(exchange_ids)
    waited = datetime.now(UTC) - assigned if assigned is not None and not writes else timedelta(0)
    limit = timedelta(minutes=int(params.get("wait_minutes", 24 * 60)))
    if waited > limit:
        code = snap.mailbox_error.code if snap.mailbox_error is not None else "no answer"
        raise Permanent(
            f"Graph: the Exchange Online mailbox of {snap.user.upn} has not answered "
            f"{waited.total_seconds() / 60:.0f} min after the Exchange plan was assigned ({code}); "
            "check it in the Exchange admin center"
        )
    pending = Retryable(
        f"Graph: the mailbox of {snap.user.upn} is being provisioned; looking again in "
        f"{conn.settings.graph_poll_seconds:.0f} s",
        retry_after=conn.settings.graph_poll_seconds,
    )
    return Plan(StepResult("changed", changes=changes, message="licence with Exchange assigned"), writes, pending)


def mailbox_or_fail(conn: Connection, snap: Snapshot) -> dict[str, Any]:
    if snap.mailbox is not None:
        return snap.mailbox
    error = snap.mailbox_error
    code = f"{error.status} {error.code}" if error is not None else "no answer"
    assigned = snap.user.plan_assigned_at(plan_set(conn, EXCHANGE_PLANS))
    if assigned is not None and datetime.now(UTC) - assigned < timedelta(seconds=conn.settings.graph_sync_wait_seconds):
        raise Retryable(
            f"Graph: the mailbox of {snap.user.upn} does not answer yet ({code}); it is being provisioned",
            retry_after=conn.settings.graph_poll_seconds,
        )
    raise Permanent(
        f"Graph: {snap.user.upn} has no Exchange Online mailbox that answers ({code}); an on-premises mailbox "
        "needs the custom-script action"
    )


def plan_set_auto_reply(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    params = step.params
    current = dict(mailbox_or_fail(conn, snap).get("automaticRepliesSetting") or {})
    internal = str(params["internal_message"])
    external = str(params.get("external_message") or internal)
    wanted: dict[str, Any] = {
        "status": "scheduled" if params.get("start") else "alwaysEnabled",
        "externalAudience": params.get("external_audience", "all"),
        "internalReplyMessage": internal,
        "externalReplyMessage": external,
    }
    message = ""
    if params.get("start"):
        # Sent and compared in UTC: Exchange answers the schedule in UTC whatever zone it was written in, so
        # a schedule written in another zone would never compare equal. The step's zone (for times without
        # an offset) is kept in the report.
        zone = str(params.get("time_zone", "UTC"))
        start, end = utc_instant(params["start"], zone), utc_instant(params["end"], zone)
        if end <= datetime.now(UTC):
            raise Permanent(
                f"Graph: the automatic reply of {snap.user.upn} would end at {end.isoformat()} ({zone} "
                f"{params['end']}), which has passed: nobody would get it; fix the dates (cf.leave_end?)"
            )
        wanted["scheduledStartDateTime"] = {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}
        wanted["scheduledEndDateTime"] = {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}
        message = f"scheduled {params['start']} to {params['end']} ({zone}), sent in UTC"
    changes = reply_changes(current, wanted)
    if not changes:
        return Plan(StepResult("unchanged", message=message))
    plan = patch_reply(conn, snap, wanted, changes)
    plan.result.message = message
    return plan


def plan_disable_auto_reply(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    if snap.mailbox is None:
        return Plan(StepResult("unchanged", message="no mailbox answers: no automatic reply to turn off"))
    current = dict(snap.mailbox.get("automaticRepliesSetting") or {})
    if str(current.get("status", "disabled")).lower() == "disabled":
        return Plan(StepResult("unchanged"))
    return patch_reply(
        conn, snap, {"status": "disabled"}, [Change("automaticReplies.status", current.get("status"), "disabled")]
    )


def patch_reply(conn: Connection, snap: Snapshot, wanted: dict[str, Any], changes: list[Change]) -> Plan:
    from msgraph.generated.models.automatic_replies_setting import AutomaticRepliesSetting
    from msgraph.generated.models.automatic_replies_status import AutomaticRepliesStatus
    from msgraph.generated.models.date_time_time_zone import DateTimeTimeZone
    from msgraph.generated.models.external_audience_scope import ExternalAudienceScope
    from msgraph.generated.models.mailbox_settings import MailboxSettings

    setting = AutomaticRepliesSetting(status=AutomaticRepliesStatus(wanted["status"]))
    if "internalReplyMessage" in wanted:
        setting.internal_reply_message = wanted["internalReplyMessage"]
        setting.external_reply_message = wanted["externalReplyMessage"]
        setting.external_audience = ExternalAudienceScope(wanted["externalAudience"])
    if "scheduledStartDateTime" in wanted:
        start, end = wanted["scheduledStartDateTime"], wanted["scheduledEndDateTime"]
        setting.scheduled_start_date_time = DateTimeTimeZone(date_time=start["dateTime"], time_zone=start["timeZone"])
        setting.scheduled_end_date_time = DateTimeTimeZone(date_time=end["dateTime"], time_zone=end["timeZone"])
    info = conn.user_builder(snap).mailbox_settings.to_patch_request_information(
        MailboxSettings(automatic_replies_setting=setting)
    )
    if snap.mailbox is not None:
        snap.mailbox["automaticRepliesSetting"] = {**(snap.mailbox.get("automaticRepliesSetting") or {}), **wanted}
    return Plan(StepResult("changed", changes=changes), [Write(conn.client.request(info), "set the automatic reply")])


def utc_instant(value: Any, zone: str) -> datetime:
    """A schedule time as a UTC instant: an offset in the value wins, else it is a wall time in ``zone``."""
    text = str(value or "").replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise Permanent(f"Graph: {value!r} is not a date and time") from None
    if parsed.tzinfo is None:
        try:
            parsed = parsed.replace(tzinfo=UTC if zone.upper() == "UTC" else ZoneInfo(zone))
        except (ZoneInfoNotFoundError, ValueError):
            raise Permanent(f"Graph: {zone!r} is not a time zone name (IANA, e.g. Europe/London)") from None
    return parsed.astimezone(UTC)


def text_of(value: Any) -> str:
    """A reply message as text: Exchange stores it as HTML, so compare what a reader sees.

    Tags are cut in one pass with ``str.find`` (linear in the text): a regular expression such as
    ``<[^>]+>`` rescans the rest of the text from every ``<`` that has no ``>``, which is quadratic in
    Halo text full of ``<``.
    """
    source = str(value or "")
    parts: list[str] = []
    position = 0
    while True:
        opening = source.find("<", position)
        if opening < 0:
            parts.append(source[position:])
            break
        closing = source.find(">", opening + 1)
        if closing < 0:
            parts.append(source[position:])  # an unclosed "<" is text, as a reader sees it
            break
        if closing == opening + 1:
            parts.append(source[position : closing + 1])  # "<>" is not a tag
        else:
            parts.append(source[position:opening] + " ")
        position = closing + 1
    return " ".join(html.unescape("".join(parts)).split())


def reply_changes(current: dict[str, Any], wanted: dict[str, Any]) -> list[Change]:
    changes: list[Change] = []
    for key, value in wanted.items():
        before = current.get(key)
        if key.endswith("Message"):
            same = text_of(before) == text_of(value)
        elif key.startswith("scheduled"):
            same = isinstance(before, dict) and _answered_instant(before) == utc_instant(value["dateTime"], "UTC")
        else:
            same = str(before or "").lower() == str(value).lower()
        if not same:
            shown_before = text_of(before) if key.endswith("Message") else before
            changes.append(Change(f"automaticReplies.{key}", shown_before, value))
    return changes


def _answered_instant(value: dict[str, Any]) -> datetime | None:
    """A dateTimeTimeZone as Graph answered it (UTC in practice; another zone is honoured all the same)."""
    try:
        return utc_instant(value.get("dateTime"), str(value.get("timeZone") or "UTC"))
    except Permanent:
        return None
