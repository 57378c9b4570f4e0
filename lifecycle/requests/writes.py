"""Writes to Halo that happen at most once per request and purpose: the joiner's Halo user, the ticket's link
to it, each note, each status change, across retries, redeliveries, replays and timer runs.

Each is claimed in the step journal under ``request:<request id>`` first; an attempt interrupted after Halo took
the write (a lost answer, a killed worker) leaves its claim with a note, and the next attempt asks ``recover``
whether the write is there (a note is found on the ticket by its reference line: action ids are unique only
within a ticket) before writing again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lifecycle.errors import Permanent, Retryable
from lifecycle.halo.tickets import HaloTickets, _whole, note_outcome
from lifecycle.observability import log
from lifecycle.requests import notes

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime
    from lifecycle.settings import Settings

PENDING_PREFIX = "request:"
_LEASE_SECONDS = 120.0


class HaloWrites:
    """The exactly-once Halo writes of the ticket loop (``TicketRequests`` builds on it)."""

    runtime: Runtime
    settings: Settings
    owner: str
    _clock: Callable[[], float]

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _halo(self) -> HaloTickets:
        client = self.runtime.halo
        if client is None:
            raise Permanent(
                "ticket requests need Halo's API: set LIFECYCLE_HALO_API_URL, LIFECYCLE_HALO_CLIENT_ID and "
                "LIFECYCLE_HALO_CLIENT_SECRET"
            )
        return HaloTickets(client)  # type: ignore[arg-type]

    def _channel(self) -> str:
        s = self.settings
        return notes.password_channel(s.password_delivery, s.password_mail_fallback, s.password_mail_sender)

    # Exactly-once Halo writes ------------------------------------------------------------------------------
    def _once(
        self, request_id: str, key: str, write: Callable[[], dict[str, Any]], *, recover: Callable[[], bool]
    ) -> bool:
        """Run ``write`` once per (request, key); ``recover`` tells whether an interrupted attempt took effect.

        Returns True when this call wrote, False when it had been done before.
        """
        store = self.runtime.store
        work_id = f"{PENDING_PREFIX}{request_id}"
        claim = store.claim_step(work_id, key, self.owner, _LEASE_SECONDS)
        if claim.status == "done":
            return False
        if claim.status == "busy":
            raise Retryable(f"request {request_id}: {key} is being written by another worker", retry_after=30.0)
        if claim.note is not None and recover():
            store.finish_step(work_id, key, self.owner, {"recovered": True})
            return False
        store.note_step(work_id, key, self.owner, {"began": self._now().isoformat()})
        try:
            result = write()
        except Retryable:
            store.claim_step(work_id, key, self.owner, 0.0)  # may have landed: the next attempt checks first
            raise
        except BaseException:
            store.release_step(work_id, key, self.owner)
            raise
        store.finish_step(work_id, key, self.owner, result)
        return True

    def post_note(self, request_id: str, ticket_id: int, note: notes.Note) -> bool:
        """Post ``note`` to the ticket unless it was posted before; True when posted now."""
        halo = self._halo()
        outcome = note_outcome(self.settings.halo_note_outcome)
        ref = notes.marker(request_id, note.key)

        def write() -> dict[str, Any]:
            action_id = halo.post_note(ticket_id, text=note.text, html=note.html, outcome=outcome)
            log.info("posted note %s to ticket %s (action %s)", note.key, ticket_id, action_id)
            return {"action_id": action_id}

        def recover() -> bool:
            return any(ref in str(a.get("note") or "") + str(a.get("note_html") or "") for a in halo.actions(ticket_id))

        return self._once(request_id, f"note:{note.key}", write, recover=recover)

    def note_time(self, request_id: str, ticket_id: int, key: str) -> datetime | None:
        """When Halo says it took the note ``key`` (its action's ``datetime``, Halo's clock), or None when the
        ticket's actions do not show it (approvals are dated by the same clock, so they compare with this)."""
        from lifecycle.requests.planning import halo_time

        ref = notes.marker(request_id, key)
        try:
            actions = self._halo().actions(ticket_id)
        except (Retryable, Permanent) as exc:
            log.warning("request %s: the plan note's time could not be read back: %s", request_id, exc)
            return None
        stamps = [
            halo_time(a.get("datetime"))
            for a in actions
            if ref in str(a.get("note") or "") + str(a.get("note_html") or "")
        ]
        return max((t for t in stamps if t is not None), default=None)

    def set_status(self, request_id: str, ticket_id: int, outcome: str, key: str) -> None:
        """Move the ticket to the status configured for ``outcome`` (once per ``key``), when one is."""
        status_id = self.settings.halo_ticket_statuses.get(outcome)
        if status_id is None:
            return
        halo = self._halo()

        def write() -> dict[str, Any]:
            halo.set_status(ticket_id, status_id)
            return {"status_id": status_id}

        self._once(request_id, f"status:{key}", write, recover=lambda: False)

    def link_ticket(self, request_id: str, ticket: dict[str, Any], user_id: int) -> str:
        """Make the joiner's Halo user the ticket's user, once per request, when the ticket has no user yet.

        A ticket whose user is someone else (the manager who raised it, usually) keeps that user: changing it
        would move the ticket's e-mails and portal view away from them. Returns the sentence the plan note
        carries about it then, and "" otherwise.
        """
        ticket_id = int(ticket["id"])
        current = _whole(ticket.get("user_id")) or 0
        if current == user_id:
            return ""
        if current:
            name = str(ticket.get("user_name") or "").strip()
            log.info("ticket %s keeps its user %s; the new person is Halo user %s", ticket_id, current, user_id)
            return (
                f"The ticket's user stays Halo user {current}{f' ({name})' if name else ''}: the service does not "
                f"replace a ticket's user; the new person is Halo user {user_id}."
            )
        halo = self._halo()

        def write() -> dict[str, Any]:
            halo.set_user(ticket_id, user_id)
            log.info("linked ticket %s to Halo user %s", ticket_id, user_id)
            return {"user_id": user_id}

        def recover() -> bool:
            # An attempt stopped after Halo took the update: the ticket already names the person.
            raw = halo.fetch_ticket(ticket_id)
            return raw is not None and _whole(raw.get("user_id")) == user_id

        self._once(request_id, "ticket-user", write, recover=recover)
        return ""
