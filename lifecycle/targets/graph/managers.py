"""The person's manager in Entra: ``PUT /users/{id}/manager/$ref`` (https://learn.microsoft.com/en-us/graph/api/
user-post-manager), the manager found from Halo by the anchor (the manager's Halo id) or by mail address.

A manager is found among the tenant's members only (a guest is refused): the password and Temporary Access Pass
mails go to the manager's address, so a Halo field must not be able to send them outside the organisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lifecycle.errors import Permanent, PolicyRefused
from lifecycle.state import Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.graph.cloudusers import anchor_value, odata, user_filter
from lifecycle.targets.graph.state import Connection, Plan, Snapshot, Write
from lifecycle.targets.graph.transport import Request, error_for
from lifecycle.targets.graph_actions import cloud_anchor_property

if TYPE_CHECKING:
    from lifecycle.work import Step

FIELDS = "id,userPrincipalName,mail,userType,employeeId,onPremisesExtensionAttributes"


def resolve(conn: Connection, context: StepContext, params: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(the manager's user, how it was named), or (None, "") when Halo sent neither field."""
    requests: list[Request] = []
    how = ""
    prop = cloud_anchor_property(context.item.anchor)
    if params.get("manager_id") and prop is not None:
        value = f"{context.item.anchor_prefix}{params['manager_id']}"
        how = f"{prop} {value!r}"
        requests.append(user_filter(f"{prop} eq '{odata(value)}'", FIELDS, advanced="/" in prop))
    elif params.get("manager_mail"):
        mail = str(params["manager_mail"]).strip().lower()
        how = f"mail {mail!r}"
        requests += [
            user_filter(f"mail eq '{odata(mail)}'", FIELDS),
            user_filter(f"userPrincipalName eq '{odata(mail)}'", FIELDS),
        ]
    else:
        return None, ""
    found: dict[str, dict[str, Any]] = {}
    for answer in conn.client.batch(requests):
        if not answer.ok:
            raise error_for(answer, f"find the manager by {how}")
        for user in answer.body.get("value", []):
            found[str(user["id"])] = user
    if prop is not None and params.get("manager_id"):
        wanted = f"{context.item.anchor_prefix}{params['manager_id']}"
        found = {k: u for k, u in found.items() if (anchor_value(u, prop) or "").lower() == wanted.lower()}
    if not found:
        raise Permanent(f"Graph: no user in the tenant has {how}, named as the manager in Halo; fix it there")
    if len(found) > 1:
        raise Permanent(f"Graph: {len(found)} users have {how}, named as the manager in Halo; make it unique")
    manager = next(iter(found.values()))
    if str(manager.get("userType") or "Member").lower() == "guest":
        raise PolicyRefused(f"Graph: the manager named in Halo ({how}) is a guest: managers are members only")
    return manager, how


def plan_set_cloud_manager(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    manager, how = resolve(conn, context, step.params)
    if manager is None:
        return Plan(StepResult("unchanged", message="Halo sent no manager"))
    if snap.user.synced:
        # AD is the source of authority of a synced user's manager: set_manager in AD, and the next sync.
        return Plan(StepResult("unchanged", message="synced from on-premises AD: set_manager in AD sets it"))
    manager_id = str(manager["id"])
    if manager_id.lower() == snap.user.id.lower():
        raise Permanent(f"Graph: Halo names {snap.user.upn} as its own manager ({how})")
    if (snap.manager or "").lower() == manager_id.lower():
        return Plan(StepResult("unchanged", message=f"the manager is {manager.get('userPrincipalName')}"))
    change = Change("manager", snap.manager, manager.get("userPrincipalName") or manager_id)
    body = {"@odata.id": f"{conn.client.base_url}/users/{manager_id}"}
    info = conn.user_builder(snap).manager.ref.to_put_request_information(_reference(body))
    request = conn.client.request(info)
    request.body, request.headers = body, {"content-type": "application/json"}
    snap.manager = manager_id
    return Plan(StepResult("changed", changes=[change]), [Write(request, "set the manager", changes=[change])])


def _reference(body: dict[str, str]) -> Any:
    from msgraph.generated.models.reference_update import ReferenceUpdate

    return ReferenceUpdate(odata_id=body["@odata.id"])
