"""Cloud group memberships: add, remove, sync; groups Graph cannot change are reported, not retried."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lifecycle.errors import Permanent
from lifecycle.state import Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.graph.licences import resolve
from lifecycle.targets.graph.state import Connection, Plan, Snapshot, Write, not_member
from lifecycle.targets.graph.transport import Response

if TYPE_CHECKING:
    from lifecycle.work import Step


def membership(
    conn: Connection, snap: Snapshot, add: list[str], remove: list[str], *, skip: dict[str, str] | None = None
) -> Plan:
    """Join ``add``, leave ``remove``; ``skip`` maps groups left alone on purpose to the reason."""
    from msgraph.generated.models.reference_create import ReferenceCreate

    member_of = snap.member_of or {}
    changes: list[Change] = []
    writes: list[Write] = []
    skipped: list[str] = []
    kept = [f"{member_of[g].name}: {why}" for g, why in (skip or {}).items() if g in member_of]
    for group_id in dict.fromkeys(g.lower() for g in add):
        if group_id in member_of:
            continue
        group = snap.groups.get(group_id)
        if group is None:
            raise Permanent(f"Graph: the cloud group {group_id} does not exist (fix the mapping)")
        if group.unmanageable:
            skipped.append(f"{group.name}: {group.unmanageable}")
            continue
        reference = ReferenceCreate(odata_id=f"{conn.client.base_url}/directoryObjects/{snap.user.id}")
        info = conn.client.sdk.groups.by_group_id(group_id).members.ref.to_post_request_information(reference)
        change = Change("memberOf", None, group.name)
        writes.append(Write(conn.client.request(info), f"add to group {group.name}", already_member, [change]))
        changes.append(change)
        member_of[group_id] = group
    for group_id in dict.fromkeys(g.lower() for g in remove):
        group = member_of.get(group_id)
        if group is None or group_id in (skip or {}):
            continue
        if group.unmanageable:
            skipped.append(f"{group.name}: {group.unmanageable}")
            continue
        builder = conn.client.sdk.groups.by_group_id(group_id).members.by_directory_object_id(snap.user.id)
        change = Change("memberOf", group.name, None)
        request = conn.client.request(builder.ref.to_delete_request_information())
        # Removing a member that is no longer one answers 404: the state the step wants (idempotent replay).
        writes.append(Write(request, f"remove from group {group.name}", not_member, [change]))
        changes.append(change)
        del member_of[group_id]
    notes = [f"not manageable through Graph: {'; '.join(skipped)}"] if skipped else []
    notes += [f"kept: {'; '.join(kept)}"] if kept else []
    data: dict[str, Any] = {"not_manageable": skipped} if skipped else {}
    if kept:
        data["kept"] = kept
    if not writes:
        return Plan(StepResult("unchanged", message="; ".join(notes), data=data))
    return Plan(StepResult("changed", changes=changes, message="; ".join(notes), data=data), writes)


def plan_add_to_cloud_groups(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    return membership(conn, snap, list(step.params["group_ids"]), [])


def plan_remove_from_cloud_groups(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    wanted = step.params["group_ids"]
    if wanted != "all":
        return membership(conn, snap, [], list(wanted))
    member_of = snap.member_of or {}
    skip: dict[str, str] = {}
    for group_id, group in member_of.items():
        if group.role_assignable:
            # Changing a role-assignable group's members needs RoleManagement.ReadWrite.Directory, which this
            # app is not meant to hold (docs/deployment.md); "all" leaves it to an administrator.
            skip[group_id] = "role-assignable (an administrator removes the member)"
    for group_id in step.params.get("keep", []):
        if group_id.lower() in member_of:
            skip[group_id.lower()] = "kept by the step"
    for sku, name in kept_licences(conn, context).items():
        for group_id in snap.user.by_group.get(sku, set()):
            if group_id.lower() in member_of:
                skip[group_id.lower()] = f"assigns {name}, which the mapping keeps"
    return membership(conn, snap, [], list(member_of), skip=skip)


def kept_licences(conn: Connection, context: StepContext) -> dict[str, str]:
    """skuId -> name of the SKUs a ``remove_licenses`` step of the same work item keeps."""
    names = [s for step in context.item.steps if step.action == "remove_licenses" for s in step.params.get("keep", [])]
    if not names:
        return {}
    sku_ids, _ = resolve(conn, names)
    return {sku_id: name for name, sku_id in sku_ids.items()}


def plan_sync_cloud_groups(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    desired = {g.lower() for g in step.params.get("desired", [])}
    managed = [g.lower() for g in step.params.get("managed", []) if g.lower() not in desired]
    return membership(conn, snap, sorted(desired), managed)


def already_member(response: Response) -> bool:
    # A POST $ref that committed before a 503 is resent by the middleware and then answers "already exist".
    return response.status == 400 and "already exist" in response.message.lower()
