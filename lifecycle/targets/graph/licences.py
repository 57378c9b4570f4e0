"""Licences: SKU and service plan names, assigning and removing licences, disabling plans in them.

Licences and plans are named by GUID or by name: SKU part numbers (``SPE_E3``) and service plan names
(``EXCHANGE_S_ENTERPRISE``) are resolved through the tenant's ``subscribedSkus``, read once per client.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from lifecycle.errors import LifecycleError, Permanent, Retryable
from lifecycle.state import Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.graph.state import Connection, Plan, Snapshot, Write
from lifecycle.targets.graph.transport import GraphClient, Response, error_for
from lifecycle.targets.graph_actions import GUID, KNOWN_PLANS

if TYPE_CHECKING:
    from lifecycle.work import Step

# How often an unknown SKU or plan name may read subscribedSkus again (a newly bought SKU, a typo).
REFRESH_SECONDS = 60.0


class SkuCatalog:
    """The tenant's subscribed SKUs and their service plans, by name (read from ``subscribedSkus``)."""

    def __init__(self, client: GraphClient) -> None:
        self.client = client
        self._skus: dict[str, str] | None = None  # SKU part number (upper) -> skuId
        self._plans: dict[str, str] = {}  # service plan name (upper) -> id
        self._loaded_at: float | None = None
        self._lock = threading.Lock()
        self._sku_plans: dict[str, dict[str, str]] = {}  # skuId -> its plans, id -> name
        # (skuId, disabled plan id) -> plan ids Graph said depend on it (learned from its refusals).
        self.dependents: dict[tuple[str, str], set[str]] = {}

    def resolve_names(self, skus: Iterable[str], plans: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
        """skuId for each SKU name, service plan id for each plan name (GUIDs pass through).

        A name the cached catalog lacks reads ``subscribedSkus`` again (at most every ``REFRESH_SECONDS``):
        a SKU bought after the process started is found without a restart.
        """
        skus, plans = list(skus), list(plans)
        reloaded = self._refresh_for(skus, plans)
        sku_ids: dict[str, str] = {}
        for sku in skus:
            found = self._sku_id(sku)
            if found is None:
                self._unknown(reloaded, f"a SKU named {sku!r}")
                raise Permanent(f"Graph: the tenant has no subscription to a SKU named {sku!r} (subscribedSkus)")
            sku_ids[sku] = found
        plan_ids: dict[str, str] = {}
        for plan in plans:
            found = self._plan_id(plan)
            if found is None:
                self._unknown(reloaded, f"a service plan named {plan!r}")
                raise Permanent(f"Graph: no subscribed SKU has a service plan named {plan!r}")
            plan_ids[plan] = found
        return sku_ids, plan_ids

    def resolve_plan_set(self, plans: Iterable[str]) -> set[str]:
        """The ids of those of ``plans`` the tenant has (a list of alternatives: commercial, Gov, F-SKU names).

        Raises when none of them is known: the step would otherwise silently do nothing.
        """
        plans = list(plans)
        # Alternatives: the catalog is read (again) only when none of them is known, not for the Gov name a
        # commercial tenant never has.
        reloaded = False
        if self._skus is None or not any(self._plan_id(name) for name in plans):
            reloaded = self._refresh_for([], plans)
        found = {p for p in (self._plan_id(name) for name in plans) if p is not None}
        if not found:
            self._unknown(reloaded, f"any of the service plans {', '.join(plans)}")
            raise Permanent(f"Graph: no subscribed SKU has any of the service plans {', '.join(plans)}")
        return found

    def plans_named_in(self, sku: str, text: str) -> dict[str, str]:
        """The plans of ``sku`` (id -> name) whose name or id appears in ``text`` (a refusal from Graph)."""
        lowered = text.lower()
        return {
            plan_id: name
            for plan_id, name in self._sku_plans.get(sku, {}).items()
            if plan_id in lowered or (name and re.search(rf"\b{re.escape(name.lower())}\b", lowered))
        }

    def _sku_id(self, sku: str) -> str | None:
        return sku.lower() if GUID.match(sku) else (self._skus or {}).get(sku.upper())

    def _plan_id(self, plan: str) -> str | None:
        if GUID.match(plan):
            return plan.lower()
        return KNOWN_PLANS.get(plan.upper()) or self._plans.get(plan.upper())

    def _refresh_for(self, skus: list[str], plans: list[str]) -> bool:
        """Read subscribedSkus again when a name is unknown and the catalog is old enough; True if it was."""
        with self._lock:
            unknown = any(self._sku_id(s) is None for s in skus) or any(self._plan_id(p) is None for p in plans)
            if unknown and self._age() > REFRESH_SECONDS:
                self._load()
                return True
            return False

    def _age(self) -> float:
        return float("inf") if self._loaded_at is None else time.monotonic() - self._loaded_at

    def _unknown(self, reloaded: bool, what: str) -> None:
        """A name still unknown: wait for the next re-read unless this call just read the tenant's SKUs."""
        if not reloaded:
            wait = max(1.0, REFRESH_SECONDS - self._age())
            raise Retryable(
                f"Graph: the tenant's SKUs were read {self._age():.0f} s ago without {what}; reading them again "
                f"in {wait:.0f} s (a SKU bought just now)",
                retry_after=wait,
            )

    def _load(self) -> None:
        client = self.client
        answer = client.send(client.request(client.sdk.subscribed_skus.to_get_request_information()))
        if not answer.ok:
            raise error_for(answer, "read subscribedSkus")
        skus: dict[str, str] = {}
        for entry in answer.body.get("value", []):
            skus[str(entry.get("skuPartNumber", "")).upper()] = str(entry.get("skuId", "")).lower()
            self._sku_plans[str(entry.get("skuId", "")).lower()] = {
                str(p.get("servicePlanId")).lower(): str(p.get("servicePlanName", ""))
                for p in entry.get("servicePlans") or []
            }
            for plan in entry.get("servicePlans") or []:
                self._plans[str(plan.get("servicePlanName", "")).upper()] = str(plan.get("servicePlanId")).lower()
        self._skus = skus
        self._loaded_at = time.monotonic()


_catalogs: weakref.WeakKeyDictionary[GraphClient, SkuCatalog] = weakref.WeakKeyDictionary()
_catalogs_lock = threading.Lock()


def catalog_for(client: GraphClient) -> SkuCatalog:
    """The SKU catalog of a client (one per process and connection, like the client)."""
    with _catalogs_lock:
        catalog = _catalogs.get(client)
        if catalog is None:
            catalog = _catalogs[client] = SkuCatalog(client)
        return catalog


def plan_set(conn: Connection, plans: Iterable[str]) -> set[str]:
    return catalog_for(conn.client).resolve_plan_set(plans)


def resolve(
    conn: Connection, skus: Iterable[str] = (), plans: Iterable[str] = ()
) -> tuple[dict[str, str], dict[str, str]]:
    return catalog_for(conn.client).resolve_names(list(skus), list(plans))


def usage_location(conn: Connection, snap: Snapshot, wanted: str | None, changes: list[Change]) -> list[Write]:
    current = snap.user.usage_location
    if wanted and (current or "").upper() != wanted.upper():
        from msgraph.generated.models.user import User

        changes.append(Change("usageLocation", current, wanted.upper()))
        snap.user.usage_location = wanted.upper()
        info = conn.user_builder(snap).to_patch_request_information(User(usage_location=wanted.upper()))
        return [Write(conn.client.request(info), "set usageLocation")]
    if not snap.user.usage_location:
        raise Permanent(
            f"Graph: {snap.user.upn} has no usageLocation and Graph assigns no licence without one: "
            'give the step usage_location (e.g. "{cf.country|default:GB}")'
        )
    return []


def assign(conn: Connection, snap: Snapshot, add: dict[str, set[str]], remove: Iterable[str], what: str) -> Write:
    from msgraph.generated.models.assigned_license import AssignedLicense
    from msgraph.generated.users.item.assign_license.assign_license_post_request_body import (
        AssignLicensePostRequestBody,
    )

    removed = sorted(set(remove))
    body = AssignLicensePostRequestBody(
        add_licenses=[
            AssignedLicense(sku_id=uuid.UUID(sku), disabled_plans=[uuid.UUID(p) for p in sorted(plans)])
            for sku, plans in add.items()
        ],
        remove_licenses=[uuid.UUID(sku) for sku in removed],
    )
    for sku, plans in add.items():
        snap.user.direct[sku] = set(plans)
    for sku in removed:
        snap.user.direct.pop(sku, None)
    info = conn.user_builder(snap).assign_license.to_post_request_information(body)
    request = conn.client.request(info)
    if not add:
        # A removal replayed after it took effect (a 503 after the commit, a redelivery) answers 400 "User
        # does not have a corresponding license": the licence is gone, which is what the step wants.
        return Write(request, what, licence_already_gone)
    # Adding and removing in one call keeps the mailbox across a licence swap (Graph applies both at once);
    # if the removal's SKU is already gone, the state moved under the plan: read again and plan again.
    return Write(request, what, replan=licence_already_gone)


def licence_already_gone(response: Response) -> bool:
    return response.status == 400 and "does not have a corresponding license" in response.message.lower()


def plan_assign_licenses(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    specs = step.params["skus"]
    sku_ids, plan_ids = resolve(
        conn, [s["sku"] for s in specs], [p for s in specs for p in s.get("disabled_plans", [])]
    )
    changes: list[Change] = []
    notes: list[str] = [f"licence in error: {e}" for e in snap.user.licence_errors]
    add: dict[str, set[str]] = {}
    for spec in specs:
        sku = sku_ids[spec["sku"]]
        disabled = {plan_ids[p] for p in spec.get("disabled_plans", [])}
        if spec.get("disable_dependents"):
            catalog = catalog_for(conn.client)
            for plan in list(disabled):
                disabled |= catalog.dependents.get((sku, plan), set())
        current = snap.user.direct.get(sku)
        if current is None and sku in snap.user.by_group:
            notes.append(f"{spec['sku']} is assigned by group {sorted(snap.user.by_group[sku])[0]}: left to it")
            continue
        if current != disabled:
            add[sku] = disabled
            changes.append(Change(f"licence {spec['sku']}", licence_text(current), licence_text(disabled)))
    remove: list[str] = []
    if step.params.get("remove_unlisted"):
        listed = set(sku_ids.values())
        remove = [sku for sku in snap.user.direct if sku not in listed]
        changes += [Change(f"licence {sku}", licence_text(snap.user.direct[sku]), None) for sku in remove]
    if not add and not remove:
        data: dict[str, Any] = {"cloud_user": snap.user.id}
        if snap.user.licence_errors:
            data["licence_errors"] = snap.user.licence_errors
        return Plan(StepResult("unchanged", message="; ".join(notes), data=data))
    writes = usage_location(conn, snap, step.params.get("usage_location"), changes) if add else []
    write = assign(conn, snap, add, remove, "assign licences")
    wanted = {sku_ids[s["sku"]]: s for s in specs}
    write.explain = lambda answer: dependency_refusal(conn, add, wanted, answer)
    writes.append(write)
    return Plan(StepResult("changed", changes=changes, message="; ".join(notes)), writes)


def dependency_refusal(
    conn: Connection, add: dict[str, set[str]], specs: dict[str, dict[str, Any]], answer: Response
) -> LifecycleError | None:
    """A 400 that names plans of an added SKU still enabled: they depend on a plan the step disables.

    Microsoft publishes no machine-readable list of plan dependencies (subscribedSkus has none), so they are
    learned from the refusal: with ``disable_dependents`` the named plans are remembered and the step plans
    again with them disabled too; without it the step fails with a reason naming them.
    """
    if answer.status != 400:
        return None
    catalog = catalog_for(conn.client)
    for sku, disabled in add.items():
        named = {p: n for p, n in catalog.plans_named_in(sku, answer.message).items() if p not in disabled}
        if not named or not disabled:
            continue
        spec = specs.get(sku, {})
        names = ", ".join(sorted(named.values()))
        if spec.get("disable_dependents"):
            for plan in disabled:
                catalog.dependents.setdefault((sku, plan), set()).update(named)
            return Retryable(f"Graph: {names} depend on a plan disabled in {spec.get('sku')}: disabling them too")
        return Permanent(
            f"Graph: {spec.get('sku', sku)} cannot be assigned with {', '.join(spec.get('disabled_plans', []))} "
            f"disabled: {names} depend on it ({answer.message}); disable them too (add them to disabled_plans, "
            "or set disable_dependents = true)"
        )
    return None


def plan_remove_licenses(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    wanted = step.params.get("skus", "all")
    kept = set(resolve(conn, step.params.get("keep", []))[0].values())
    notes: list[str] = [f"licence in error: {e}" for e in snap.user.licence_errors]
    if wanted == "all":
        remove = list(snap.user.direct)
        names = {sku: sku for sku in remove}
        grouped = list(snap.user.by_group)
    else:
        sku_ids, _ = resolve(conn, wanted)
        names = {sku_ids[s]: s for s in wanted}
        remove = [sku for sku in names if sku in snap.user.direct]
        grouped = [sku for sku in names if sku in snap.user.by_group]
    for sku in grouped:
        notes.append(f"{names.get(sku, sku)} is assigned by a group: remove the user from the group instead")
    remove = [sku for sku in remove if sku not in kept]
    if not remove:
        return Plan(StepResult("unchanged", message="; ".join(notes)))
    changes = [Change(f"licence {names[sku]}", licence_text(snap.user.direct[sku]), None) for sku in remove]
    return Plan(
        StepResult("changed", changes=changes, message="; ".join(notes)),
        [assign(conn, snap, {}, remove, "remove licences")],
    )


def plans_in(conn: Connection, snap: Snapshot, plan_ids: set[str]) -> tuple[list[str], list[str]]:
    """(direct SKUs, group-assigned SKUs) of the user that contain one of ``plan_ids``."""
    details = snap.license_plans or {}
    direct = [sku for sku in snap.user.direct if details.get(sku, set()) & plan_ids]
    grouped = [sku for sku in snap.user.by_group if sku not in snap.user.direct and details.get(sku, set()) & plan_ids]
    return direct, grouped


def disable_plans(conn: Connection, snap: Snapshot, plan_names: list[str], what: str) -> Plan:
    plan_ids = plan_set(conn, plan_names)
    direct, grouped = plans_in(conn, snap, plan_ids)
    notes = [f"SKU {sku} is assigned by a group: its plans are the group's to change" for sku in grouped]
    add: dict[str, set[str]] = {}
    changes: list[Change] = []
    for sku in direct:
        targets = (snap.license_plans or {}).get(sku, set()) & plan_ids
        if not targets <= snap.user.direct[sku]:
            add[sku] = snap.user.direct[sku] | targets
            changes.append(Change(f"licence {sku}", licence_text(snap.user.direct[sku]), licence_text(add[sku])))
    if not add:
        return Plan(StepResult("unchanged", message="; ".join(notes)))
    return Plan(StepResult("changed", changes=changes, message="; ".join(notes)), [assign(conn, snap, add, [], what)])


def plan_disable_teams(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    return disable_plans(conn, snap, step.params["plans"], "disable the Teams and Skype plans")


def licence_text(disabled: set[str] | None) -> str | None:
    if disabled is None:
        return None
    names = {v: k for k, v in KNOWN_PLANS.items()}
    plans = sorted(names.get(p, p) for p in disabled)
    return f"assigned, disabled plans: {', '.join(plans)}" if plans else "assigned"
