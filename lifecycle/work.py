"""The work item: the queue message contract between the ingress and the worker (versioned).

A work item carries the normalised event and the ordered steps the planner resolved for it. Its ``work_id``
is deterministic, so a re-sent delivery produces the same id and Service Bus duplicate detection (or the
embedded queue's) drops it; the worker's journal is keyed by ``(work_id, step.key)``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION: Literal[1] = 1

EventKind = Literal["created", "updated", "deleted"]
# "out_of_scope": the mapping's [scope] excludes the person; nothing runs and the worker audits why.
# "ticket": read a Halo ticket and advance its request (lifecycle.requests); its session is -ticket id.
Lifecycle = Literal["joiner", "mover", "leaver", "rehire", "deleted", "fetch", "staged", "out_of_scope", "ticket"]
EventSource = Literal["webhook", "runbook", "reconcile", "poll", "replay", "cli", "schedule", "ticket"]

# The vocabulary is in lifecycle.actions; a step's action is validated against it.
Action = str


class LifecycleEvent(BaseModel):
    """A Halo user event, normalised from a webhook delivery, a runbook body or reconciliation."""

    model_config = ConfigDict(frozen=True)

    kind: EventKind
    user_id: int
    occurred_at: datetime
    source: EventSource
    delivery_id: str | None = None
    halo_event: str | None = None
    agent_id: int | None = None
    # The user's fields exactly as received; None for a thin payload (ids only), fetched by the worker.
    user: dict[str, Any] | None = None

    @property
    def is_thin(self) -> bool:
        return self.user is None


class Step(BaseModel):
    """One resolved action on one target. ``key`` is unique within the work item (journal key)."""

    model_config = ConfigDict(frozen=True)

    key: str
    action: Action
    # Which system runs it ("ad", "graph", ...) and which of its named connections serves this user.
    system: str = "ad"
    target: str = Field(description="the named connection that serves this user, e.g. 'default'")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("action")
    @classmethod
    def _known_action(cls, value: str) -> str:
        from lifecycle.actions import action_info

        action_info(value)
        return value


class WorkItem(BaseModel):
    """The queue message body."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    work_id: str
    lifecycle: Lifecycle
    event: LifecycleEvent
    steps: list[Step]
    # What the planner assumed about the person; the worker re-plans when the stored state differs.
    planned_for_status: Literal["active", "left", "unknown"] = "unknown"
    # The AD attribute holding the Halo user id (the account is found by it, never by name).
    anchor: str = "employeeID"
    # The anchor value is this prefix and the Halo id ("halo:26"); empty: the bare id.
    anchor_prefix: str = ""
    mapping_digest: str = ""
    # Why the planner chose this lifecycle when the event alone does not say (the scope condition that failed).
    note: str = ""
    # Work of a ticket request (lifecycle.requests): run exactly as approved (never re-planned), and its
    # outcome goes back to the ticket. A "ticket" item carries the trigger: {"ticket_id": N, "fields": {...}}.
    request_id: str | None = None
    phase: str | None = None
    ticket: dict[str, Any] | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, body: bytes) -> WorkItem:
        return cls.model_validate_json(body)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal payloads give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def derive_work_id(
    *,
    user_id: int,
    kind: EventKind,
    user: dict[str, Any] | None,
    delivery_id: str | None,
    timestamp: datetime | None,
) -> str:
    """The deterministic id of the work for one event.

    A Halo delivery id identifies the event (a re-sent delivery keeps it), together with the event kind: the
    same delivery posted again under another kind is other work, never a duplicate hiding it nor one it hides.
    Without a delivery id (runbooks), the id is a hash of the user id, the event kind, the sender's timestamp
    if any and the canonical payload: posting the same body twice is a duplicate, a changed body is new work.
    """
    if delivery_id:
        return f"halo-{delivery_id}-{kind}"
    material = canonical_json(
        {
            "user_id": user_id,
            "kind": kind,
            "user": user,
            "at": timestamp.isoformat() if timestamp else None,
        }
    )
    return "h-" + hashlib.sha256(material.encode("utf-8")).hexdigest()[:40]
