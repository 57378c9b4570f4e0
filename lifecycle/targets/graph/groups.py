"""Cloud group memberships: add, remove, sync; groups Graph cannot change are reported, not retried."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lifecycle.errors import Permanent
from lifecycle.state import Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.graph.state import Connection, Plan, Snapshot, Write, not_member
from lifecycle.targets.graph.transport import Response

if TYPE_CHECKING:
    from lifecycle.work import Step


def membership(conn: Connection, snap: Snapshot, add: list[str], remove: list[str]) -> Plan:
    from msgraph.generated.models.reference_create import ReferenceCreate

    member_of = snap.member_of or {}
    changes: list[Change] = []
    writes: list[Write] = []
    skipped: list[str] = []
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
        writes.append(Write(conn.client.request(info), f"add to group {group.name}", already_member))
        changes.append(Change("memberOf", None, group.name))
        member_of[group_id] = group
    for group_id in dict.fromkeys(g.lower() for g in remove):
        group = member_of.get(group_id)
        if group is None:
            continue
        if group.unmanageable:
            skipped.append(f"{group.name}: {group.unmanageable}")
            continue
        builder = conn.client.sdk.groups.by_group_id(group_id).members.by_directory_object_id(snap.user.id)
        writes.append(
            Write(
                conn.client.request(builder.ref.to_delete_request_information()),
                f"remove from group {group.name}",
                not_member,
            )
        )
        changes.append(Change("memberOf", group.name, None))
        del member_of[group_id]
    message = f"not manageable through Graph: {'; '.join(skipped)}" if skipped else ""
    data = {"not_manageable": skipped} if skipped else {}
    if not writes:
        return Plan(StepResult("unchanged", message=message, data=data))
    return Plan(StepResult("changed", changes=changes, message=message, data=data), writes)


def plan_add_to_cloud_groups(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    return membership(conn, snap, list(step.params["group_ids"]), [])


def plan_remove_from_cloud_groups(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    wanted = step.params["group_ids"]
    remove = list(snap.member_of or {}) if wanted == "all" else list(wanted)
    return membership(conn, snap, [], remove)


def plan_sync_cloud_groups(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    desired = {g.lower() for g in step.params.get("desired", [])}
    managed = [g.lower() for g in step.params.get("managed", []) if g.lower() not in desired]
    return membership(conn, snap, sorted(desired), managed)


def already_member(response: Response) -> bool:
    # A POST $ref that committed before a 503 is resent by the middleware and then answers "already exist".
    return response.status == 400 and "already exist" in response.message.lower()
