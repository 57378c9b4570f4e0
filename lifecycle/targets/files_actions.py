"""Home-folder actions (system ``files``), the AD attribute action that goes with them, and safe path handling.

A light module (pydantic and the template engine only): the planner imports it, so it must not load an SMB
client. ``FileRoot`` and the path checks are defined in ``lifecycle.settings_models`` (the settings read
them from the environment) and re-exported here. The target that runs these actions is
``lifecycle.targets.homefolders``.

Paths come from the account's ``homeDirectory`` or from a mapping template. A template is rendered twice: the
planner fills Halo fields (``{department}``), and at run time ``{{samaccountname}}`` (written with double
braces in the mapping, so the planner leaves it as ``{samaccountname}``) is filled from the AD account's
attributes, which only exist once the account does. Whatever a Halo field holds (``../../etc``, a drive
letter, a UNC prefix, braces), the result is only accepted when it lies strictly below a configured root and
every component is a plain file name: :func:`resolve` refuses everything else.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lifecycle.actions import ActionInfo
from lifecycle.errors import ConfigurationError
from lifecycle.mapping.templates import MissingField, compile_template

# The root model and the pure path checks its validator uses live with the settings' models (which import
# nothing of ours); re-exported here, where the targets and the tests have always found them.
from lifecycle.settings_models import FileRoot as FileRoot  # noqa: PLC0414 (explicit re-export)
from lifecycle.settings_models import UnsafePath as UnsafePath  # noqa: PLC0414 (explicit re-export)
from lifecycle.settings_models import check_component as check_component  # noqa: PLC0414 (explicit re-export)
from lifecycle.settings_models import split_path as split_path  # noqa: PLC0414 (explicit re-export)

# Temporary names the mover copies to before renaming into place; never a user's file name.
TEMP_PREFIX = ".lifecycle-partial-"
_DRIVE = re.compile(r"^[A-Za-z]:$")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Paths are rendered again from the AD account at run time: the planner doubles the braces of Halo values.
    SECOND_RENDER: ClassVar[bool] = True


class CreateHomeFolderParams(_Params):
    """Joiner: make sure the folder exists and the user may use it."""

    # Where; by default the account's homeDirectory. ``{{samaccountname}}`` etc. come from the AD account.
    path: str | None = None
    # The access the user gets (an inheritable ACE for the account's SID on SMB; ownership on local paths).
    grant: Literal["full_control", "modify", "none"] = "full_control"


class MoveHomeFolderParams(_Params):
    """Mover: move the folder's contents to ``destination`` (resumable); the AD step ``set_home_directory`` follows."""

    destination: str | None = None
    # Where it is now; by default the account's homeDirectory.
    source: str | None = None


class ArchiveHomeFolderParams(_Params):
    """Leaver: move the folder to an archive location, now or ``after_days`` later (staged, cancelled by a rehire)."""

    destination: str | None = None
    source: str | None = None
    after_days: int = Field(default=0, ge=0, le=3650)


class DeleteHomeFolderParams(_Params):
    """Leaver: delete the folder, now or ``after_days`` later. Never follows links; only below allowed roots."""

    path: str | None = None
    after_days: int = Field(default=0, ge=0, le=3650)


class SetHomeDirectoryParams(_Params):
    """AD: set (or clear) homeDirectory and homeDrive, after the folder step that made the path true."""

    path: str | None = None
    drive: str | None = None
    clear: bool = False

    @field_validator("drive")
    @classmethod
    def _drive_letter(cls, value: str | None) -> str | None:
        if value is not None and not _DRIVE.match(value):
            raise ValueError("homeDrive is a drive letter and a colon, as H:")
        return value.upper() if value else value


ACTIONS: tuple[ActionInfo, ...] = (
    ActionInfo("create_home_folder", "files", CreateHomeFolderParams, "create the home folder with the user's access"),
    ActionInfo("move_home_folder", "files", MoveHomeFolderParams, "move the home folder's contents (resumable)"),
    ActionInfo("archive_home_folder", "files", ArchiveHomeFolderParams, "move the home folder to an archive"),
    ActionInfo(
        "delete_home_folder", "files", DeleteHomeFolderParams, "delete the home folder (staged with after_days)"
    ),
    ActionInfo("set_home_directory", "ad", SetHomeDirectoryParams, "set or clear homeDirectory and homeDrive"),
)


# Paths -------------------------------------------------------------------------------------------------------
def check_path_syntax(text: str) -> None:
    """Refuse a path that is not a UNC or absolute path of plain components (roots are not known here)."""
    _, _, parts = split_path(text)
    if not parts:
        raise UnsafePath(f"{text!r} names a share, not a folder in it")
    for part in parts:
        check_component(part)


@dataclass(frozen=True)
class HomePath:
    """A checked path: a configured root and the plain components below it (at least one)."""

    root: str
    parts: tuple[str, ...]
    display: str

    def child(self, name: str) -> HomePath:
        return HomePath(self.root, (*self.parts, name), self.display)


def _root_key(root: FileRoot) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    kind, head, parts = split_path(root.path)
    if kind == "smb":
        return kind, tuple(h.casefold() for h in head), tuple(p.casefold() for p in parts)
    return kind, head, parts


def resolve(text: str, roots: Mapping[str, FileRoot]) -> HomePath:
    """The root and components of ``text``; raises UnsafePath unless it lies strictly below a configured root.

    SMB names compare case-insensitively (as Windows and Samba do); local paths exactly. The most specific
    root wins. A path that is a root, or that contains another root, is refused: deleting or moving it would
    take a whole share with it.
    """
    kind, head, parts = split_path(text)
    for part in parts:
        check_component(part)
    folded = tuple(h.casefold() for h in head) if kind == "smb" else head
    compare = tuple(p.casefold() for p in parts) if kind == "smb" else parts
    best: tuple[int, str] | None = None
    for name, root in roots.items():
        root_kind, root_head, root_parts = _root_key(root)
        if root_kind != kind or root_head != folded:
            continue
        if compare[: len(root_parts)] == root_parts and (best is None or len(root_parts) > best[0]):
            best = (len(root_parts), name)
    if best is None:
        raise UnsafePath(f"{text} is not below any configured home-folder root (LIFECYCLE_FILE_ROOTS)")
    depth, name = best
    if len(parts) <= depth:
        raise UnsafePath(f"{text} is the root {name!r} itself, not a folder below it")
    for other_name, other in roots.items():
        other_kind, other_head, other_parts = _root_key(other)
        if other_kind == kind and other_head == folded and other_parts[: len(compare)] == compare:
            raise UnsafePath(f"{text} contains the configured root {other_name!r}")
    return HomePath(name, parts[depth:], text.strip())


# Run-time placeholders ----------------------------------------------------------------------------------------
class _AccountFields(Mapping[str, str | None]):
    """An AD account's single values by attribute name, case-insensitively (templates write them any case)."""

    def __init__(self, attributes: Mapping[str, list[Any]]) -> None:
        self._values = {k.lower(): str(v[0]) for k, v in attributes.items() if v and not isinstance(v[0], bytes)}

    def __getitem__(self, key: str) -> str | None:
        return self._values[key.lower()]

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key.lower(), default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def needs_account(text: str) -> bool:
    """Whether ``text`` still holds run-time placeholders (fields of the AD account)."""
    try:
        return bool(compile_template(text).fields)
    except ConfigurationError:
        return True


def expand_account_placeholders(text: str, attributes: Mapping[str, list[Any]] | None) -> str:
    """Fill ``{samaccountname}``-style placeholders left by the planner from the account's attributes.

    Raises UnsafePath when a placeholder cannot be filled or the text is not a valid template (a Halo field
    holding braces): the step is refused rather than guessing a path.
    """
    try:
        template = compile_template(text)
    except ConfigurationError as exc:
        raise UnsafePath(f"the path {text!r} is not a valid template after rendering: {exc}") from None
    if not template.fields:
        return template.render({})  # doubled braces (text from a Halo value) become single, as text
    if attributes is None:
        fields = ", ".join(sorted(template.fields))
        raise UnsafePath(f"the path {text!r} needs the AD account ({fields}), and there is none")
    try:
        return template.render(_AccountFields(attributes))
    except MissingField as exc:
        raise UnsafePath(f"the path {text!r} needs the account attribute {exc.field}, which it lacks") from None
