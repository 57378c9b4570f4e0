"""Set-up problems the process ran into, for ``GET /api/health`` to answer 503 with the reason.

A set-up problem (a Key Vault reference not resolved, a mapping file missing, Table storage refusing the
identity) is no fault of the work item that met it: the worker reschedules the item with a long delay and
records the cause here; the health route reports it until the same part works again. Per process, like the
Functions worker's runtime. Depends on nothing of ours.
"""

from __future__ import annotations

import threading
import time

_lock = threading.Lock()
_problems: dict[str, tuple[str, float]] = {}


def report(part: str, reason: str) -> None:
    """Record that ``part`` (``settings``, ``mapping``, ``store``, ``queue``...) cannot work, and why."""
    with _lock:
        _problems[part] = (reason, time.time())


def clear(*parts: str) -> None:
    """``parts`` work again (every part when none is named)."""
    with _lock:
        for part in parts or tuple(_problems):
            _problems.pop(part, None)


def problems() -> dict[str, str]:
    """The set-up problems now known, part -> reason."""
    with _lock:
        return {part: reason for part, (reason, _) in _problems.items()}
