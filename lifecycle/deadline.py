"""One deadline per invocation: every piece of work finishes well inside the Functions host's timeout.

The Functions host ends a Python invocation that runs past ``functionTimeout`` (host.json) by restarting the
worker process, which also ends every other invocation on it (up to ``maxConcurrentSessions`` people's
items, whose delivery counts then climb towards the dead-letter queue). So no invocation may come near it:
each gets a deadline of ``DEADLINE_SHARE`` (75 %) of ``functionTimeout``, read here and nowhere else, and a wait
that would pass it becomes a rescheduled retry that keeps its progress.

Code that waits asks ``remaining()`` (infinite outside an invocation: the CLI is not bound by the host) and
``check(what)``; the worker and the timers open the scope with ``invocation()``. Depends on nothing of ours.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path

# host.json sits at the root of the Functions app, next to the lifecycle package.
HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"
# host.json sets 4 minutes; a worker installed without host.json (the on-premises `lifecycle worker`) keeps the
# same budget, so an item behaves alike wherever it runs.
DEFAULT_FUNCTION_TIMEOUT_SECONDS = 240.0
DEADLINE_SHARE = 0.75

_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.\d+)?$")
_current: ContextVar[float | None] = ContextVar("lifecycle_deadline", default=None)


def parse_timespan(text: str) -> float:
    """Seconds of a .NET TimeSpan as host.json writes it (``hh:mm:ss`` or ``d.hh:mm:ss``)."""
    match = _TIMESPAN.match(text.strip())
    if match is None:
        raise ValueError(f"not a TimeSpan (hh:mm:ss): {text!r}")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


@lru_cache(maxsize=1)
def function_timeout_seconds(path: Path = HOST_JSON) -> float:
    """host.json's ``functionTimeout`` in seconds (the default when the file or the key is missing)."""
    try:
        host = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return DEFAULT_FUNCTION_TIMEOUT_SECONDS
    value = host.get("functionTimeout")
    return DEFAULT_FUNCTION_TIMEOUT_SECONDS if value is None else parse_timespan(str(value))


def invocation_budget_seconds() -> float:
    """How long one invocation may take: 75 % of ``functionTimeout``."""
    return function_timeout_seconds() * DEADLINE_SHARE


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


def fits(value: float, what: str) -> float:
    """Validate a wait that happens inside one invocation: it may not exceed the invocation's budget.

    Raises:
        ValueError: ``value`` is longer than the budget (a setting validator turns it into a named error).
    """
    budget = invocation_budget_seconds()
    if value > budget:
        raise ValueError(
            f"{what} of {value:g} s is longer than one invocation may take ({budget:g} s: 75 % of host.json's "
            "functionTimeout); a longer wait must be rescheduled, not waited"
        )
    return value
