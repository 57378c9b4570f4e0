"""Custom scripts (system ``script``): the ``run_script`` action (the allow-list entry is in settings). Light module.

A step names an entry of the allow-list in configuration (``LIFECYCLE_SCRIPTS``), never a command: the
mapping writes ``{ action = "run_script", script = "convert_to_shared", args = { mailbox = "{email}" } }``
and the worker refuses (and audits) any name that is not configured. The target is
``lifecycle.targets.scripts``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lifecycle.actions import ActionInfo

# The allow-list entry is read by the settings, so it is defined with their models (lifecycle.settings_models,
# which imports nothing of ours) and re-exported here, where the targets and the tests have always found it.
from lifecycle.settings_models import ScriptEntry as ScriptEntry  # noqa: PLC0414 (explicit re-export)
from lifecycle.settings_models import is_loopback_host as is_loopback_host  # noqa: PLC0414 (explicit re-export)

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class RunScriptParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The allow-list entry's name (never a command, a path or a URL).
    script: str = Field(pattern=_NAME)
    # Arguments for the script, rendered from the mapping's templates for this user.
    args: dict[str, Any] = Field(default_factory=dict)


ACTIONS: tuple[ActionInfo, ...] = (
    ActionInfo(
        "run_script",
        "script",
        RunScriptParams,
        "run an allow-listed script (a Python callable or a signed webhook) once per work item",
        once_only=True,
    ),
)
