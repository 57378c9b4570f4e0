"""The work item: the queue message contract between the ingress and the worker (versioned).

A work item carries the normalised event and the ordered steps the planner resolved for it. Its ``work_id``
is deterministic, so a re-sent delivery produces the same id and Service Bus duplicate detection (or the
embedded queue's) drops it; the worker's journal is keyed by ``(work_id, step.key)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, TypeVar

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
        if value not in _KNOWN_ACTIONS:  # every planned step is validated: look each name up once
            from lifecycle.actions import action_info

            action_info(value)
            _KNOWN_ACTIONS.add(value)
        return value

    @classmethod
    def planned(cls, *, key: str, action: str, target: str, params: dict[str, Any], system: str | None = None) -> Step:
        """The step ``Step(...)`` would build, without validating it again: the planner's form (every webhook
        plans its steps), for values it built itself from a validated mapping. An action not yet seen is
        validated in full."""
        if action not in _KNOWN_ACTIONS:
            given = {} if system is None else {"system": system}
            return cls(key=key, action=action, target=target, params=params, **given)
        values: dict[str, Any] = {"key": key, "action": action, "system": "ad" if system is None else system}
        values["target"] = target
        values["params"] = params
        return _unvalidated(cls, _STEP_SET if system is None else _STEP_SET_SYSTEM, values)

    @classmethod
    def planner(cls, *, key: str, action: str) -> Callable[[str, dict[str, Any]], Step]:
        """``Step.planned`` for one key and action of the default system, as a function of (target, params):
        the key and action are validated once, here, so each step of a compiled mapping is built for the price
        of its values."""
        cls(key=key, action=action, target="", params={})
        set_fields = _STEP_SET

        def planned(target: str, params: dict[str, Any]) -> Step:
            # _unvalidated, inline: four steps of every joiner come through here.
            instance = _new(cls)
            _SET_DICT(instance, {"key": key, "action": action, "system": "ad", "target": target, "params": params})
            _SET_FIELDS_SET(instance, set(set_fields))
            _SET_EXTRA(instance, None)
            _SET_PRIVATE(instance, None)
            return instance

        return planned


# Action names already found in the registry (which only grows); checked before importing it.
_KNOWN_ACTIONS: set[str] = set()
_STEP_SET = frozenset({"key", "action", "target", "params"})
_STEP_SET_SYSTEM = _STEP_SET | {"system"}
_M = TypeVar("_M", bound=BaseModel)


# BaseModel's slots, set through their descriptors (each half the price of object.__setattr__ by name).
_SET_DICT = BaseModel.__dict__["__dict__"].__set__
_SET_FIELDS_SET = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE = BaseModel.__dict__["__pydantic_private__"].__set__
_new = object.__new__


def _unvalidated(cls: type[_M], fields_set: frozenset[str], values: dict[str, Any]) -> _M:
    """An instance of ``cls`` holding ``values`` (every field, in declaration order) as validation would have
    left them, without validating: what ``BaseModel.model_construct`` does, without its per-field loop. Only
    for values that are already valid (tests/unit/test_planner.py compares with the validated form), and for
    models without a ``__new__`` of their own or private attributes (as model_construct leaves them)."""
    instance = _new(cls)
    _SET_DICT(instance, values)
    _SET_FIELDS_SET(instance, set(fields_set))
    _SET_EXTRA(instance, None)
    _SET_PRIVATE(instance, None)
    return instance


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
        # The bytes ``model_dump_json()`` encodes, without its decode to str and our encode back.
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def planned(
        cls,
        *,
        work_id: str,
        lifecycle: Lifecycle,
        event: LifecycleEvent,
        steps: list[Step],
        planned_for_status: Literal["active", "left", "unknown"],
        anchor: str,
        anchor_prefix: str,
        mapping_digest: str,
        note: str,
    ) -> WorkItem:
        """The work item ``WorkItem(...)`` would build from these (already valid) values, without validating
        them again: the planner's form, on the path of every webhook."""
        values = {
            "schema_version": SCHEMA_VERSION,
            "work_id": work_id,
            "lifecycle": lifecycle,
            "event": event,
            "steps": steps,
            "planned_for_status": planned_for_status,
            "anchor": anchor,
            "anchor_prefix": anchor_prefix,
            "mapping_digest": mapping_digest,
            "note": note,
            "request_id": None,
            "phase": None,
            "ticket": None,
        }
        return _unvalidated(cls, _ITEM_SET, values)

    @classmethod
    def from_bytes(cls, body: bytes) -> WorkItem:
        return cls.model_validate_json(body)


_ITEM_SET = frozenset(
    {"work_id", "lifecycle", "event", "steps", "planned_for_status", "anchor", "anchor_prefix", "mapping_digest"}
    | {"note"}
)


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
