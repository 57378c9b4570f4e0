"""A Halo user as the service reads it, and how to find their existing account without the anchor.

Shared by the joiner (which correlates before it creates), the reconcile and the delta poll; below all three.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from lifecycle.errors import ConfigurationError, Permanent
from lifecycle.mapping.planner import template_context
from lifecycle.mapping.templates import MissingField, render
from lifecycle.work import LifecycleEvent

# What an AD attribute name looks like (a fallback names one; it goes into an LDAP filter).
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")


def normalise_user(user: dict[str, Any]) -> dict[str, Any]:
    """The user as the ingress would pass it on (Halo's doubles for ids made whole, unknown fields kept)."""
    from lifecycle.halo.models import HaloUser

    try:
        return HaloUser.model_validate(user).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Permanent(f"Halo's user {user.get('id')!r} is not valid: {where}: {first['msg']}") from None


def correlation_pairs(fallbacks: Mapping[str, str], event: LifecycleEvent) -> list[tuple[str, str]]:
    """(AD attribute, value) pairs that find this Halo user's existing account without the anchor
    (``LIFECYCLE_HALO_RECONCILE_FALLBACKS`` rendered over the user); the joiner and the reconcile share them."""
    if event.user is None:
        return []
    pairs: list[tuple[str, str]] = []
    for attribute, template in fallbacks.items():
        if not ATTRIBUTE_NAME.match(attribute):
            raise ConfigurationError(f"LIFECYCLE_HALO_RECONCILE_FALLBACKS: {attribute!r} is not an AD attribute name")
        value = render_fallback(template, event.user, event.user_id)
        if value and (attribute, value) not in pairs:
            pairs.append((attribute, value))
    return pairs


def render_fallback(template: str, user: dict[str, Any], user_id: int) -> str:
    event = LifecycleEvent(
        kind="updated", user_id=user_id, occurred_at=datetime.now(UTC), source="reconcile", user=user
    )
    try:
        return render(template, template_context(event, "")).strip()
    except MissingField:
        return ""
