"""Adopting existing accounts: a link between a Halo user and an AD account the service did not create.

On day one a directory already holds accounts for most people Halo sends, without the anchor. A joiner finds
such an account by the same correlation as the reconcile (mail, UPN, login; only inside the managed
containers), and a password reset meets an account that carries only the bare id (an HR number may look like
a Halo id). Neither is trusted on the strength of Halo-editable fields: the worker creates nothing, resets
nothing, and records a *link proposal*. An operator reviews it (``lifecycle link list``) and approves it
(``lifecycle link approve``): the anchor is stamped on the account, in its namespaced form, and the work that
stopped is sent again; or rejects it, and nothing happens.

A proposal is stored as a held item of lifecycle ``link`` (the mass-change guard's table: one place for
everything that waits for a person's decision); its body keeps the work item and the account found.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lifecycle.errors import AdoptionNeeded, LifecycleError, Permanent, PolicyRefused
from lifecycle.observability import log
from lifecycle.queue import message_for
from lifecycle.state import AuditEntry, HeldItem

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime
    from lifecycle.state import HeldStatus, StateStore
    from lifecycle.targets.ad import ADTarget
    from lifecycle.work import WorkItem

LINK = "link"


class LinkNotFound(LifecycleError, LookupError):
    """No link proposal has this id."""


class LinkConflict(LifecycleError):
    """The proposal was decided otherwise, or the account changed since it was proposed."""


def link_id_for(work_id: str) -> str:
    """The id of the link proposal a work item raised (never the same as its mass-change hold's)."""
    return hashlib.sha256(f"link:{work_id}".encode()).hexdigest()[:16]


def ad_target(runtime: Runtime, connection: str, *, dry_run: bool) -> ADTarget:
    """An AD target for ``connection`` with the mapping's protections and managed containers."""
    from lifecycle.protection import Policy
    from lifecycle.targets.ad import ADTarget

    settings = runtime.settings.ad_connection(connection)
    policy = Policy.from_safety(runtime.mapping.safety, settings.base_dn)
    return ADTarget(connection, settings, policy=policy, dry_run=dry_run)


def propose_link(store: StateStore, item: WorkItem, connection: str, found: AdoptionNeeded, now: float) -> bool:
    """Record that ``item`` waits for an operator to link the account ``found`` names; True if new."""
    link = {"connection": connection, "dn": found.dn, "attribute": found.attribute, "value": found.value}
    held = HeldItem(
        held_id=link_id_for(item.work_id),
        work_id=item.work_id,
        user_id=item.event.user_id,
        lifecycle=LINK,
        work_item=json.dumps({"work_item": item.model_dump(mode="json"), "link": link}),
        reason=str(found),
        held_at=datetime.fromtimestamp(now, UTC),
    )
    new = store.hold(held)
    if new:
        log.warning(
            "an existing account waits for an operator's link decision",
            extra={"event": "lifecycle.link.proposed", "link_id": held.held_id, "dn": found.dn},
        )
    return new


def links(store: StateStore, *, status: HeldStatus | None = "held") -> list[HeldItem]:
    """Link proposals with ``status`` (every status when None), oldest first."""
    return [h for h in store.held(status=status, limit=100_000) if h.lifecycle == LINK]


def link_details(held: HeldItem) -> dict[str, Any]:
    """What a proposal names: the account (dn), how it matched (attribute, value), the connection."""
    details: dict[str, Any] = json.loads(held.work_item)["link"]
    return details


def _proposal(store: StateStore, link_id: str) -> HeldItem:
    held = store.get_held(link_id)
    if held is None or held.lifecycle != LINK:
        raise LinkNotFound(f"no link proposal {link_id!r} (see `lifecycle link list`)")
    return held


def approve_link(runtime: Runtime, link_id: str, *, by: str, source: str, note: str = "") -> HeldItem:
    """Link the proposed account (stamp the namespaced anchor on it) and send the waiting work again.

    The account is read again first: it must still exist, lie in a managed container, be unprotected and
    carry no other anchor value. Approving twice stamps nothing new and sends one message (the queue drops
    the duplicate).
    """
    from lifecycle.targets.ad import Anchor
    from lifecycle.work import WorkItem

    store = runtime.store
    held = _proposal(store, link_id)
    if held.status == "rejected":
        raise LinkConflict(f"link {link_id} was rejected by {held.decided_by}; it cannot be approved")
    body = json.loads(held.work_item)
    item = WorkItem.model_validate(body["work_item"])
    link = body["link"]
    anchor = Anchor.for_user(item.anchor, item.anchor_prefix, item.event.user_id)
    target = ad_target(runtime, link["connection"], dry_run=runtime.settings.dry_run)
    try:
        account = target.read(link["dn"])
        if account is None:
            raise LinkConflict(f"{link['dn']} no longer exists; replay the work once the directory is right")
        if not target.is_managed(account.dn):
            raise PolicyRefused(f"{account.dn} lies outside the managed containers: it is never linked")
        target.check_protected(account)
        current = account.first(anchor.attribute)
        if current not in (None, "", anchor.value, anchor.legacy):
            raise LinkConflict(f"{account.dn} now carries {anchor.attribute}={current}: not linked")
        result, _ = target.modify_attributes({"attributes": {anchor.attribute: anchor.value}}, account)
    except Permanent as exc:
        raise LinkConflict(str(exc)) from None
    finally:
        target.close()
    now = datetime.now(UTC)
    decided = store.decide_held(link_id, "approved", by=by, at=now, note=note)
    if decided is None or decided.status != "approved":
        raise LinkConflict(f"link {link_id} was decided otherwise meanwhile")
    if held.status == "held":
        store.append_audit(
            AuditEntry(
                at=now,
                work_id=item.work_id,
                user_id=item.event.user_id,
                step="-",
                action="link",
                target=f"ad:{link['connection']}",
                outcome=result.outcome,
                dn=account.dn,
                changes=tuple(result.changes),
                requested_by={"source": source, "by": by, "link_id": link_id},
                message=f"linked by {link['attribute']}={link['value']}{f': {note}' if note else ''}",
            )
        )
    runtime.queue.send([message_for(item, message_id=f"linked-{link_id}", approved_by=by)])
    return decided


def reject_link(runtime: Runtime, link_id: str, *, by: str, source: str, note: str = "") -> HeldItem:
    """Leave the account unlinked for good (audited); the waiting work is not run."""
    store = runtime.store
    held = _proposal(store, link_id)
    if held.status == "approved":
        raise LinkConflict(f"link {link_id} was approved by {held.decided_by}; it cannot be rejected")
    decided = store.decide_held(link_id, "rejected", by=by, at=datetime.now(UTC), note=note)
    if decided is None or decided.status != "rejected":
        raise LinkConflict(f"link {link_id} was decided otherwise meanwhile")
    if held.status == "held":
        store.append_audit(
            AuditEntry(
                at=datetime.now(UTC),
                work_id=held.work_id,
                user_id=held.user_id,
                step="-",
                action="link",
                target="-",
                outcome="rejected",
                dn=link_details(held)["dn"],
                requested_by={"source": source, "by": by, "link_id": link_id},
                message=f"not linked{f': {note}' if note else ''}",
            )
        )
    return decided
