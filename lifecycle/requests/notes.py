"""The text of the notes posted to a ticket: the plan to approve, a rejection, each phase's result.

Pure: plain text and escaped HTML of the same content. A note never carries a password or a secret: the
plan says how a password is made and where it goes, the result says where it went. Each note ends with a
reference line (``Ref: halo-lifecycle <request> <note key>``) by which a note whose posting was interrupted
is found again on the ticket, so it is never posted twice.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lifecycle.requests.planning import Phase
from lifecycle.state import AuditEntry
from lifecycle.work import Step

_SECRET_WORDS = ("password", "secret", "token", "unicodepwd")
_MAX_VALUE = 200


@dataclass(frozen=True)
class Note:
    key: str
    text: str
    html: str


def marker(request_id: str, key: str) -> str:
    return f"Ref: halo-lifecycle {request_id} {key}"


def _note(request_id: str, key: str, title: str, blocks: Sequence[tuple[str, Sequence[str]]]) -> Note:
    """A note from a title and (heading, lines) blocks, as text and as HTML."""
    ref = marker(request_id, key)
    text_parts = [title]
    html_parts = [f"<p><strong>{html.escape(title)}</strong></p>"]
    for heading, lines in blocks:
        text_parts.append("")
        if heading:
            text_parts.append(heading)
            html_parts.append(f"<p>{html.escape(heading)}</p>")
        text_parts += [f"- {line}" for line in lines]
        if lines:
            html_parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
    text_parts += ["", ref]
    html_parts.append(f"<p><small>{html.escape(ref)}</small></p>")
    return Note(key, "\n".join(text_parts), "".join(html_parts))


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _is_secret(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_WORDS)


def describe_step(step: Step, password_channel: str) -> str:
    """One step as a line of the plan: the system, the action and what it will set."""
    params = step.params
    where = f"{step.system.upper() if step.system == 'ad' else step.system} {step.target}"
    if step.action == "create_user":
        names = params.get("names", {}).get("candidates", [])
        first = names[0] if names else {}
        others = ", ".join(c.get("samaccountname", "") for c in names[1:])
        attributes = "; ".join(f"{k}={_short(v)}" for k, v in params.get("attributes", {}).items())
        password = params.get("password", {})
        parts = [
            f"{where}: create the account {first.get('samaccountname', '?')} "
            f"({first.get('userprincipalname', '')}{', mail ' + first['mail'] if first.get('mail') else ''})"
            + (" disabled" if params.get("enabled") is False else ""),
            f"in {params.get('ou')}",
            f"if taken: {others or 'numbered'} then numbered names",
            f"attributes: {attributes or 'none'}",
            f"password: generated ({password.get('length', 20)} characters"
            + (", must be changed at first sign-in" if password.get("must_change", True) else "")
            + f"), {password_channel}",
        ]
        return "; ".join(parts)
    if step.action in ("modify_properties", "apply_template"):
        values = "; ".join(f"{k}={_short(v)}" for k, v in params.get("attributes", {}).items())
        cleared = ", ".join(params.get("clear", []))
        return f"{where}: set {values or 'nothing'}" + (f"; clear {cleared}" if cleared else "")
    if step.action == "move_ou":
        return f"{where}: move the account to {params.get('ou')}"
    if step.action == "sync_groups":
        desired = ", ".join(params.get("desired", [])) or "no managed group"
        return f"{where}: member of {desired} (other managed groups left)"
    if step.action in ("add_to_groups", "remove_from_groups"):
        groups = params.get("groups")
        listed = groups if isinstance(groups, str) else ", ".join(groups or [])
        return f"{where}: {'join' if step.action == 'add_to_groups' else 'leave'} {listed}"
    if step.action == "reset_password":
        return f"{where}: set a new generated password, {password_channel}"
    shown = "; ".join(f"{k}={_short(v)}" for k, v in params.items() if not _is_secret(k))
    return f"{where}: {step.action.replace('_', ' ')}" + (f" ({shown})" if shown else "")


def plan_note(
    request_id: str,
    *,
    ticket_id: int,
    type_name: str,
    kind: str,
    person: str,
    phases: Iterable[Phase],
    digest: str,
    approval: bool,
    password_channel: str,
    replaces: str = "",
    remarks: Sequence[str] = (),
) -> Note:
    """The exact plan, posted for approval (or, without approval, as a record of what runs).

    ``remarks`` are said before the plan (e.g. that the ticket's user was kept); they are not part of it.
    """
    title = f"Account plan {digest} for this {type_name} request ({kind}): {person}"
    blocks: list[tuple[str, Sequence[str]]] = [("", list(remarks))] if remarks else []
    if replaces:
        again = (
            " An approval given before this note does not count for it: restart the ticket's approval process "
            "(or approve again) after this note."
            if approval
            else ""
        )
        blocks.append(("", [f"The ticket changed after plan {replaces} was posted: this plan replaces it.{again}"]))
    for number, phase in enumerate(phases, 1):
        lines = [describe_step(s, password_channel) for s in phase.item.steps] or ["nothing to do"]
        blocks.append((f"{number}. {phase.label}:", lines))
    if approval:
        blocks.append(
            (
                "",
                [
                    "Nothing is done before this plan is approved in Halo. Approval runs exactly this plan; if the "
                    "ticket changes first, a new plan is posted and needs its own approval."
                ],
            )
        )
    return _note(request_id, f"plan:{digest}", title, blocks)


def rejected_note(request_id: str, *, digest: str, by: str) -> Note:
    return _note(
        request_id,
        f"rejected:{digest}",
        f"Plan {digest} was rejected ({by}): nothing was done",
        [("", ["No account was created or changed. Raise a new request if it is still needed."])],
    )


def subject_note(request_id: str, *, key: str, problem: str, fill: str) -> Note:
    """The ticket does not say whom a leaver or mover request concerns: what to fill in."""
    return _note(
        request_id,
        key,
        "Nothing was planned: this request does not say whom it concerns",
        [("", [problem, f"To go on: {fill}, then save the ticket (the service reads it again)."])],
    )


def approved_note(request_id: str, *, digest: str, by: str, phases: Iterable[Phase]) -> Note:
    lines = [f"{p.label}" for p in phases]
    return _note(request_id, f"approved:{digest}", f"Plan {digest} approved ({by}): scheduled", [("", lines)])


def password_whereabouts(entries: Iterable[AuditEntry], channel: str) -> str | None:
    """Where a password set by these steps went (never the password), or None when none was set."""
    for entry in entries:
        if entry.outcome == "changed" and any(c.attribute.lower() == "unicodepwd" for c in entry.changes):
            return f"A password was generated and set: {channel}. It is never shown here."
    return None


def result_note(
    request_id: str,
    *,
    key: str,
    phase: Phase,
    outcome: str,
    reason: str,
    entries: Sequence[AuditEntry],
    channel: str,
    replay_hint: str,
) -> Note:
    """A phase's result: each step and its outcome, what failed and what to do, where the password went."""
    titles = {
        "completed": f"Done: {phase.label}",
        "failed": f"Failed: {phase.label}",
        "held": f"Held for an operator: {phase.label}",
        "skipped": f"Not run: {phase.label}",
        "cancelled": f"Cancelled: {phase.label}",
    }
    steps: list[str] = []
    for entry in entries:
        if entry.step == "-":
            continue
        change = "; ".join(f"{c.attribute}: {_short(c.after)}" for c in entry.changes if not _is_secret(c.attribute))
        line = f"{entry.step} {entry.action} on {entry.target}: {entry.outcome}"
        if entry.dn:
            line += f" ({entry.dn})"
        if change:
            line += f" - {change}"
        if entry.message:
            line += f" - {entry.message}"
        steps.append(line)
    blocks: list[tuple[str, Sequence[str]]] = [("Steps:", steps or ["no step ran"])]
    if outcome == "failed":
        blocks.append(("What failed and what to do:", [reason, replay_hint]))
    elif outcome == "held":
        blocks.append(
            ("Why:", [reason, "An operator releases or rejects it (lifecycle held list); the result follows here."])
        )
    elif outcome in ("skipped", "cancelled"):
        blocks.append(("Why:", [reason]))
    where = password_whereabouts(entries, channel)
    if where:
        blocks.append(("Password:", [where]))
    return _note(request_id, key, titles.get(outcome, f"{outcome}: {phase.label}"), blocks)


def password_channel(delivery: str, fallback: str, sender: str) -> str:
    """Where generated passwords go, in words (``LIFECYCLE_PASSWORD_DELIVERY``)."""
    if delivery == "graph_mail":
        to = "the manager" + (f" (else {fallback})" if fallback else "")
        return f"mailed to {to}" + (f" from {sender}" if sender else "")
    return "not kept or sent anywhere: reset it for the person before they first sign in"


def summary(phases: Mapping[str, Mapping[str, Any]]) -> str:
    return ", ".join(f"{name} {p.get('outcome')}" for name, p in phases.items())
