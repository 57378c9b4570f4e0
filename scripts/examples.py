"""Example custom scripts for ``run_script`` (see docs/homefolders-and-scripts.md).

A script is a plain function ``(event, args) -> dict``: ``event`` holds the work id, the step, the lifecycle,
the normalised Halo event and the account's DN; ``args`` are the step's arguments from the mapping, rendered
for this user. It returns ``{"status": "ok" | "retry" | "fail", "output": ...}``: "retry" when trying again
later can help (a system is busy), "fail" when it cannot (bad data). Raising ``OSError``/``TimeoutError`` counts
as "retry", any other exception as "fail". The output is audited (secrets redacted), so keep it short.

Only scripts named in the allow-list (``LIFECYCLE_SCRIPTS``) ever run, each at most once per work item:
write them so that a rerun after an operator's ``lifecycle journal release`` does no harm.
"""

from __future__ import annotations

from typing import Any


def welcome_note(event: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    """Compose the welcome text for a joiner (a real script would send it through a mail or chat API)."""
    user = event.get("event", {}).get("user") or {}
    name = str(user.get("firstname") or user.get("name") or "colleague")
    site = str(args.get("site") or user.get("site_name") or "")
    text = f"Welcome, {name}!" + (f" See you at {site}." if site else "")
    return {"status": "ok", "output": {"to": event.get("dn"), "text": text}}


def require_manager(event: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    """Refuse (permanently) a joiner whose Halo record names no manager, so someone fixes the record."""
    user = event.get("event", {}).get("user") or {}
    if not (user.get("manager") or user.get("manager_id") or args.get("manager")):
        return {"status": "fail", "output": "the Halo user has no manager; set one and replay"}
    return {"status": "ok", "output": "manager present"}
