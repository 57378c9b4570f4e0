"""Leases and locks kept alive while a work item runs.

A received message is locked for a while (the embedded queue's ``lock_seconds``, Service Bus's
``lockDuration``) and each claimed step of the journal for ``STEP_LEASE_SECONDS``. Both exist so that the work
of a worker that *died* is taken over; neither may lapse while the worker is *alive* and still waiting for a
slow DC, or a second worker would receive the message, take the step over and write the same once-only step
(a password) a second time. So while an item runs, a ``LeaseKeeper`` renews what the worker holds, every
third of the shortest of those durations, from a renewal thread (one per process): the blocking call (an LDAP
write that waits for a DC) needs no change. A fast item ends before the first renewal and costs no write.

A renewal that finds its lease gone (taken over after all, settled elsewhere) is logged and not tried again:
the step's own settlement then finds out whose it is, as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType

from lifecycle.observability import log

# A renewal reports whether the lease is still held: False stops renewing it (with a warning), None too (quietly:
# there was nothing to keep); an exception is logged and the renewal tried again next time.
Renewal = Callable[[], bool | None]


class _Lease:
    """One held lease: what renews it, and when next."""

    __slots__ = ("due", "interval", "name", "renew")

    def __init__(self, name: str, renew: Renewal, interval: float, due: float) -> None:
        self.name, self.renew, self.interval, self.due = name, renew, interval, due


class _Renewer:
    """The process's one renewal thread (started on first use): renews each held lease when it is due.

    One thread for every worker thread's leases, so that an item costs a registration, not a thread start.
    Letting go of a lease waits for an in-flight renewal of that lease (and only that one), so nothing extends
    a lease after its holder settled it (released, finished, ended at once).
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._leases: set[_Lease] = set()
        self._running: _Lease | None = None
        self._thread: threading.Thread | None = None

    def add(self, lease: _Lease) -> None:
        with self._changed:
            self._leases.add(lease)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def remove(self, lease: _Lease) -> None:
        with self._changed:
            self._leases.discard(lease)
            while self._running is lease:
                self._changed.wait()

    def _run(self) -> None:
        while True:
            with self._changed:
                earliest = min(self._leases, key=lambda held: held.due, default=None)
                if earliest is None or earliest.due > time.monotonic():
                    self._changed.wait(None if earliest is None else earliest.due - time.monotonic())
                    continue
                lease = self._running = earliest
            try:
                kept = self._renew(lease)
            finally:
                with self._changed:
                    self._running = None
                    lease.due = time.monotonic() + lease.interval
                    if not kept:
                        self._leases.discard(lease)
                    self._changed.notify_all()

    @staticmethod
    def _renew(lease: _Lease) -> bool:
        """Renew once; whether to keep renewing."""
        try:
            kept = lease.renew()
        except Exception as exc:  # a store or broker hiccup: the lease may still run a while
            log.warning("could not renew %s (%s); trying again in %.1f s", lease.name, exc, lease.interval)
            return True
        if kept is False:
            log.warning("%s was no longer ours to renew (taken over or settled elsewhere)", lease.name)
        return bool(kept)


_RENEWER = _Renewer()


class LeaseKeeper:
    """Renews the leases held through it (``hold``) every ``interval`` seconds, first ``interval`` seconds after
    each is taken, while it is entered (``with keeper:``).

    Args:
        interval: Seconds between renewals; a third of the shortest lease held keeps two renewals in hand.
    """

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = interval
        self._held: list[_Lease] = []

    def __enter__(self) -> LeaseKeeper:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for lease in self._held:
            _RENEWER.remove(lease)
        self._held.clear()

    @contextmanager
    def hold(self, name: str, renew: Renewal) -> Iterator[None]:
        """Renew ``renew`` (named ``name`` in the log) until the block ends; when it returns, no renewal of it
        is running or will run."""
        lease = _Lease(name, renew, self.interval, time.monotonic() + self.interval)
        self._held.append(lease)
        _RENEWER.add(lease)
        try:
            yield
        finally:
            _RENEWER.remove(lease)
            self._held.remove(lease)


def renewal_interval(lease_seconds: float, locked_until: datetime | None, now: float) -> float:
    """A third of the shortest of the step lease and what is left of the message's lock (never below 0.1 s)."""
    shortest = lease_seconds
    if locked_until is not None and locked_until.timestamp() > now:
        shortest = min(shortest, locked_until.timestamp() - now)
    return max(shortest / 3, 0.1)
