"""Memory of signed deliveries: a body or delivery seen once is a duplicate however long the queue remembers.

A request vouched for by its body signature alone is accepted only within a time window of its timestamp. Inside
that window the same captured body could be posted again; the queue's duplicate detection would catch it only
for as long as its own window lasts. So the body's digest and each element's work id (Halo's delivery id and
the event kind) are recorded in the store's journal, a conditional write every adapter already keeps, and a
record never expires: longer than any signing window. The record is written after the work is enqueued, and
dropped when enqueuing failed, so a delivery Halo sends again after a failure is never lost as a "duplicate".
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime
    from lifecycle.work import WorkItem

_STEP = "signed-delivery"
# Long enough for one request to enqueue; a crashed request's claim can be taken over after it.
_LEASE_SECONDS = 120.0


class ReplayMemory:
    """Claims for one signed request: the body digest and one claim per work item."""

    def __init__(self, runtime: Runtime, body: bytes, items: Sequence[WorkItem], secret_kind: str | None) -> None:
        self._store = runtime.store
        self._owner = uuid.uuid4().hex
        # Per secret: the same bytes verified by another kind's secret are another delivery.
        self._body_key = f"signed-body-{secret_kind or 'shared'}-" + hashlib.sha256(body).hexdigest()
        self._item_keys = {item.work_id: "signed-work-" + item.work_id for item in items}
        self._held: list[str] = []
        self.body_seen = False

    def claim(self) -> set[str]:
        """Claim the body and every work id; returns the work ids seen before (all of them for a seen body)."""
        body = self._store.claim_step(self._body_key, _STEP, self._owner, _LEASE_SECONDS)
        if body.status != "acquired":
            self.body_seen = True
            return set(self._item_keys)
        self._held.append(self._body_key)
        seen: set[str] = set()
        for work_id, key in self._item_keys.items():
            claim = self._store.claim_step(key, _STEP, self._owner, _LEASE_SECONDS)
            if claim.status == "acquired":
                self._held.append(key)
            else:
                seen.add(work_id)
        return seen

    def finish(self) -> None:
        """Record every claim as done: from now on these are duplicates."""
        for key in self._held:
            self._store.finish_step(key, _STEP, self._owner, {"seen": True})
        self._held.clear()

    def release(self) -> None:
        """Drop the claims after a failure, so the same delivery sent again is accepted."""
        for key in self._held:
            self._store.release_step(key, _STEP, self._owner)
        self._held.clear()
