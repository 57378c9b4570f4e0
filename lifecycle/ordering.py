"""One person's order: person gates and the stale-event rule.

**Order per person.** The queue delivers one person's messages one at a time, in order. A back-off on the
embedded queue keeps the message at the head of its session; on Service Bus it is a scheduled copy that
queues *behind* the person's later messages. So a back-off (or a wait for a set-up problem) also closes the
person's *gate* in the store (``PersonGate``): a later item of the person that arrives while the gate is
closed is not run but rescheduled to come back after the holder, in arrival order, and the gate opens when
the holder is settled (completed, dead-lettered, skipped, held). A gate whose holder has not come back long
after its time (crash-looped into the dead-letter queue, purged) lapses, so nobody waits for good.

**Stale events.** An event older than the last one applied is a stale snapshot and is skipped (audited,
counted), except: staged work (its event is old on purpose; a rehire cancels it instead), thin events (the
user is fetched now, so the snapshot is current), the work of a ticket request (it runs as approved in the
ticket), and a leaver or deletion, which is skipped only when the
newer applied event was itself a leaver or deletion (deprovisioning never fails open). Items approved from
the mass-change guard's hold and replayed items are snapshots like any other: they are skipped only when a
newer snapshot of the person was applied (whose own plan already decided the same attributes), never for the
time they spent held or dead-lettered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from lifecycle.errors import LifecycleError
from lifecycle.observability import log
from lifecycle.queue import RETRY_OF, ReceivedMessage
from lifecycle.state import PersonGate, PersonRecord
from lifecycle.work import WorkItem

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime

# Items waiting at a person's gate come back this far apart after the holder, in the order they arrived.
GATE_SPACING_SECONDS = 2.0
# A gate whose holder is this late (crash-looped into the dead-letter queue, purged) lapses.
GATE_LAPSE_SECONDS = 900.0


class PersonGates:
    """The gates of the people whose items back off, on the runtime's store and queue."""

    def __init__(self, runtime: Runtime, *, clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self._clock = clock

    @staticmethod
    def _root_id(message: ReceivedMessage) -> str:
        return message.properties.get(RETRY_OF) or message.message_id

    def wait(self, message: ReceivedMessage, item: WorkItem) -> str | None:
        """Reschedule ``message`` behind the item of its person that backs off and say why; None when it may
        run now."""
        store = self.runtime.store
        gate = store.get_gate(item.event.user_id)
        root = self._root_id(message)
        if gate is None or gate.holder == root:
            return None
        now = self._clock()
        if now > gate.until.timestamp() + GATE_LAPSE_SECONDS:
            log.warning(
                "the person's gate lapsed: %s was due back at %s and never came; later items run",
                gate.holder,
                gate.until.isoformat(),
            )
            store.drop_gate(item.event.user_id)
            return None
        waiting = gate.waiting if root in gate.waiting else (*gate.waiting, root)
        if waiting != gate.waiting:
            store.put_gate(PersonGate(gate.user_id, gate.holder, gate.until, waiting))
        position = waiting.index(root) + 1
        delay = max(0.0, gate.until.timestamp() - now) + GATE_SPACING_SECONDS * position
        reason = f"waits behind {gate.holder}, an earlier item of this person that is backing off"
        self.runtime.queue.retry_later(message, delay, reason)
        log.info("%s; back in %.0f s", reason, delay)
        return reason

    def close(self, message: ReceivedMessage, item: WorkItem, delay: float) -> None:
        """Hold the person's later items until this one comes back (best effort: a store that fails here is
        the store that fails the items too)."""
        store = self.runtime.store
        root = self._root_id(message)
        until = datetime.fromtimestamp(self._clock() + delay, UTC)
        try:
            gate = store.get_gate(item.event.user_id)
            if gate is None or gate.holder == root:
                store.put_gate(PersonGate(item.event.user_id, root, until, gate.waiting if gate else ()))
            elif root in gate.waiting:
                # A waiter that lapsed the gate and then backed off itself: it is the holder now.
                rest = tuple(w for w in gate.waiting if w != root)
                store.put_gate(PersonGate(item.event.user_id, root, until, rest))
        except LifecycleError as exc:
            log.warning("could not close the person's gate (%s); order holds only by the stale check", exc)

    def renew(self, message: ReceivedMessage, item: WorkItem) -> bool | None:
        """While the holder runs (a slow DC), keep its gate from lapsing: ``until`` moves up to now.

        Returns None when this item holds no gate (nothing to keep), else True (a LeaseKeeper renewal).
        """
        store = self.runtime.store
        gate = store.get_gate(item.event.user_id)
        if gate is None or gate.holder != self._root_id(message):
            return None
        now = datetime.fromtimestamp(self._clock(), UTC)
        if gate.until < now:
            store.put_gate(PersonGate(gate.user_id, gate.holder, now, gate.waiting))
        return True

    def leave(self, message: ReceivedMessage, item: WorkItem) -> None:
        """The holder is settled: the first waiter becomes the holder (it is already on its way back).

        The message is settled already, so a store that fails here only delays the waiters: the gate lapses.
        """
        store = self.runtime.store
        root = self._root_id(message)
        try:
            gate = store.get_gate(item.event.user_id)
            if gate is None or gate.holder != root:
                return
            if not gate.waiting:
                store.drop_gate(item.event.user_id)
                return
            until = datetime.fromtimestamp(max(gate.until.timestamp(), self._clock()) + GATE_SPACING_SECONDS, UTC)
            store.put_gate(PersonGate(gate.user_id, gate.waiting[0], until, gate.waiting[1:]))
        except LifecycleError as exc:
            log.warning("could not open the person's gate (%s); it lapses in %.0f s", exc, GATE_LAPSE_SECONDS)


def stale_reason(item: WorkItem, person: PersonRecord | None) -> str | None:
    """Why ``item`` is a stale snapshot of the person that must not run, or None when it runs."""
    event = item.event
    if person is None or item.lifecycle == "staged" or event.is_thin or item.request_id is not None:
        # Staged work is old on purpose (a rehire cancels it); a thin event's user is fetched now; a ticket
        # request's work runs as it was approved in the ticket, however long the approval took.
        return None
    if event.occurred_at >= person.last_event_at:
        return None
    leaving = event.kind == "deleted" or (event.user or {}).get("inactive") is True
    if leaving and person.status != "left":
        # Deprovisioning never fails open: an older leaver still runs unless a newer leaver or deletion ran.
        return None
    return (
        f"stale: an event of {person.last_event_at.isoformat()} was already applied; this one is of "
        f"{event.occurred_at.isoformat()} and would undo it"
    )
