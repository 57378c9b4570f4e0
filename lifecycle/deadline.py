"""One deadline per invocation: every piece of work finishes well inside the Functions host's timeout.

The Functions host ends a Python invocation that runs past ``functionTimeout`` (host.json) by restarting the
worker process, which also ends every other invocation on it (up to ``maxConcurrentSessions`` people's
items, whose delivery counts then climb towards the dead-letter queue). So no invocation may come near it:
each gets a deadline of ``DEADLINE_SHARE`` (75 %) of ``functionTimeout`` (read by ``lifecycle.settings_models`` and
nowhere else), and a wait that would pass it becomes a rescheduled retry that keeps its progress.

Code that waits asks ``remaining()`` (infinite outside an invocation: the CLI is not bound by the host) and
``check(what)``; the worker and the timers open the scope with ``invocation()``. Depends only on
``lifecycle.settings_models``, which reads the budget from host.json.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# The budget is read from host.json beside the settings' models (which validate waits against it); re-exported
# here, where the code that waits has always found it.
from lifecycle.settings_models import (
    DEADLINE_SHARE,
    DEFAULT_FUNCTION_TIMEOUT_SECONDS,
    HOST_JSON,
    fits,
    function_timeout_seconds,
    invocation_budget_seconds,
    parse_timespan,
)

__all__ = [
    "DEADLINE_SHARE",
    "DEFAULT_FUNCTION_TIMEOUT_SECONDS",
    "HOST_JSON",
    "bounded",
    "fits",
    "function_timeout_seconds",
    "invocation",
    "invocation_budget_seconds",
    "parse_timespan",
    "remaining",
]

_current: ContextVar[float | None] = ContextVar("lifecycle_deadline", default=None)


@contextmanager
def invocation(budget_seconds: float | None = None) -> Iterator[float]:
    """Run the body under a deadline (``budget_seconds`` from now, by default the invocation budget).

    A nested scope never extends an outer one. Yields the deadline (``time.monotonic()`` seconds).
    """
    budget = invocation_budget_seconds() if budget_seconds is None else budget_seconds
    outer = _current.get()
    deadline = time.monotonic() + budget
    if outer is not None:
        deadline = min(deadline, outer)
    token = _current.set(deadline)
    try:
        yield deadline
    finally:
        _current.reset(token)


def remaining() -> float:
    """Seconds left of the current invocation (infinite outside one)."""
    deadline = _current.get()
    return math.inf if deadline is None else max(0.0, deadline - time.monotonic())


def bounded(seconds: float) -> float:
    """``seconds``, or what is left of the invocation when that is less (for socket and wait timeouts)."""
    return min(seconds, remaining())
