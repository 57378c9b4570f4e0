"""Which connection serves a person, kept once chosen: one client's person never reaches another client's tenant.

A *connection* is one name in the mapping's ``routing`` (``routing.rules[].connection``, ``routing.default``)
that stands for one customer of an MSP: its AD domain (``LIFECYCLE_AD_CONNECTIONS``, when it has one) and its
Microsoft 365 tenant (``LIFECYCLE_GRAPH_CONNECTIONS``, when it has one); ``default`` is the ``LIFECYCLE_AD_*`` and
``LIFECYCLE_GRAPH_*`` one. The planner puts that name on every step (``Step.target``), so each target only ever
talks to the directory of that connection; a name with no Graph connection is refused, never served by the default
tenant (``lifecycle.targets.graph.target``).

What guarantees that a mapping rule cannot send one client's person to another client's tenant:

1. **The first connection sticks.** Before the first step of a person's first work item runs, the worker records the
   connection and its tenant id (a store marker ``connection:<user id>``). A later item whose steps route the
   person elsewhere (a changed Halo client, a rule edited, a connection re-pointed at another tenant id) is *held*
   before any step runs, with the reason naming both connections and tenants: nothing is created, changed or
   disabled in either tenant until an operator approves the move (``lifecycle held approve ID``: the person is
   then bound to the new connection) or rejects it (dropped, audited).
2. **Tokens are per tenant.** Each Graph connection has its own client and token (issued by that tenant's token
   endpoint), so a request made for one tenant can only ever reach that tenant's directory.

3. **An event that cannot route follows the tie.** An event that carries none of the fields the routing rules
   read (a thin deleted event: Halo removed the user before it told us, so there is only the id) is planned for
   the connection the person is tied to, never for ``routing.default`` (:func:`tied_mapping`): it says nothing
   about a move, so it must neither move the person nor wait for an operator. An event that carries them and
   routes elsewhere is held as in 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from datetime import datetime

    from lifecycle.mapping.planner import PlanContext
    from lifecycle.mapping.schema import Mapping
    from lifecycle.settings import Settings
    from lifecycle.state import Outcome, StateStore
    from lifecycle.work import LifecycleEvent, WorkItem

MARKER_PREFIX = "connection:"
# How a held move's reason begins (tells it from a mass-change hold of the same item).
MOVED = "routing changed:"


@dataclass(frozen=True)
class Binding:
    """The connection serving a person, and the tenant id it stood for then ("" when it has no Graph)."""

    connection: str
    tenant: str = ""

    def describe(self) -> str:
        return f"connection {self.connection!r}" + (f" (tenant {self.tenant})" if self.tenant else "")


def connection_of(item: WorkItem) -> str | None:
    """The connection an item's steps route the person to (None when it has no step)."""
    targets = sorted({step.target for step in item.steps})
    return "+".join(targets) if targets else None


def tenant_of(settings: Settings, connection: str) -> str:
    """The tenant id of a connection's Graph side, "" when it has none."""
    if connection == "default":
        return settings.graph_tenant_id
    graph = settings.graph_connections.get(connection)
    return graph.tenant_id if graph is not None else ""


def describe(settings: Settings, connection: str) -> str:
    """``connection 'x' (tenant y)``, as audit records and held reasons name it."""
    return Binding(connection, tenant_of(settings, connection)).describe()


def binding_for(settings: Settings, item: WorkItem) -> Binding | None:
    connection = connection_of(item)
    if connection is None:
        return None
    return Binding(connection, tenant_of(settings, connection) if "+" not in connection else "")


def bound(store: StateStore, user_id: int) -> Binding | None:
    """The connection recorded for a person, or None before their first item ran."""
    raw = store.get_marker(f"{MARKER_PREFIX}{user_id}")
    if not raw:
        return None
    data = json.loads(raw)
    return Binding(str(data.get("connection", "")), str(data.get("tenant", "")))


def bind(store: StateStore, user_id: int, binding: Binding) -> None:
    """Record (or move) the connection serving a person."""
    store.put_marker(f"{MARKER_PREFIX}{user_id}", json.dumps(asdict(binding), separators=(",", ":")))


# id(mapping) -> (the mapping, the fields its routing rules read); the mapping is kept so its id is not reused.
_ROUTING_FIELDS: dict[int, tuple[Mapping, frozenset[str]]] = {}
# (id(mapping), connection) -> (the mapping, its copy that routes everyone to that connection).
_TIED: dict[tuple[int, str], tuple[Mapping, Mapping]] = {}


def routing_fields(mapping: Mapping) -> frozenset[str]:
    """The template-context fields the mapping's routing rules read (``client_name``, ...)."""
    entry = _ROUTING_FIELDS.get(id(mapping))
    if entry is not None and entry[0] is mapping:
        return entry[1]
    from lifecycle.mapping.compiled import fields_read

    names = frozenset(fields_read([rule.when for rule in mapping.routing.rules], []))
    if len(_ROUTING_FIELDS) >= 32:  # a service plans with one or two mappings; tests build many
        _ROUTING_FIELDS.clear()
    _ROUTING_FIELDS[id(mapping)] = (mapping, names)
    return names


def carries_routing_fields(mapping: Mapping, event: LifecycleEvent) -> bool:
    """Whether ``event`` carries any field the routing rules read (a rule with no condition reads none)."""
    from lifecycle.mapping.planner import template_context

    names = routing_fields(mapping)
    if not names:
        # No rule reads a field: routing does not depend on the event, so there is nothing it could lack.
        return True
    context = template_context(event, "")
    return any((context.get(name) or "").strip() for name in names)


def tied_mapping(store: StateStore, mapping: Mapping, event: LifecycleEvent) -> Mapping | None:
    """``mapping`` routing everyone to the person's recorded connection, when ``event`` cannot route them itself.

    Returns None (plan with ``mapping`` as it is) when the event carries a field the routing rules read (it routes
    the person: elsewhere is a move, held by :func:`admit`), or when the person has no tie yet (their first item
    binds them where the mapping sends them), or is tied to several connections at once. The copy keeps the
    mapping's digest: it is the same mapping, read for a person whose connection is already decided.
    """
    if carries_routing_fields(mapping, event):
        return None
    tie = bound(store, event.user_id)
    if tie is None or not tie.connection or "+" in tie.connection:
        return None
    key = (id(mapping), tie.connection)
    entry = _TIED.get(key)
    if entry is not None and entry[0] is mapping:
        return entry[1]
    from lifecycle.mapping.schema import Routing

    tied = mapping.model_copy(update={"routing": Routing(default=tie.connection, rules=[])})
    if len(_TIED) >= 64:
        _TIED.clear()
    _TIED[key] = (mapping, tied)
    return tied


def plan_by_tie(store: StateStore, mapping: Mapping, item: WorkItem, context: PlanContext) -> WorkItem:
    """``item``, or ``item`` planned again for the person's tied connection when its event cannot route them and
    the mapping sent it elsewhere (:func:`tied_mapping`). The worker and the dry-run preview both use it, so a
    preview shows where the item will run."""
    tied = tied_mapping(store, mapping, item.event)
    if tied is None or connection_of(item) in (None, tied.routing.default):
        return item
    from lifecycle.mapping.planner import plan

    status = item.planned_for_status
    return plan(item.event, tied, work_id=item.work_id, context=context, status=status)


def moved_reason(user_id: int, before: Binding, now: Binding) -> str:
    """Why an item that routes a person to another connection is held (names both sides)."""
    return (
        f"{MOVED} Halo user {user_id} is served by {before.describe()}, and this item routes them to "
        f"{now.describe()}; nothing was written in either. If the move is intended (the person changed client), "
        "approve it and the person is served by the new connection from then on; else fix the mapping or the "
        "Halo user and reject it"
    )


def admit(
    store: StateStore, settings: Settings, item: WorkItem, received: WorkItem, *, now: datetime
) -> tuple[Literal["run", "held", "skipped"], Outcome, str] | None:
    """Decide whether ``item`` may run where it routes the person; hold it (storing ``received``) when it moves them.

    Returns None when it runs with nothing to record (the person's connection, or their first item, now bound),
    else what to do, the audit outcome and the message: ``run`` after an operator approved the move (the person is
    bound to the new connection), ``held`` (nothing of it runs), ``skipped`` after a rejection (or in dry-run).
    """
    from lifecycle.guard import held_id_for
    from lifecycle.observability import log
    from lifecycle.state import HeldItem

    user_id = item.event.user_id
    current = binding_for(settings, item)
    if current is None:
        return None
    before = bound(store, user_id)
    if before is None or before == current:
        if before is None and not settings.dry_run:
            bind(store, user_id, current)
        return None
    held_id = held_id_for(item.work_id)
    earlier = store.get_held(held_id)
    if earlier is not None and earlier.reason.startswith(MOVED):
        if earlier.status == "approved":
            if not settings.dry_run:
                bind(store, user_id, current)
            return "run", "changed", f"moved from {before.describe()} to {current.describe()}: approved by " + (
                earlier.decided_by or "an operator"
            )
        if earlier.status == "rejected":
            return "skipped", "rejected", f"the move to {current.describe()} was rejected by {earlier.decided_by}"
    reason = moved_reason(user_id, before, current)
    reason += f" (`lifecycle held approve {held_id}` or `lifecycle held reject {held_id}`)"
    if settings.dry_run:
        return "skipped", "dry_run", f"would be held: {reason}"
    if earlier is None:
        store.hold(
            HeldItem(
                held_id=held_id,
                work_id=item.work_id,
                user_id=user_id,
                lifecycle=item.lifecycle,
                work_item=received.model_dump_json(),
                reason=reason,
                held_at=now,
            )
        )
        log.error("held a work item that moves a person to another connection", extra={"held_id": held_id})
    return "held", "held", reason
