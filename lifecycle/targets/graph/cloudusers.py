"""Cloud-only users: found by the anchor, created from the naming candidates, soft-deleted and restored.

A person with no AD account is found in Entra by the mapping's anchor kept on the user (``employeeId``
``halo:26``, or an ``onPremisesExtensionAttributes`` attribute: ``graph_actions.cloud_anchor_property``),
exactly as AD finds its account by ``employeeID``. So later events, a redelivery and a create whose answer
was lost (a 503 after Graph committed it) all find the same user, and nothing is created twice.

``create_cloud_user`` is an ensure: the user with the anchor is kept as it is; a soft-deleted user with the
anchor is restored (a rehire within 30 days gets its mailbox, licences and groups back); otherwise the first
naming candidate free in the tenant is created. Free means: no user has the UPN (read directly: a 404, not a
filter on the eventually consistent index) and no user has the UPN or the mail as ``mail`` or as an SMTP
proxy address. Graph's own refusal of a taken name at create time (``ObjectConflict``) moves on to the next
candidate too, since the index behind filters can lag behind recent writes (reference/entra.md).
"""

from __future__ import annotations

import logging
import secrets
import string
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from lifecycle.errors import NamingExhausted, Permanent, PolicyRefused, Retryable
from lifecycle.mapping.naming import SAM_PLACEHOLDER, sanitize_address, with_suffix
from lifecycle.state import Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.graph.transport import BATCH_LIMIT, Request, Response, error_for
from lifecycle.targets.graph_actions import cloud_anchor_property

if TYPE_CHECKING:
    from lifecycle.targets.graph.target import GraphTarget
    from lifecycle.work import WorkItem

log = logging.getLogger("lifecycle.graph")

# What the look-ups read of a user (a deleted user's too).
LOOKUP_FIELDS = (
    "id,userPrincipalName,mail,accountEnabled,employeeId,onPremisesExtensionAttributes,onPremisesSyncEnabled"
)
# The fact a create or restore leaves for the later Graph steps of the same item: the user's object id (a
# filter right after a create may not find the user yet).
FACT = "cloud_user_id"
# The fact a dry-run create leaves: later steps say they would run on the new user.
PLANNED = "cloud_user_planned"
JSON = {"content-type": "application/json"}


def odata(value: str) -> str:
    """An OData string literal's content: a single quote is doubled (never ends the literal)."""
    return value.replace("'", "''")


def user_filter(expression: str, select: str = LOOKUP_FIELDS, *, advanced: bool = False) -> Request:
    # Everything escaped: the request is expanded as a URI template, whose literal part loses commas.
    url = f"/users?$filter={quote(expression, safe='')}&$select={quote(select, safe='')}"
    headers: dict[str, str] = {}
    if advanced:
        # Advanced queries (extension attributes, ...): ConsistencyLevel eventual and $count=true
        # (https://learn.microsoft.com/en-us/graph/aad-advanced-queries).
        url += "&$count=true"
        headers["consistencylevel"] = "eventual"
    return Request("GET", url, headers)


def anchor_of(item: WorkItem) -> tuple[str, str]:
    """(Entra property, value) that identify the item's person."""
    prop = cloud_anchor_property(item.anchor)
    if prop is None:
        raise Permanent(
            f"Graph: the anchor {item.anchor!r} has no Entra property (employeeId or extensionAttribute1..15): a "
            "cloud-only person cannot be found; change the mapping's anchor"
        )
    return prop, f"{item.anchor_prefix}{item.event.user_id}"


def anchor_value(user: dict[str, Any], prop: str) -> str | None:
    if prop.startswith("onPremisesExtensionAttributes/"):
        return (user.get("onPremisesExtensionAttributes") or {}).get(prop.split("/", 1)[1])
    value = user.get(prop)
    return str(value) if value is not None else None


def find_by_anchor(target: GraphTarget, item: WorkItem) -> dict[str, Any] | None:
    """The active user carrying the person's anchor, or None; two of them is a reason to stop."""
    prop, value = anchor_of(item)
    answer = target.client.send(user_filter(f"{prop} eq '{odata(value)}'", advanced="/" in prop))
    if not answer.ok:
        raise error_for(answer, f"find the cloud user by {prop}")
    found = [u for u in answer.body.get("value", []) if (anchor_value(u, prop) or "").lower() == value.lower()]
    if len(found) > 1:
        names = ", ".join(str(u.get("userPrincipalName")) for u in found)
        raise Permanent(f"Graph: {len(found)} cloud users carry {prop} {value!r} ({names}); keep it on one only")
    return found[0] if found else None


def user_key(target: GraphTarget, context: StepContext) -> tuple[str, str | None]:
    """How to address a cloud-only person's user: the id an earlier step of the item made, else the anchor."""
    for data in context.facts.values():
        if data.get(FACT):
            return str(data[FACT]), None
    user = find_by_anchor(target, context.item)
    if user is None:
        prop, value = anchor_of(context.item)
        return "", f"no cloud user has {prop} {value!r}"
    return str(user["id"]), None


def find_deleted(target: GraphTarget, item: WorkItem) -> dict[str, Any] | None:
    """The soft-deleted user carrying the anchor, or None.

    Read page by page and matched here: filters on deleted items are refused or ignored for most properties
    (the list page names no filterable property; reference/entra.md (f)). Deleted items hold 30 days of
    deletions only, so the list stays short.
    """
    prop, value = anchor_of(item)
    select = quote(f"{LOOKUP_FIELDS},deletedDateTime", safe="")
    link: str | None = f"/directory/deletedItems/microsoft.graph.user?$select={select}&$top=999"
    found: list[dict[str, Any]] = []
    base = target.client.base_url
    while link:
        answer = target.client.send(Request("GET", link[len(base) :] if link.startswith(base) else link))
        if not answer.ok:
            raise error_for(answer, "list the deleted users")
        found += [u for u in answer.body.get("value", []) if (anchor_value(u, prop) or "").lower() == value.lower()]
        link = answer.body.get("@odata.nextLink")
    if not found:
        return None
    # The latest deletion, should there be several (deleted, recreated by hand, deleted again).
    return max(found, key=lambda u: str(u.get("deletedDateTime") or ""))


def generate_password(length: int) -> str:
    """A random password meeting Entra's complexity rule (three of four classes; here all four)."""
    length = max(length, 16)
    alphabet = string.ascii_letters + string.digits + "!#%+-.=?@_"
    while True:
        value = "".join(secrets.choice(alphabet) for _ in range(length))
        classes = [any(c in s for c in value) for s in (string.ascii_lowercase, string.ascii_uppercase, string.digits)]
        if all(classes) and any(not c.isalnum() for c in value):
            return value


def delivery_facts(target: GraphTarget, user_id: str) -> dict[str, str]:
    """What a delivery mail names: the user, and its manager's name and mail (none without a manager)."""
    base = f"/users/{quote(user_id, safe='')}"
    user, manager = target.client.batch(
        [
            Request("GET", f"{base}?$select=displayName%2CuserPrincipalName%2CmailNickname"),
            Request("GET", f"{base}/manager?$select=displayName%2Cmail"),
        ]
    )
    if not user.ok:
        raise error_for(user, "read the new cloud user")
    if not manager.ok and manager.status != 404:
        raise error_for(manager, "read the cloud user's manager")
    facts = {
        "name": str(user.body.get("displayName") or ""),
        "upn": str(user.body.get("userPrincipalName") or ""),
        "sam": str(user.body.get("mailNickname") or ""),
    }
    if manager.ok:
        facts["manager_mail"] = str(manager.body.get("mail") or "")
        facts["manager_name"] = str(manager.body.get("displayName") or "")
    return facts


# Taken names ------------------------------------------------------------------------------------------------
def _checks(candidate: dict[str, str]) -> list[Request]:
    upn = candidate["userprincipalname"]
    # The holder's anchor too: a create whose answer was lost is found here even when the filter index lags.
    select = quote("id,userPrincipalName,employeeId,onPremisesExtensionAttributes", safe="")
    requests = [Request("GET", f"/users/{quote(upn, safe='@')}?$select={select}")]
    for address in dict.fromkeys(a.lower() for a in (upn, candidate.get("mail")) if a):
        requests.append(user_filter(f"mail eq '{odata(address)}'", "id"))
        # Graph keeps proxy addresses as written ("SMTP:" primary, "smtp:" others); whether the filter
        # compares the prefix case-insensitively is not documented, so both are asked.
        for prefix in ("SMTP", "smtp"):
            requests.append(user_filter(f"proxyAddresses/any(p:p eq '{prefix}:{odata(address)}')", "id"))
    return requests


def _taken(answers: list[Response]) -> bool:
    for number, answer in enumerate(answers):
        if number == 0:
            if answer.status == 404:
                continue
            if answer.ok:
                return True
        elif answer.ok:
            if answer.body.get("value"):
                return True
            continue
        raise error_for(answer, "check whether a name is taken")
    return False


def _free(
    target: GraphTarget, candidates: list[dict[str, str]], skip: set[str], anchor: tuple[str, str]
) -> dict[str, str] | dict[str, Any] | None:
    """The first candidate nobody in the tenant holds (its checks batched, 20 requests a call), or the user
    holding a candidate's UPN when it carries the person's anchor (``{"own": user}``), or None."""
    prop, value = anchor
    todo = [c for c in candidates if c["userprincipalname"].lower() not in skip]
    while todo:
        chunk: list[dict[str, str]] = []
        requests: list[Request] = []
        for candidate in todo:
            checks = _checks(candidate)
            if chunk and len(requests) + len(checks) > BATCH_LIMIT:
                break
            chunk.append(candidate)
            requests += checks
        answers = target.client.batch(requests)
        position = 0
        for candidate in chunk:
            count = len(_checks(candidate))
            holder = answers[position]
            if holder.ok and (anchor_value(holder.body, prop) or "").lower() == value.lower():
                return {"own": holder.body}
            if not _taken(answers[position : position + count]):
                return candidate
            position += count
        todo = todo[len(chunk) :]
    return None


def _all_candidates(names: dict[str, Any]) -> list[dict[str, str]]:
    candidates: list[dict[str, str]] = list(names.get("candidates", []))
    if not candidates:
        return []
    base = candidates[0]["samaccountname"]
    patterns: dict[str, str] = names.get("suffix_patterns", {})
    for number in range(2, int(names.get("max_suffix", 99)) + 1):
        # mailNickname allows 64 characters; the login's 20 keep it the same name as an AD login would be.
        sam = with_suffix(base, number)
        suffixed = {"samaccountname": sam}
        for attr, pattern in patterns.items():
            suffixed[attr] = sanitize_address(pattern.replace(SAM_PLACEHOLDER, sam))
        candidates.append(suffixed)
    return candidates


def _conflict(answer: Response) -> bool:
    """Graph refused the create for a name another object holds (UPN, mail or a proxy address).

    UPN: 400 Request_BadRequest "Another object with the same value for property userPrincipalName already
    exists." with details code ObjectConflict (microsoftgraph/microsoft-graph-docs#1508); mail or proxy: 400
    "A conflicting object with one or more of the specified property values is present in the directory."
    (microsoftgraph/microsoft-graph-docs-contrib#6346).
    """
    if answer.status != 400:
        return False
    text = answer.message.lower()
    details = (answer.body or {}).get("error", {}).get("details") or []
    return (
        "already exists" in text
        or "conflicting object" in text
        or any(str(d.get("code", "")).lower() == "objectconflict" for d in details if isinstance(d, dict))
    )


# Steps ------------------------------------------------------------------------------------------------------
def create(target: GraphTarget, context: StepContext) -> StepResult:
    params = context.step.params
    item = context.item
    prop, value = anchor_of(item)
    existing = find_by_anchor(target, item)
    if existing is not None:
        return StepResult(
            "unchanged",
            message=f"the cloud user {existing.get('userPrincipalName')} carries {prop} {value!r}",
            data={FACT: existing["id"]},
        )
    deleted = find_deleted(target, item)
    if deleted is not None:
        return _restore(target, context, deleted, auto_reconcile=False)
    candidates = _all_candidates(params.get("names", {}))
    if not candidates:
        raise NamingExhausted("no naming candidate could be made from this user's fields (are the names empty?)")
    body = _create_body(params, prop, value)
    refused: set[str] = set()
    while True:
        candidate = _free(target, candidates, refused, (prop, value))
        if candidate is not None and "own" in candidate:
            own: dict[str, Any] = candidate["own"]  # type: ignore[assignment]
            return StepResult(
                "unchanged",
                message=f"the cloud user {own.get('userPrincipalName')} carries {prop} {value!r} (found by its name: "
                "an earlier create whose answer was lost)",
                data={FACT: own["id"]},
            )
        if candidate is None:
            first = candidates[0]["userprincipalname"]
            raise NamingExhausted(
                f"every name candidate is taken in the tenant ({first} and its numbered forms up to "
                f"{params.get('names', {}).get('max_suffix', 99)}): add a candidate to the mapping's [naming]"
            )
        names = {
            "userPrincipalName": candidate["userprincipalname"],
            "mailNickname": candidate["samaccountname"],
            **({"mail": candidate["mail"]} if candidate.get("mail") else {}),
        }
        changes = [Change(k, None, v) for k, v in {**names, **_audited(body)}.items()]
        if context.dry_run:
            return StepResult("dry_run", changes=changes, message="would create the cloud user", data={PLANNED: True})
        password = generate_password(32)
        request = Request(
            "POST",
            "/users",
            JSON,
            {**body, **names, "passwordProfile": {"password": password, "forceChangePasswordNextSignIn": True}},
        )
        # A POST is never resent blindly: a 503 may follow a committed create, which the anchor finds next time.
        answer = target.client.send(request, retry=False)
        del request
        if _conflict(answer):
            refused.add(candidate["userprincipalname"].lower())
            continue
        if not answer.ok:
            del password
            raise error_for(answer, "create the cloud user")
        user = answer.body
        message = f"created {user.get('userPrincipalName')}"
        manager_change = _set_manager(target, context, str(user["id"]))
        if manager_change is not None:
            changes.append(manager_change)
        if params.get("deliver_password"):
            message += "; " + target.deliver_secret(context, user, password, kind="password")
        del password
        return StepResult("changed", changes=changes, message=message, data={FACT: user["id"]})


def _set_manager(target: GraphTarget, context: StepContext, user_id: str) -> Change | None:
    """The manager Halo names, set on the new user before its password is mailed (to that manager)."""
    from lifecycle.targets.graph.managers import resolve

    try:
        manager, how = resolve(target.conn, context, context.step.params)
    except (Permanent, PolicyRefused) as exc:
        # The user exists now: a manager Halo names wrongly must not stop the joiner; set_cloud_manager says it.
        log.warning("the new cloud user's manager was not set: %s", exc)
        return None
    if manager is None:
        return None
    body = {"@odata.id": f"{target.client.base_url}/users/{manager['id']}"}
    path = f"/users/{quote(user_id, safe='')}/manager/$ref"
    answer = target.client.send(Request("PUT", path, JSON, body))
    if not answer.ok:
        log.warning("the new cloud user's manager (%s) was not set: %s %s", how, answer.status, answer.code)
        return None
    return Change("manager", None, manager.get("userPrincipalName") or manager["id"])


def _create_body(params: dict[str, Any], prop: str, value: str) -> dict[str, Any]:
    properties: dict[str, Any] = dict(params.get("properties", {}))
    body: dict[str, Any] = {"accountEnabled": bool(params.get("enabled", True)), **properties}
    if "displayName" not in body:
        first = (params.get("names", {}).get("candidates") or [{}])[0]
        body["displayName"] = first.get("samaccountname") or value
    if params.get("usage_location"):
        body["usageLocation"] = str(params["usage_location"]).upper()
    if params.get("hire_date"):
        body["employeeHireDate"] = params["hire_date"]
    if params.get("employee_id"):
        body["employeeId"] = params["employee_id"]
    if prop == "employeeId":
        body["employeeId"] = value
    else:
        body["onPremisesExtensionAttributes"] = {prop.split("/", 1)[1]: value}
    return body


def _audited(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "passwordProfile"}


def restore(target: GraphTarget, context: StepContext) -> StepResult:
    existing = find_by_anchor(target, context.item)
    if existing is not None:
        return StepResult(
            "unchanged", message=f"{existing.get('userPrincipalName')} is not deleted", data={FACT: existing["id"]}
        )
    deleted = find_deleted(target, context.item)
    if deleted is None:
        prop, value = anchor_of(context.item)
        raise Permanent(
            f"Graph: no active or soft-deleted cloud user has {prop} {value!r} (deleted more than 30 days ago?); "
            "a joiner's create_cloud_user makes a new one"
        )
    return _restore(
        target, context, deleted, auto_reconcile=bool(context.step.params.get("auto_reconcile_proxy_conflict"))
    )


def _restore(target: GraphTarget, context: StepContext, deleted: dict[str, Any], *, auto_reconcile: bool) -> StepResult:
    upn = str(deleted.get("userPrincipalName") or "")
    user_id = str(deleted["id"])
    # The protection the active user had: a listed user is never brought back by the service.
    if {user_id.lower(), upn.lower()} & target.protection.protected_users:
        raise PolicyRefused(f"Graph: the deleted cloud user {upn or user_id} is listed in safety.protected_cloud_users")
    change = Change("deleted", True, False)
    if context.dry_run:
        return StepResult("dry_run", changes=[change], message=f"would restore the deleted cloud user {upn}")
    body = {"autoReconcileProxyConflict": True} if auto_reconcile else None
    answer = target.client.send(
        Request("POST", f"/directory/deletedItems/{quote(user_id, safe='')}/restore", JSON if body else {}, body),
        retry=False,
    )
    if not answer.ok:
        if answer.status == 404:
            # Gone between the read and the restore (purged, or restored by someone else): look again next time.
            raise Retryable(f"Graph: the deleted cloud user {upn} changed while it was restored; looking again")
        if _conflict(answer):
            original = upn[len(user_id) :] if upn.lower().startswith(user_id.lower()) else upn
            raise Permanent(
                f"Graph: the deleted cloud user {original} cannot be restored: another object now holds its "
                f"userPrincipalName or one of its addresses ({answer.message}); rename or remove that object (for "
                "addresses only, restore_cloud_user auto_reconcile_proxy_conflict = true drops them), then replay"
            )
        raise error_for(answer, f"restore the deleted cloud user {upn}")
    restored = answer.body or {}
    return StepResult(
        "changed",
        changes=[change],
        message=f"restored {restored.get('userPrincipalName') or upn} (mailbox, licences and groups come back with it)",
        data={FACT: user_id},
    )
