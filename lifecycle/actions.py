"""The action vocabulary: every action a mapping's step list may name, which system runs it, and its params.

Active Directory actions are planned by ``lifecycle.mapping.planner`` itself (they need naming, OU and group
resolution). Every other action is an *extension action*: its parameters are written in the step entry of the
mapping (``{ action = "assign_licenses", skus = [...] }``), rendered as templates by the planner (a string
whose field is absent is left out), and validated by the action's pydantic model. Adding an action is a row
here plus a handler in the system's target module; the planner and the worker need no change.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

System = Literal["ad", "graph", "files", "script", "halo"]


@dataclass(frozen=True)
class ActionInfo:
    name: str
    system: System
    # Validates the rendered params of an extension action; None for actions the planner resolves itself.
    params: type[BaseModel] | None
    description: str
    # Runs at most once per work item, even across redeliveries (the journal guards it).
    once_only: bool = False


AD_ACTIONS: tuple[ActionInfo, ...] = (
    ActionInfo("create_user", "ad", None, "create the account (attributes, OU, password, enabled)"),
    ActionInfo("modify_properties", "ad", None, "set the mapped attributes that differ"),
    ActionInfo("apply_template", "ad", None, "set the attributes of a named template"),
    ActionInfo("disable_user", "ad", None, "disable the account"),
    ActionInfo("enable_user", "ad", None, "enable the account"),
    ActionInfo("delete_user", "ad", None, "delete the account (staged with after_days)"),
    ActionInfo("move_ou", "ad", None, "move the account to the mapped (or disabled) OU"),
    ActionInfo("add_to_groups", "ad", None, "join the listed groups"),
    ActionInfo("remove_from_groups", "ad", None, "leave the managed, all, or listed groups"),
    ActionInfo("sync_groups", "ad", None, "join the groups the rules give, leave managed ones they no longer give"),
    ActionInfo("reset_password", "ad", None, "set a new random password", once_only=True),
    ActionInfo("set_manager", "ad", None, "set manager (the DN of the account [manager] names, by anchor or mail)"),
)

# Modules that declare extension actions (light: pydantic models only, no SDK imports). Each defines
# ``ACTIONS: tuple[ActionInfo, ...]``.
EXTENSION_MODULES: tuple[str, ...] = (
    "lifecycle.targets.graph_actions",
    "lifecycle.targets.files_actions",
    "lifecycle.targets.script_actions",
    "lifecycle.targets.halo_actions",
)

_registry: dict[str, ActionInfo] | None = None


def registry() -> dict[str, ActionInfo]:
    """Every known action by name (built once)."""
    global _registry  # noqa: PLW0603 - a process-wide, write-once table
    if _registry is None:
        table = {a.name: a for a in AD_ACTIONS}
        for module_name in EXTENSION_MODULES:
            module = importlib.import_module(module_name)
            for action in module.ACTIONS:
                if action.name in table:
                    raise RuntimeError(f"action {action.name} is declared twice")
                table[action.name] = action
        _registry = table
    return _registry


_AD_ACTIONS = {a.name: a for a in AD_ACTIONS}


def action_info(name: str) -> ActionInfo:
    # An AD action is found without importing the extension modules (pydantic models each): the webhook path
    # of an AD-only mapping never needs them.
    found = _AD_ACTIONS.get(name)
    if found is not None:
        return found
    try:
        return registry()[name]
    except KeyError:
        known = ", ".join(sorted(registry()))
        raise ValueError(f"unknown action {name!r} (known: {known})") from None
