"""Leases and locks kept alive while a work item runs.

A received message is locked for a while (the embedded queue's ``lock_seconds``, Service Bus's
``lockDuration``) and each claimed step of the journal for ``STEP_LEASE_SECONDS``. Both exist so that the work
of a worker that *died* is taken over; neither may lapse while the worker is *alive* and still waiting for a
slow DC, or a second worker would receive the message, take the step over and write the same once-only step
(a password) a second time. So while an item runs, a ``LeaseKeeper`` renews what the worker holds, every
third of the shortest of those durations, from a thread of its own: the blocking call (an LDAP write that
waits for a DC) needs no change. A fast item ends before the first renewal and costs no write at all.

A renewal that finds its lease gone (taken over after all, settled elsewhere) is logged and not tried again:
the step's own settlement then finds out whose it is, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType

from lifecycle.observability import log

# A renewal reports whether the lease is still held: False stops renewing it (with a warning), None too (quietly:
# there was nothing to keep); an exception is logged and the renewal tried again next time.
Renewal = Callable[[], bool | None]


class LeaseKeeper:
    """Renews registered leases every ``interval`` seconds while it is entered (``with keeper:``).

    Args:
        interval: Seconds between renewals; a third of the shortest lease held keeps two renewals in hand.
    """

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = interval
        self._held: dict[str, Renewal] = {}
        # Held while a renewal runs: letting go of a lease waits for an in-flight renewal of it, so nothing
        # extends a lease after its holder settled it (released, finished, ended at once).
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._held.clear()

    @contextmanager
    def hold(self, name: str, renew: Renewal) -> Iterator[None]:
        """Renew ``renew`` (named ``name`` in the log) until the block ends; when it returns, no renewal of it
        is running or will run."""
        with self._lock:
            self._held[name] = renew
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(name, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                for name, renew in list(self._held.items()):
                    try:
                        kept = renew()
                    except Exception as exc:  # a store or broker hiccup: the lease may still run a while
                        log.warning("could not renew %s (%s); trying again in %.1f s", name, exc, self.interval)
                        continue
                    if kept is None:
                        del self._held[name]
                    elif not kept:
                        log.warning("%s was no longer ours to renew (taken over or settled elsewhere)", name)
                        del self._held[name]


def renewal_interval(lease_seconds: float, locked_until: datetime | None, now: float) -> float:
    """A third of the shortest of the step lease and what is left of the message's lock (never below 0.1 s)."""
    shortest = lease_seconds
    if locked_until is not None and locked_until.timestamp() > now:
        shortest = min(shortest, locked_until.timestamp() - now)
    return max(shortest / 3, 0.1)
