"""Halo write-back: tell Halo which account the person got (an ensure, through Halo's API).

Reads the Halo user, compares each configured field with the value rendered from the AD account, and posts
only the fields that differ, as a partial update (``POST /api/Users`` with ``[{id, ...}]``) carrying
``_dont_fire_automations: true`` so Halo does not echo the write back as a webhook. If Halo echoes it anyway,
the echo changes nothing in AD (no field the mapping reads changed) and this step finds nothing to write:
the loop ends there.

The step reports the fields it made Halo hold (``halo_fields``), with Halo's new ``ulastupdate`` when the saved
user shows no other change, so the fingerprint the worker records matches Halo and the next reconciliation
does not refetch this user.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lifecycle.errors import ConfigurationError, Permanent
from lifecycle.mapping.templates import MissingField, render
from lifecycle.state import Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.halo_actions import check_writeback_fields, fact_template

if TYPE_CHECKING:
    from lifecycle.halo.client import HaloClient
    from lifecycle.targets import TargetContext
    from lifecycle.targets.ad_model import Account


def halo_text(value: Any) -> str:
    """A Halo field's value as the text write-back compares (unset and null read as empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def account_facts(account: Account, facts: Mapping[str, Mapping[str, Any]]) -> dict[str, str | None]:
    """What write-back templates read: the account's attributes (first values, lower-case names), ``dn``,
    ``upn``, then scalar facts earlier steps recorded (an attribute of the account wins over a fact)."""
    values: dict[str, str | None] = {}
    for data in facts.values():
        for key, value in data.items():
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                values[key.lower()] = halo_text(value)
    for name, items in account.attributes.items():
        if items and isinstance(items[0], (str, int)):
            values[name.lower()] = str(items[0])
    values["dn"] = account.dn
    if values.get("userprincipalname"):
        values["upn"] = values["userprincipalname"]
    return values


def _rendered_custom(
    entries: list[dict[str, Any]], facts: dict[str, str | None], *, braced: bool
) -> list[dict[str, Any]]:
    """The custom fields to set, their values rendered from the account (a missing value sets nothing)."""
    rendered = []
    for entry in entries:
        template = str(entry["value"])
        try:
            # Planned values: templates, or text (the planner braced the mapping's bare fact names).
            value = render(template if braced else fact_template(template), facts).strip()
        except MissingField:
            continue
        if value:
            key = {"id": entry["id"]} if entry.get("id") is not None else {"name": entry["name"]}
            rendered.append({**key, "value": value})
    return rendered


def _custom_differences(wanted: list[dict[str, Any]], current: Any) -> tuple[list[dict[str, Any]], list[Change]]:
    """The custom fields whose value differs from Halo's (matched by id, or by name case-insensitively)."""
    present = [c for c in current if isinstance(c, dict)] if isinstance(current, list) else []
    differ: list[dict[str, Any]] = []
    changes: list[Change] = []
    for entry in wanted:
        if "id" in entry:
            found = next((c for c in present if halo_text(c.get("id")) == str(entry["id"])), None)
            label = f"halo:customfield {entry['id']}"
        else:
            name = str(entry["name"]).lower()
            found = next((c for c in present if str(c.get("name") or "").lower() == name), None)
            label = f"halo:customfield {entry['name']}"
        before = found.get("value") if found is not None else None
        if halo_text(before) != entry["value"]:
            differ.append(entry)
            changes.append(Change(label, before, entry["value"]))
    return differ, changes


class HaloWritebackTarget:
    """The ``halo`` system: one per worker thread, sharing the process's Halo client."""

    def __init__(self, name: str, context: TargetContext) -> None:
        self.name = name
        self.context = context
        try:
            fields = check_writeback_fields(dict(context.settings.halo_writeback_fields))
            # The settings' bare fact names are the operator's shorthand (never rendered from Halo first).
            self.default_fields = {name: fact_template(value) for name, value in fields.items()}
        except ValueError as exc:
            raise ConfigurationError(f"LIFECYCLE_HALO_WRITEBACK_FIELDS: {exc}") from None
        if "login" in self.default_fields:
            # Halo's login is the user's portal sign-in: changed only where the mapping says so, in a step.
            raise ConfigurationError(
                "LIFECYCLE_HALO_WRITEBACK_FIELDS: login (Halo's portal login) is written only when a halo_writeback "
                "step of the mapping names it in its fields"
            )

    def _client(self) -> HaloClient:
        from lifecycle.halo.client import HaloClient

        client = self.context.halo
        if not isinstance(client, HaloClient):
            raise Permanent(
                "halo_writeback needs the Halo API: set LIFECYCLE_HALO_API_URL, LIFECYCLE_HALO_CLIENT_ID and "
                "LIFECYCLE_HALO_CLIENT_SECRET (or remove the step from the mapping)"
            )
        return client

    def run(self, context: StepContext) -> StepResult:
        client = self._client()
        user_id = context.item.event.user_id
        planned: dict[str, str] | None = context.step.params.get("fields")
        # A step planned before the planner braced bare fact names reads them as facts, as it was planned.
        braced = bool(context.step.params.get("braced"))
        templates = (planned if braced else {k: fact_template(v) for k, v in planned.items()}) if planned else None
        templates = templates or self.default_fields
        account = context.ad_account()
        if account is None:
            if context.dry_run:
                return StepResult("dry_run", message="the account does not exist yet (dry run): written once it does")
            raise Permanent(
                f"halo_writeback: user {user_id} has no AD account, so there is nothing to write back "
                "(did the joiner fail? replay it first)"
            )
        facts = account_facts(account, context.facts)
        desired: dict[str, str] = {}
        for halo_field, template in templates.items():
            try:
                # A planned value without braces is text: a Halo field holding "dn" is written as "dn".
                value = render(template, facts).strip()
            except MissingField:
                continue  # the account lacks it: a missing value never clears Halo's
            if value:
                desired[halo_field] = value
        wanted_custom = _rendered_custom(context.step.params.get("customfields") or [], facts, braced=braced)
        if not desired and not wanted_custom:
            return StepResult("unchanged", dn=account.dn, message="no write-back field has a value on the account")
        current = client.fetch_user(user_id)
        if current is None:
            raise Permanent(f"halo_writeback: Halo has no user {user_id} (deleted?): nothing to write back to")
        differ = {name: value for name, value in desired.items() if halo_text(current.get(name)) != value}
        custom_differ, custom_changes = _custom_differences(wanted_custom, current.get("customfields"))
        data: dict[str, Any] = {"halo_fields": dict(desired)}
        if not differ and not custom_differ:
            return StepResult("unchanged", dn=account.dn, data=data)
        changes = [Change(f"halo:{name}", current.get(name), value) for name, value in differ.items()]
        changes += custom_changes
        if context.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=changes, data=data)
        update: dict[str, Any] = {"id": user_id, **differ, "_dont_fire_automations": True}
        if custom_differ:
            update["customfields"] = custom_differ
        saved = client.update_users([update])
        stamp = self._new_stamp(client, context, user_id, desired, saved)
        if stamp is not None:
            data["halo_fields"]["ulastupdate"] = stamp
        return StepResult("changed", dn=account.dn, changes=changes, data=data)

    def _new_stamp(
        self,
        client: HaloClient,
        context: StepContext,
        user_id: int,
        desired: dict[str, str],
        saved: list[dict[str, Any]],
    ) -> str | None:
        """Halo's ``ulastupdate`` after our write, when the saved user shows no change but ours."""
        from lifecycle.fingerprints import fingerprint, is_complete

        mapping = self.context.mapping
        after = next((u for u in saved if halo_text(u.get("id")) == str(user_id)), None)
        if after is None or not is_complete(mapping, after):
            after = client.fetch_user(user_id)
        if after is None or not isinstance(after.get("ulastupdate"), str):
            return None
        applied = {**(context.item.event.user or {}), **desired}
        # Someone changed a field the mapping reads between the event and now: keep the old stamp, so the
        # next reconciliation compares the user in full and finds that change.
        if fingerprint(mapping, applied).partition("@")[0] != fingerprint(mapping, after).partition("@")[0]:
            return None
        stamp: str = after["ulastupdate"]
        return stamp

    def close(self) -> None:
        """Nothing to release: the Halo client belongs to the process (the context that built this)."""


def build(name: str, context: TargetContext) -> HaloWritebackTarget:
    return HaloWritebackTarget(name, context)
