"""Counting (and timing) the LDAP operations a piece of code sends, by wrapping ldap3's Connection methods.

``ADTarget.operations`` counts every operation of one target; this splits them into reads and writes and also
sees the raw-ldap3 baselines, so both sides of a comparison are counted the same way.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

OPERATIONS = ("search", "add", "modify", "modify_dn", "delete")
READS = frozenset({"search"})


@dataclass
class LdapTally:
    """Operations and seconds spent waiting on them, per operation name, for the threads being counted."""

    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    by_operation: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def reads(self) -> int:
        return sum(n for op, n in self.counts.items() if op in READS)

    @property
    def writes(self) -> int:
        return self.total - self.reads

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.seconds = 0.0
            self.by_operation.clear()

    def snapshot(self) -> tuple[Counter[str], float]:
        with self.lock:
            return Counter(self.counts), self.seconds


@contextlib.contextmanager
def counting() -> Iterator[LdapTally]:
    """Wrap ldap3's Connection operations for the duration; yields the tally they add to."""
    import ldap3  # type: ignore[import-untyped]

    tally = LdapTally()
    originals: dict[str, Callable[..., Any]] = {name: getattr(ldap3.Connection, name) for name in OPERATIONS}

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                with tally.lock:
                    tally.counts[name] += 1
                    tally.seconds += elapsed
                    tally.by_operation[name] = tally.by_operation.get(name, 0.0) + elapsed

        return wrapper

    for name, original in originals.items():
        setattr(ldap3.Connection, name, wrap(name, original))
    try:
        yield tally
    finally:
        for name, original in originals.items():
            setattr(ldap3.Connection, name, original)
