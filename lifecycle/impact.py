"""The impact of a mapping change: every person planned under the current and the new mapping, compared.

Pure (the planner only: no directory, no queue, no store): ``compare`` takes Halo users with what the service
knows of each (active, left or unknown) and says who the new mapping would create, move, regroup, strip of a
licence or drop from the scope, with the first examples of each. ``lifecycle impact --mapping NEW.toml`` prints
it, so a mapping change is reviewed like code before it reaches a single account.

A person the service knows as active or unknown is planned as a joiner under both mappings: a joiner's steps
are the full desired state (scope, OU, groups, licences), independent of what happened to the person before. A
person recorded as having left is replayed as they last were: their Halo user as an update of a leaver, which is
what the worker would plan on their next event or reconciliation. Under each mapping that is a leaver again (its
disabled OU is compared), a rehire (the person would be re-enabled: ``rehired``, or compared like an active
person when both mappings rehire) or out of scope.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from lifecycle.mapping.planner import PersonStatus, PlanContext, plan
from lifecycle.mapping.schema import Mapping
from lifecycle.work import LifecycleEvent, WorkItem

ImpactKind = Literal["created", "rehired", "moved", "groups_changed", "licences_lost", "left_scope"]
KINDS: tuple[ImpactKind, ...] = ("created", "rehired", "moved", "groups_changed", "licences_lost", "left_scope")
# Lifecycles after which the person has an enabled account (a joiner or a rehire of a leaver).
_ENABLED = frozenset({"joiner", "mover", "rehire"})
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DesiredState:
    """What a mapping wants for one person, read off the joiner it plans."""

    in_scope: bool
    ou: str | None = None
    groups: frozenset[str] = frozenset()
    licences: frozenset[str] = frozenset()
    note: str = ""
    lifecycle: str = "joiner"

    @property
    def enabled(self) -> bool:
        return self.in_scope and self.lifecycle in _ENABLED


def desired_state(item: WorkItem) -> DesiredState:
    """The scope, OU, groups and licences the planned ``item`` gives (a leaver's: its disabled OU)."""
    if item.lifecycle == "out_of_scope":
        return DesiredState(False, note=item.note, lifecycle=item.lifecycle)
    ou: str | None = None
    groups: set[str] = set()
    licences: set[str] = set()
    for step in item.steps:
        params = step.params
        if step.action == "create_user":
            ou = ou or params.get("ou")
        elif step.action == "move_ou":
            ou = params.get("ou") or ou
        elif step.action == "sync_groups":
            groups |= set(params.get("desired", []))
        elif step.action == "add_to_groups":
            groups |= set(params.get("groups", []))
        elif step.action == "assign_licenses":
            for sku in params.get("skus", []):
                licences.add(str(sku.get("sku") if isinstance(sku, dict) else sku))
    return DesiredState(True, ou, frozenset(groups), frozenset(licences), note=item.note, lifecycle=item.lifecycle)


@dataclass
class ImpactReport:
    """How many people each kind of change reaches, and the first examples."""

    people: int = 0
    unchanged: int = 0
    # People recorded as having left: replayed as they last were (counted in ``people`` too).
    left: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in KINDS})

    def add(self, kind: ImpactKind, example: dict[str, Any], limit: int) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < limit:
            self.examples[kind].append(example)

    def to_json(self) -> dict[str, Any]:
        return {
            "people": self.people,
            "unchanged": self.unchanged,
            "left": self.left,
            "counts": dict(self.counts),
            "examples": {k: list(v) for k, v in self.examples.items()},
        }

    def summary(self) -> str:
        lines = [
            f"{self.people} people compared ({self.left} recorded as left, replayed as they last were): "
            f"{self.unchanged} unchanged",
        ]
        words = {
            "created": "would be created (they enter the scope)",
            "rehired": "recorded as left, would be re-enabled (rehire)",
            "moved": "would move to another OU",
            "groups_changed": "would change groups",
            "licences_lost": "would lose a licence",
            "left_scope": "would leave the scope",
        }
        for kind in KINDS:
            lines.append(f"  {self.counts[kind]:>6}  {words[kind]}")
            for example in self.examples[kind]:
                lines.append(f"          user {example['user_id']} {example.get('name', '')}: {example['change']}")
        return "\n".join(lines)


def _name(user: dict[str, Any]) -> str:
    name = user.get("name")
    return str(name) if isinstance(name, str) else ""


def compare(
    people: Iterable[tuple[dict[str, Any], PersonStatus]],
    current: Mapping,
    new: Mapping,
    *,
    context: PlanContext | None = None,
    examples: int = 5,
) -> ImpactReport:
    """Plan every person under both mappings and count what the new one changes.

    Args:
        people: (Halo user, what the service knows of them) pairs; a user needs its ``id``.
        current: the mapping in force.
        new: the proposed mapping.
        context: the connections' base DNs (as the service plans with).
        examples: how many examples to keep per kind of change.
    """
    report = ImpactReport()
    for user, status in people:
        try:
            user_id = int(user["id"])
        except (KeyError, TypeError, ValueError):
            continue
        report.people += 1
        base = {"user_id": user_id, "name": _name(user)}
        if status == "left":
            report.left += 1
            # Their last state replayed: the Halo user as an update of a leaver, as the worker would plan it.
            event = LifecycleEvent(kind="updated", user_id=user_id, occurred_at=_EPOCH, source="reconcile", user=user)
            before = desired_state(plan(event, current, work_id="impact", context=context, status="left"))
            after = desired_state(plan(event, new, work_id="impact", context=context, status="left"))
            if _left_changes(report, base, before, after, examples):
                continue
        else:
            event = LifecycleEvent(kind="created", user_id=user_id, occurred_at=_EPOCH, source="reconcile", user=user)
            before = desired_state(plan(event, current, work_id="impact", context=context, status="unknown"))
            after = desired_state(plan(event, new, work_id="impact", context=context, status="unknown"))
        changed = False
        if after.in_scope and not before.in_scope:
            report.add("created", {**base, "change": f"enters the scope (was: {before.note})"}, examples)
            changed = True
        if before.in_scope and not after.in_scope:
            report.add("left_scope", {**base, "change": f"leaves the scope: {after.note}"}, examples)
            changed = True
        if before.in_scope and after.in_scope:
            if before.ou and after.ou and before.ou != after.ou:
                report.add("moved", {**base, "change": f"{before.ou} -> {after.ou}"}, examples)
                changed = True
            if before.groups != after.groups:
                joins, leaves = sorted(after.groups - before.groups), sorted(before.groups - after.groups)
                text = "; ".join([*(f"+ {g}" for g in joins), *(f"- {g}" for g in leaves)])
                report.add("groups_changed", {**base, "change": text, "join": joins, "leave": leaves}, examples)
                changed = True
        lost = sorted(before.licences - after.licences) if before.in_scope and after.in_scope else []
        if lost:
            report.add("licences_lost", {**base, "change": "loses " + ", ".join(lost), "licences": lost}, examples)
            changed = True
        if not changed:
            report.unchanged += 1
    return report


def _left_changes(
    report: ImpactReport, base: dict[str, Any], before: DesiredState, after: DesiredState, examples: int
) -> bool:
    """Count the change of a person recorded as left whose replay differs in kind between the mappings (a
    rehire under one only); False when both replays are of the same kind, compared like anyone else's."""
    if after.enabled and not before.enabled:
        was = before.note or f"{before.lifecycle} under the mapping in force"
        report.add("rehired", {**base, "change": f"would be re-enabled ({after.lifecycle}; was: {was})"}, examples)
        return True
    if before.enabled and not after.enabled:
        now = after.note or f"stays left ({after.lifecycle})"
        report.add("left_scope", {**base, "change": f"would no longer be re-enabled: {now}"}, examples)
        return True
    if before.in_scope == after.in_scope or before.enabled or after.enabled:
        return False
    # Stays disabled either way; only whether the leaver's steps apply again differs.
    if after.in_scope:
        where = f" (to {after.ou})" if after.ou else ""
        report.add("moved", {**base, "change": f"the leaver's steps would apply again{where}"}, examples)
    else:
        report.add(
            "left_scope", {**base, "change": f"the leaver's steps would no longer apply: {after.note}"}, examples
        )
    return True
