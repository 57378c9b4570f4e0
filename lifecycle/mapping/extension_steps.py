"""The step of an extension action (Graph, files, scripts, Halo write-back): its params rendered from the
person's template context and validated by the action's own model (``lifecycle/actions.py`` collects them).

Apart from the planner because it changes with the extension actions' rendering rules (a second render by
the target, ``before_render``, staged ``after_days``), not with the AD steps the planner resolves itself.
"""

from __future__ import annotations

from collections.abc import Mapping as MappingABC
from typing import Any

from pydantic import ValidationError

from lifecycle.actions import ActionInfo
from lifecycle.errors import ConfigurationError
from lifecycle.mapping.schema import StepSpec
from lifecycle.mapping.templates import MissingField, render, render_first_stage
from lifecycle.work import Step


def _render_tree(value: Any, context: MappingABC[str, str | None], *, second_render: bool = False) -> Any:
    """Render every string of a parameter tree; a string whose field is absent is dropped (None).

    With ``second_render`` (params the target renders again from the account), substituted values keep
    their braces doubled: a Halo value can never become a placeholder of the second render.
    """
    if isinstance(value, str):
        try:
            return render_first_stage(value, context) if second_render else render(value, context)
        except MissingField:
            return None
    if isinstance(value, dict):
        rendered = {k: _render_tree(v, context, second_render=second_render) for k, v in value.items()}
        return {k: v for k, v in rendered.items() if v is not None}
    if isinstance(value, list):
        items = (_render_tree(item, context, second_render=second_render) for item in value)
        return [v for v in items if v is not None]
    return value


def extension_step(
    spec: StepSpec,
    index: int,
    info: ActionInfo,
    connection: str,
    context: dict[str, str | None],
    names: dict[str, Any] | None = None,
) -> Step:
    assert info.params is not None
    raw = spec.extension_params
    # An action whose params the target renders again may rewrite the mapping's shorthand into templates first
    # (halo_writeback braces bare fact names): after the first render, only templates name account facts.
    before_render = getattr(info.params, "before_render", None)
    if callable(before_render):
        raw = before_render(raw)
    rendered = _render_tree(raw, context, second_render=bool(getattr(info.params, "SECOND_RENDER", False)))
    if spec.action == "create_cloud_user":
        # The same candidates as AD's create_user: the worker takes the first one free in the tenant.
        rendered["names"] = names
    if spec.after_days:
        # after_days is a named field of every step entry (delete_user's); an extension action that can be
        # staged (archive_home_folder, delete_home_folder) declares it in its params model and gets it here.
        rendered["after_days"] = spec.after_days
    try:
        params = info.params.model_validate(rendered).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigurationError(
            f"step {spec.action} ({where}): {first['msg']} after rendering its templates for this user"
        ) from None
    return Step(
        key=f"{index:02d}-{spec.action}", action=spec.action, system=info.system, target=connection, params=params
    )
