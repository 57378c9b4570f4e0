"""Halo's rate limit, kept on our side: per process (``RateLimiter``) and across instances (``SharedRateLimiter``).

Hosted Halo allows 300 requests per rolling 5 minutes. The limiter lets a request go only while fewer than
``limit`` requests were answered within the last ``window`` seconds (counting those in flight), and starts a
request's window when its answer arrived, so however the network delays requests Halo never sees more than
``limit`` in a window.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any


class LimiterBusy(Exception):
    """The rate limiter has no free slot within the caller's patience."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"no request slot for {wait:.1f} s")
        self.wait = wait


class RateLimiter:
    """At most ``limit`` requests per rolling ``window`` seconds, measured so the server never sees more.

    A request takes a slot before it is sent and gives it back when its answer arrived; the slot is free again
    ``window`` seconds after that. Since a request reaches the server after it was sent and before its answer
    arrives, any two requests ``limit`` apart reach the server more than ``window`` seconds apart. Thread-safe.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("the rate limit needs limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._released: deque[float] = deque()
        self._in_flight = 0
        self._lock = threading.Condition()
        # For reports and tests: how often and how long callers waited for a slot.
        self.waits = 0
        self.waited_seconds = 0.0

    def _free_in(self, now: float) -> float | None:
        """Seconds until a slot frees (0: one is free now); None when every slot is in flight."""
        while self._released and self._released[0] + self.window <= now:
            self._released.popleft()
        if self._in_flight + len(self._released) < self.limit:
            return 0.0
        if not self._released:
            return None
        return self._released[0] + self.window - now

    def acquire(self, max_wait: float) -> None:
        """Take a slot, waiting up to ``max_wait`` seconds; raises ``LimiterBusy`` with the wait needed."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                wait = self._free_in(now)
                if wait == 0.0:
                    self._in_flight += 1
                    if waited:
                        self.waits += 1
                        self.waited_seconds += waited
                    return
                if wait is None:
                    # Every slot is held by a request in flight: its answer frees one (plus the window).
                    if waited >= max_wait:
                        raise LimiterBusy(self.window)
                    started = self._clock()
                    self._lock.wait(timeout=min(1.0, max(0.01, max_wait - waited)))
                    waited += max(0.0, self._clock() - started)
                    continue
            if waited + wait > max_wait:
                raise LimiterBusy(wait)
            # A hair over the edge: the slot's window must have passed, not just reached, when we send.
            wait += 0.001
            self._sleep(wait)
            waited += wait

    def release(self) -> None:
        """Give back a slot: its request was answered (or failed) now."""
        with self._lock:
            self._in_flight -= 1
            self._released.append(self._clock())
            self._lock.notify_all()

    @contextmanager
    def slot(self, max_wait: float) -> Iterator[None]:
        self.acquire(max_wait)
        try:
            yield
        finally:
            self.release()


class SharedRateLimiter:
    """The rate limit across every instance: a sliding window of request slots kept in the store.

    Each request takes a slot in the store's ``halo-rate`` window (an atomic check-and-record shared by all
    processes, embedded or Table storage) before it is sent, and moves the slot to the time its answer arrived
    when it is done, so, as with ``RateLimiter``, requests ``limit`` apart reach Halo more than ``window``
    seconds apart whichever instance sent them. A full window is polled until a slot frees.
    """

    WINDOW = "halo-rate"

    def __init__(
        self,
        store: Any,
        limit: int,
        window: float,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self.waits = 0

    def acquire(self, max_wait: float) -> str:
        """Take a slot (returns its key), waiting up to ``max_wait`` seconds; raises ``LimiterBusy``."""
        import uuid

        key = uuid.uuid4().hex
        waited = 0.0
        # Poll about ten times per slot's share of the window: quick enough, and cheap for the store.
        step = max(0.01, min(1.0, self.window / self.limit / 2))
        while True:
            now = datetime.fromtimestamp(self._clock(), UTC)
            admission = self.store.admit_destructive(
                key, now=now, window_seconds=self.window, limit=self.limit, window=self.WINDOW
            )
            if admission.admitted:
                if waited:
                    self.waits += 1
                return key
            if waited + step > max_wait:
                raise LimiterBusy(step)
            self._sleep(step)
            waited += step

    def release(self, key: str) -> None:
        """The request's answer arrived now: its slot's window starts now."""
        self.store.touch_window(key, now=datetime.fromtimestamp(self._clock(), UTC), window=self.WINDOW)

    @contextmanager
    def slot(self, max_wait: float) -> Iterator[None]:
        key = self.acquire(max_wait)
        try:
            yield
        finally:
            self.release(key)
