"""The lease keeper (lifecycle/leases.py) and the gate renewal it drives (lifecycle/ordering.py).

The end-to-end proof, a slow DC past the lock and the lease with two workers, is
tests/reliability/test_lease_renewal.py; these pin the keeper's own promises.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest

from lifecycle.leases import LeaseKeeper, renewal_interval
from lifecycle.ordering import GATE_LAPSE_SECONDS, PersonGates
from lifecycle.queue import ReceivedMessage
from lifecycle.runtime import Runtime
from lifecycle.state import PersonGate
from lifecycle.work import WorkItem

WAIT = 10.0  # a bound on waiting for the keeper's thread, never a pause


def test_a_held_lease_is_renewed_until_its_hold_ends_and_never_after() -> None:
    renewed = threading.Event()
    calls: list[str] = []

    def renew() -> bool:
        calls.append("renew")
        renewed.set()
        return True

    with LeaseKeeper(0.01) as keeper:
        with keeper.hold("lease", renew):
            assert renewed.wait(WAIT), "the keeper never renewed the held lease"
        after = len(calls)
        # Another hold's renewal proves the keeper ran again, and the ended hold was not renewed by it.
        again = threading.Event()

        def renew_other() -> bool:
            again.set()
            return True

        with keeper.hold("other", renew_other):
            assert again.wait(WAIT)
        assert len(calls) == after


def test_a_lease_found_lost_or_with_nothing_to_keep_is_not_renewed_again() -> None:
    counts = {"lost": 0, "nothing": 0, "kept": 0}
    third = threading.Event()

    def count(name: str, answer: bool | None) -> Any:
        def renew() -> bool | None:
            counts[name] += 1
            if counts["kept"] >= 3:
                third.set()
            return answer

        return renew

    with (
        LeaseKeeper(0.01) as keeper,
        keeper.hold("lost", count("lost", False)),
        keeper.hold("nothing", count("nothing", None)),
        keeper.hold("kept", count("kept", True)),
    ):
        assert third.wait(WAIT)
    assert counts["lost"] == 1 and counts["nothing"] == 1 and counts["kept"] >= 3


def test_the_interval_is_a_third_of_the_shortest_of_the_lease_and_the_lock_left() -> None:
    now = 1_750_000_000.0
    assert renewal_interval(120.0, datetime.fromtimestamp(now + 60, UTC), now) == pytest.approx(20.0)
    assert renewal_interval(6.0, datetime.fromtimestamp(now + 60, UTC), now) == pytest.approx(2.0)
    assert renewal_interval(6.0, None, now) == pytest.approx(2.0)  # the host renews the lock
    with pytest.raises(ValueError, match="positive"):
        LeaseKeeper(0)


def received(message_id: str) -> ReceivedMessage:
    return ReceivedMessage(message_id, "7", b"{}", {}, 1, datetime.fromtimestamp(0, UTC), "token")


def test_a_running_holder_keeps_its_gate_from_lapsing_and_nobody_else_touches_it(runtime: Runtime) -> None:
    clock = {"now": 1_750_000_000.0}
    gates = PersonGates(runtime, clock=lambda: clock["now"])
    item = cast(WorkItem, SimpleNamespace(event=SimpleNamespace(user_id=7)))
    store = runtime.store
    assert gates.renew(received("holder"), item) is None  # no gate: nothing to keep

    due = datetime.fromtimestamp(clock["now"], UTC)
    store.put_gate(PersonGate(7, "holder", due, ("later",)))
    clock["now"] += GATE_LAPSE_SECONDS  # the holder came back on time and has been running since
    assert gates.renew(received("someone-else"), item) is None
    assert store.get_gate(7) == PersonGate(7, "holder", due, ("later",))
    assert gates.renew(received("holder"), item) is True
    gate = store.get_gate(7)
    # Its due time moves up to now: a waiter lapses it only GATE_LAPSE_SECONDS after the holder stops running.
    assert gate is not None and gate.until == datetime.fromtimestamp(clock["now"], UTC) and gate.waiting == ("later",)
