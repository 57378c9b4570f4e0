"""Operator actions shared by the CLI and the console: one implementation, audited the same way.

Each action that changes something records who did it (``requested_by = {"source": ..., "by": ...}``) in the
audit trail, as the mass-change guard's decisions do (``lifecycle.guard``): the CLI passes the OS user name,
the console the signed-in person's name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lifecycle.errors import LifecycleError
from lifecycle.queue import DeadLetteredMessage, message_for
from lifecycle.state import AuditEntry, PendingAction
from lifecycle.work import WorkItem

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime

EVENTS = ("created", "updated", "deleted")


class OperatorError(LifecycleError):
    """An operator's request that cannot be done as asked; the message says why, in one line."""


def preview_plan(runtime: Runtime, user: dict[str, Any], event: str) -> dict[str, Any]:
    """The plan for ``user`` and ``event`` exactly as ``POST /api/halo/events?dry_run=true`` answers it.

    Raises:
        OperatorError: The event is unknown or the ingress rejected the user (its detail says why).
    """
    from lifecycle.ingress import Ingress, Request

    if event not in EVENTS:
        raise OperatorError(f"event {event!r}: use created, updated or deleted")
    body = json.dumps({"event": event, "user_id": user.get("id"), "user": user}).encode()
    ingress = Ingress(runtime)
    # The operator is already authenticated; the webhook's credentials do not apply to a preview.
    ingress.settings = runtime.settings.model_copy(update={"webhook_auth": "none"})
    response = ingress.events(Request("POST", body, {"content-type": "application/json"}, {"dry_run": "true"}))
    if response.status != 200:
        raise OperatorError(str(response.json().get("detail", "the event was rejected")))
    result: dict[str, Any] = response.json()
    return result


def describe_step(step: Any) -> str:
    """One line for a planned step (the CLI and the console show steps the same way)."""
    params = step.params
    if step.action == "create_user":
        names = (params.get("names", {}).get("candidates") or [{}])[0]
        first = ", ".join(f"{k} {v}" for k, v in names.items())
        return f"create_user in {params.get('ou')} ({first or 'no name candidate'})"
    if step.action in ("modify_properties", "apply_template"):
        attributes = "; ".join(f"{k}={v}" for k, v in params.get("attributes", {}).items())
        return f"{step.action}: {attributes or '(nothing)'}"
    if step.action == "sync_groups":
        return f"sync_groups: {'; '.join(params.get('desired', [])) or '(none)'}"
    if step.action == "move_ou":
        return f"move_ou to {params.get('ou')}"
    shown = json.dumps(params, ensure_ascii=False, default=str)
    return f"{step.action} {shown}" if params else step.action


def load_user_json(text: str, *, where: str = "the user") -> dict[str, Any]:
    """A Halo user object from JSON text: the object itself, or the first of ``{"users": [...]}``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OperatorError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("users"), list) and data["users"]:
        data = data["users"][0]  # the shape GET /api/Users returns
    if not isinstance(data, dict):
        raise OperatorError(f"{where}: expected a Halo user object")
    return data


# Dead letters -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplayPreview:
    """What replaying one dead letter would do now: the steps under today's mapping, or why it cannot run."""

    message: DeadLetteredMessage
    item: WorkItem | None
    problem: str = ""


def preview_replay(runtime: Runtime, message: DeadLetteredMessage) -> ReplayPreview:
    """Re-plan a dead letter's event under today's mapping and the person's state, as the worker will."""
    from pydantic import ValidationError

    from lifecycle.mapping.planner import plan
    from lifecycle.rejected import REJECTED_ITEM_PROPERTY, reparse

    if message.properties.get(REJECTED_ITEM_PROPERTY):
        # A webhook element the ingress could not read: a replay parses it again under today's settings.
        reparsed = reparse(runtime, message.body)
        return ReplayPreview(message, None, reparsed) if isinstance(reparsed, str) else ReplayPreview(message, reparsed)
    try:
        item = WorkItem.from_bytes(message.body)
    except ValidationError as exc:
        return ReplayPreview(message, None, f"not a valid work item: {exc.errors()[0]['msg']}")
    if item.lifecycle == "staged" or item.event.is_thin:
        return ReplayPreview(message, item)
    person = runtime.store.get_person(item.event.user_id)
    status = person.status if person is not None else "unknown"
    try:
        replanned = plan(item.event, runtime.mapping, work_id=item.work_id, context=runtime.plan_context, status=status)
    except LifecycleError as exc:
        return ReplayPreview(message, item, f"today's mapping cannot plan it: {exc}")
    return ReplayPreview(message, replanned)


def dead_letter(runtime: Runtime, sequence_number: int) -> DeadLetteredMessage | None:
    """One dead letter by its sequence number (the adapter's direct look-up when it has one)."""
    queue = runtime.queue
    by_sequence = getattr(queue, "dead_letter_by_sequence", None)
    if by_sequence is not None:
        found: DeadLetteredMessage | None = by_sequence(sequence_number)
        return found
    return next((m for m in queue.dead_letters(limit=100_000) if m.sequence_number == sequence_number), None)


def replay_dead_letters(
    runtime: Runtime,
    messages: list[DeadLetteredMessage],
    *,
    by: str,
    source: str,
    progress: Callable[[int, str, str], None] | None = None,
) -> list[tuple[int, str]]:
    """Replay ``messages`` (new message ids), auditing each with who asked; returns (sequence, new id) pairs.

    ``progress(sequence_number, message_id, new_message_id)`` is called after each; a message replayed
    meanwhile by someone else is skipped (the result is shorter than ``messages``).
    """
    queue = runtime.queue
    done: list[tuple[int, str]] = []
    by_sequence = {m.sequence_number: m for m in messages}

    def replayed(sequence_number: int, message_id: str, new_id: str) -> None:
        done.append((sequence_number, new_id))
        _audit_replay(runtime, by_sequence[sequence_number], new_id, by=by, source=source)
        if progress is not None:
            progress(sequence_number, message_id, new_id)

    replay_many = getattr(queue, "replay_many", None)
    if replay_many is not None:
        # One pass over the dead letters (Service Bus: one scan of the sub-queue, not one per message).
        replay_many(list(by_sequence), progress=replayed)
    else:
        for m in messages:
            replayed(m.sequence_number, m.message_id, queue.replay(m.sequence_number))
    return done


def _audit_replay(runtime: Runtime, message: DeadLetteredMessage, new_id: str, *, by: str, source: str) -> None:
    try:
        work_id = WorkItem.from_bytes(message.body).work_id
    except ValueError:
        work_id = message.message_id
    runtime.store.append_audit(
        AuditEntry(
            at=datetime.now(UTC),
            work_id=work_id,
            user_id=int(message.session_id) if message.session_id.isdigit() else 0,
            step="-",
            action="replay",
            target="-",
            outcome="changed",
            requested_by={"source": source, "by": by, "message_id": new_id},
            message=f"dead letter {message.sequence_number} ({message.reason}) sent again as {new_id}",
        )
    )


# Staged work ------------------------------------------------------------------------------------------------
def _find_pending(runtime: Runtime, user_id: int, key: str) -> PendingAction:
    for pending in runtime.store.pending(user_id=user_id):
        if pending.key == key:
            return pending
    raise OperatorError(f"no staged work {key!r} for user {user_id} (done or cancelled meanwhile?)")


def cancel_staged(runtime: Runtime, user_id: int, key: str, *, by: str, source: str, note: str = "") -> PendingAction:
    """Drop one staged action for good (audited); the person's account stays as the leaver left it."""
    pending = _find_pending(runtime, user_id, key)
    if not runtime.store.remove_pending(user_id, key):
        raise OperatorError(f"staged work {key!r} of user {user_id} was released or cancelled meanwhile")
    _audit_staged(
        runtime,
        pending,
        "cancel_pending",
        by,
        source,
        f"cancelled staged work due {pending.due_at.isoformat()}: {pending.description}{f' ({note})' if note else ''}",
    )
    item = WorkItem.model_validate_json(pending.work_item)
    if item.request_id is not None:  # a ticket request's dated phase: its request and ticket say so
        from lifecycle.requests.service import TicketRequests

        TicketRequests(runtime).phase_cancelled(item, by=by)
    return pending


def run_staged_now(runtime: Runtime, user_id: int, key: str, *, by: str, source: str) -> PendingAction:
    """Enqueue one staged action now instead of at its due date (audited), as the timer would when due."""
    pending = _find_pending(runtime, user_id, key)
    item = WorkItem.model_validate_json(pending.work_item)
    runtime.queue.send([message_for(item)])
    runtime.store.remove_pending(user_id, key)
    _audit_staged(
        runtime,
        pending,
        "run_pending_now",
        by,
        source,
        f"released now, due {pending.due_at.isoformat()}: {pending.description}",
    )
    return pending


def _audit_staged(runtime: Runtime, pending: PendingAction, action: str, by: str, source: str, message: str) -> None:
    work_id = WorkItem.model_validate_json(pending.work_item).work_id
    runtime.store.append_audit(
        AuditEntry(
            at=datetime.now(UTC),
            work_id=work_id,
            user_id=pending.user_id,
            step=pending.key,
            action=action,
            target="-",
            outcome="changed",
            requested_by={"source": source, "by": by},
            message=message,
        )
    )
