"""The impact of a mapping change: every person planned under the current and the new mapping, compared.

Pure (the planner only: no directory, no queue, no store): ``compare`` takes Halo users with what the service
knows of each (active, left or unknown) and says who the new mapping would create, move, regroup, strip of a
licence or drop from the scope, with the first examples of each. ``lifecycle impact --mapping NEW.toml`` prints
it, so a mapping change is reviewed like code before it reaches a single account.

Each person is planned as a joiner under both mappings: a joiner's steps are the full desired state (scope, OU,
groups, licences), independent of what happened to the person before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from lifecycle.mapping.planner import PersonStatus, PlanContext, plan
from lifecycle.mapping.schema import Mapping
from lifecycle.work import LifecycleEvent, WorkItem

ImpactKind = Literal["created", "moved", "groups_changed", "licences_lost", "left_scope"]
KINDS: tuple[ImpactKind, ...] = ("created", "moved", "groups_changed", "licences_lost", "left_scope")
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DesiredState:
    """What a mapping wants for one person, read off the joiner it plans."""

    in_scope: bool
    ou: str | None = None
    groups: frozenset[str] = frozenset()
    licences: frozenset[str] = frozenset()
    note: str = ""


def desired_state(item: WorkItem) -> DesiredState:
    """The scope, OU, groups and licences the planned joiner ``item`` gives."""
    if item.lifecycle == "out_of_scope":
        return DesiredState(False, note=item.note)
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
    return DesiredState(True, ou, frozenset(groups), frozenset(licences))


@dataclass
class ImpactReport:
    """How many people each kind of change reaches, and the first examples."""

    people: int = 0
    unchanged: int = 0
    skipped_left: int = 0
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
            "skipped_left": self.skipped_left,
            "counts": dict(self.counts),
            "examples": {k: list(v) for k, v in self.examples.items()},
        }

    def summary(self) -> str:
        lines = [
            f"{self.people} people compared: {self.unchanged} unchanged, {self.skipped_left} left (not compared)",
        ]
        words = {
            "created": "would be created (they enter the scope)",
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
        if status == "left":
            report.skipped_left += 1  # a leaver stays a leaver under either mapping
            continue
        event = LifecycleEvent(kind="created", user_id=user_id, occurred_at=_EPOCH, source="reconcile", user=user)
        before = desired_state(plan(event, current, work_id="impact", context=context, status="unknown"))
        after = desired_state(plan(event, new, work_id="impact", context=context, status="unknown"))
        base = {"user_id": user_id, "name": _name(user)}
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
