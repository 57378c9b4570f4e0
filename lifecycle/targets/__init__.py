"""Target systems, one module each. Targets never import each other; the worker routes steps to them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from lifecycle.state import Change

if TYPE_CHECKING:
    from lifecycle.mapping.planner import PlanContext
    from lifecycle.mapping.schema import Mapping
    from lifecycle.settings import Settings
    from lifecycle.state import StateStore
    from lifecycle.targets.ad_model import Account
    from lifecycle.work import Step, WorkItem

StepOutcome = Literal["changed", "unchanged", "dry_run", "refused"]


@dataclass
class StepResult:
    """What one ensure-step did (or, in dry-run, would do)."""

    outcome: StepOutcome
    dn: str | None = None
    changes: list[Change] = field(default_factory=list)
    message: str = ""
    # Facts later steps or the worker use (e.g. the staged deletion date); JSON-serialisable.
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepContext:
    """What an extension target gets for one step."""

    item: WorkItem
    step: Step
    dry_run: bool
    # The person's AD account as earlier steps left it (read on first call); None if there is none.
    ad_account: Callable[[], Account | None]
    # Facts earlier steps of this work item recorded (StepResult.data), by step key.
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    requested_by: dict[str, Any] = field(default_factory=dict)
    # What an earlier attempt of this step left to resume from (``Unfinished.progress``), or None.
    resume: dict[str, Any] | None = None


class ExtensionTarget(Protocol):
    """A non-AD system (Graph, file shares, scripts, Halo write-back). One instance per worker thread."""

    def run(self, context: StepContext) -> StepResult:
        """Ensure the step's effect; raise Retryable, Permanent or PolicyRefused on failure."""
        ...

    def close(self) -> None: ...


class TargetContext(Protocol):
    """What the process hands a target's ``build``: its shared pieces, read-only (the runtime is one).

    Targets depend on this port, never on ``lifecycle.runtime`` (the runtime builds them); each takes only what
    it uses.
    """

    @property
    def settings(self) -> Settings: ...

    @property
    def mapping(self) -> Mapping: ...

    @property
    def plan_context(self) -> PlanContext: ...

    @property
    def store(self) -> StateStore:
        """Where a target audits writes of a step that is not finished yet."""
        ...

    @property
    def halo(self) -> object | None:
        """The Halo API client, when one is configured (the Halo write-back checks its type)."""
        ...


# system -> "module:function" building the target for a named connection: ``build(name, context)``.
# Imported on first use, so a system's SDK is loaded only by a worker that runs one of its steps.
TARGET_FACTORIES: dict[str, str] = {
    "graph": "lifecycle.targets.graph:build",
    "files": "lifecycle.targets.homefolders:build",
    "script": "lifecycle.targets.scripts:build",
    "halo": "lifecycle.targets.halo_writeback:build",
}


def build_target(system: str, name: str, context: TargetContext) -> ExtensionTarget:
    try:
        module_name, _, function = TARGET_FACTORIES[system].partition(":")
    except KeyError:
        raise LookupError(f"no target is registered for system {system!r}") from None
    factory: Callable[[str, TargetContext], ExtensionTarget] = getattr(importlib.import_module(module_name), function)
    return factory(name, context)
