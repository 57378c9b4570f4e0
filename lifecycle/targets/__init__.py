"""Target systems, one module each. Targets never import each other; the worker routes steps to them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lifecycle.state import Change

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
