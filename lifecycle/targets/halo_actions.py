"""Halo write-back actions: names and params only (pydantic, no HTTP client), for the planner to validate.

``halo_writeback`` writes the person's account identifiers back to their Halo user, so agents see the login
and the directory entry in Halo. Its ``fields`` map Halo user fields to values from the AD account, e.g.::

    { action = "halo_writeback", fields = { samaccountname = "samaccountname", activedirectory_dn = "dn",
                                            emailaddress = "mail" } }

Each value names an account fact (an AD attribute in lower case, ``dn``, ``upn``, ``objectguid``, or a fact an
earlier step recorded), or a template over them with doubled braces (``"{{samaccountname}}@corp.example.com"``):
the planner renders single braces from the Halo user first. A bare fact name is the mapping's shorthand only:
the planner turns it into ``{{name}}`` before that first render, so the planned step holds templates and
literals, and a value without braces there is text (a Halo field holding ``dn`` is written as ``dn``, never as
the person's DN: issue 14, second-order injection). Without ``fields`` the step writes
``LIFECYCLE_HALO_WRITEBACK_FIELDS``, whose values keep the bare-name shorthand (they are an operator's, never
rendered from Halo). The target lives in ``lifecycle.targets.halo_writeback``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lifecycle.actions import ActionInfo
from lifecycle.errors import ConfigurationError
from lifecycle.mapping.templates import compile_template

_HALO_FIELD = re.compile(r"^[a-z][a-z0-9_]*$")
# Fields write-back must never touch: the identity of the record, and what decides the person's lifecycle.
FORBIDDEN_FIELDS = frozenset({"id", "inactive", "isserviceaccount", "use"})


def fact_template(value: str) -> str:
    """A write-back value of the mapping or the settings as a template over the account: a bare fact name
    (``dn``) is the shorthand of ``{dn}``."""
    return value if "{" in value else "{" + value.strip() + "}"


def _mapping_template(value: Any) -> Any:
    """A mapping's write-back value before the planner's first render: a bare fact name becomes a placeholder
    of the second render (``{{dn}}``), so after the first render a value without braces is only ever text."""
    if isinstance(value, str) and "{" not in value and value.strip():
        return "{{" + value.strip() + "}}"
    return value


def check_writeback_fields(fields: dict[str, str], *, bare_names: bool = True) -> dict[str, str]:
    """Validate a Halo field -> account template map; raises ValueError naming the bad entry.

    ``bare_names``: a value without braces names a fact (the settings' shorthand); otherwise it is text.
    """
    for name, template in fields.items():
        if not _HALO_FIELD.match(name):
            raise ValueError(f"{name!r} is not a Halo user field name (lower case letters, digits, _)")
        if name in FORBIDDEN_FIELDS:
            raise ValueError(f"write-back never sets Halo's {name!r}")
        if not template.strip():
            raise ValueError(f"{name}: empty value")
        try:
            compile_template(fact_template(template) if bare_names else template)
        except ConfigurationError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return fields


class CustomFieldWrite(BaseModel):
    """One Halo custom field to set: named by its ``name`` (e.g. ``CFEmployeeNumber``) or its ``id``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, min_length=1, max_length=200)
    id: int | None = Field(default=None, gt=0)
    # An account fact name or a template over the account's facts, like ``fields``.
    value: str = Field(min_length=1)

    @model_validator(mode="after")
    def _named_once(self) -> CustomFieldWrite:
        if (self.name is None) == (self.id is None):
            raise ValueError("a custom field is named by exactly one of name or id")
        compile_template(self.value)
        return self


class HaloWriteback(BaseModel):
    """Params of ``halo_writeback``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Rendered again from the account at run time: the planner doubles the braces of Halo values.
    SECOND_RENDER: ClassVar[bool] = True

    # Halo user field -> account fact name or template; None: LIFECYCLE_HALO_WRITEBACK_FIELDS.
    fields: dict[str, str] | None = None
    # Halo custom fields to set (``customfields: [{name or id, value}]`` in Halo's user object).
    customfields: list[CustomFieldWrite] | None = None
    # Set by the planner, never in a mapping: the values are planned (a value without braces is text). A step
    # planned before this existed (queued, or a ticket's dated phase) reads bare names as facts, as it was planned.
    braced: bool = False

    @field_validator("fields")
    @classmethod
    def _valid_fields(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else check_writeback_fields(value, bare_names=False)

    @staticmethod
    def before_render(params: dict[str, Any]) -> dict[str, Any]:
        """The step's params as the planner renders them: bare fact names braced for the second render."""
        if "braced" in params:
            raise ConfigurationError("halo_writeback: braced is set by the planner; remove it from the mapping")
        prepared = {**params, "braced": True}
        if isinstance(prepared.get("fields"), dict):
            prepared["fields"] = {k: _mapping_template(v) for k, v in prepared["fields"].items()}
        if isinstance(prepared.get("customfields"), list):
            prepared["customfields"] = [
                {**entry, "value": _mapping_template(entry.get("value"))} if isinstance(entry, dict) else entry
                for entry in prepared["customfields"]
            ]
        return prepared


ACTIONS: tuple[ActionInfo, ...] = (
    ActionInfo(
        "halo_writeback",
        "halo",
        HaloWriteback,
        "write the account's identifiers (login, DN, mail, ...) back to the Halo user",
    ),
)
