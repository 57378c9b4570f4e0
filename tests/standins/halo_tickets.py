"""Halo's tickets, actions, approvals, outcomes and statuses for the Halo stand-in (tests/standins/halo.py).

After Halo's OpenAPI (v2, 2024-09; ``shared/reference/halo-openapi-subset.json``) and the notes with sources
in ``shared/reference/halo-tickets.md`` (tags in brackets). Where Halo's behaviour is unconfirmed, the
stand-in does the worst plausible thing, said at each place.

- ``GET /api/Tickets/{id}``: the ticket, unwrapped; ``customfields`` and ``approvers`` only with
  ``includedetails=true`` ("Include extra objects in the response" [SW]; worst case: absent otherwise).
- ``POST /api/Tickets``: an array; an item with an existing ``id`` updates only the fields it carries [SW]
  [DJ-tmodel]; ``customfields`` items are matched by ``id`` (omitted ones untouched: unconfirmed, likely).
  ``user_id`` is a ``Faults`` field [SW]: an update carrying it makes that user the ticket's user, and the
  ticket keeps it (recorded in ``user_changes``); ``_``-flags such as ``_dont_fire_automations`` are taken and
  not stored (their effect is unconfirmed [SW]).
- ``POST /api/Actions``: an array; 400 without ``ticket_id``; 400 "An Outcome must be entered for this
  Action" without ``outcome``/``outcome_id`` [HA-e2e][CIPP]; an outcome the instance lacks is refused too
  (worst case). Action ids count per ticket from 1 [HA-e2e][DJ-action]. A one-item post answers the object
  [DJ-action].
- ``GET /api/Actions?ticket_id=N``: ``{record_count, actions}`` [HA-get].
- ``GET /api/Outcome``, ``GET /api/Status``: the instance's lists (ids differ per instance [SW]).
- ``POST /api/ticketapproval`` ``[{ticket_id, seq, actionnumber, result}]``: 1 approves, 2 rejects [G2345];
  all approved -> the process is approved and the ticket moves to the step's "status after accept"; any
  rejection -> rejected, "status after reject" [G2396][G969]. ``GET /api/TicketApproval?ticket_id=N``.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.standins.halo import _Handler

OUTCOME_REQUIRED = "An Outcome must be entered for this Action"
# A default instance's outcomes and statuses (ids are per instance; these are the stand-in's).
OUTCOMES: tuple[dict[str, Any], ...] = (
    {"id": 7, "outcome": "Private Note", "hidefromuser": True},
    {"id": 8, "outcome": "Update", "hidefromuser": False},
)
STATUSES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "New"},
    {"id": 20, "name": "Awaiting Approval"},
    {"id": 21, "name": "Approved"},
    {"id": 22, "name": "Rejected"},
    {"id": 23, "name": "Scheduled"},
    {"id": 9, "name": "Closed"},
)
_STATUS_NAMES = {s["id"]: s["name"] for s in STATUSES}


def _wall_clock() -> datetime:
    return datetime.now(UTC)


class TicketDesk:
    """The tickets of one stand-in instance, with test controls (``add``, ``change``, ``start_approval``,
    ``decide``) and what was posted (``notes``, ``status_changes``)."""

    def __init__(self, clock: Callable[[], datetime] = _wall_clock) -> None:
        # Halo's clock: tests that inject the service's clock give the stand-in the same one.
        self.clock = clock
        self._lock = threading.RLock()
        self.tickets: dict[int, dict[str, Any]] = {}
        self.actions: dict[int, list[dict[str, Any]]] = {}
        self.status_changes: list[tuple[int, int]] = []
        self.user_changes: list[tuple[int, int]] = []
        self.refused_actions: list[str] = []
        self._next_id = 5000

    def _now(self) -> str:
        # Halo's date-times are UTC without an offset, to the second.
        return self.clock().astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")

    # Test controls -----------------------------------------------------------------------------------------
    def add(self, **fields: Any) -> dict[str, Any]:
        """A new ticket; custom fields as ``customfields=[{"id", "name", "value", ...}]``."""
        with self._lock:
            self._next_id += 1
            ticket = {
                "id": self._next_id,
                "summary": "",
                "status_id": 1,
                "status_name": "New",
                "client_id": 12,
                "client_name": "DemoDoftware",
                "site_id": 18,
                "site_name": "Main",
                "user_id": 0,
                "customfields": [],
                "approval_status": 0,
                "approvers": [],
                "faultapprovalfailed": False,
                "hasbeenclosed": False,
                "last_update": self._now(),
                **copy.deepcopy(fields),
            }
            self.tickets[ticket["id"]] = ticket
            self.actions[ticket["id"]] = []
            return copy.deepcopy(ticket)

    def change(self, ticket_id: int, *, custom: dict[str, Any] | None = None, **fields: Any) -> None:
        """Change fields (and custom fields by name) as an agent editing the ticket would."""
        with self._lock:
            ticket = self.tickets[ticket_id]
            ticket.update(copy.deepcopy(fields))
            for name, value in (custom or {}).items():
                entry = next((c for c in ticket["customfields"] if c["name"] == name), None)
                if entry is None:
                    entry = {"id": 200 + len(ticket["customfields"]), "name": name, "type": 0}
                    ticket["customfields"].append(entry)
                entry["value"] = value
                entry["display"] = value
            if "status_id" in fields:
                ticket["status_name"] = _STATUS_NAMES.get(int(fields["status_id"]), "")
            ticket["last_update"] = self._now()

    def start_approval(
        self, ticket_id: int, approvers: list[str], *, after_accept: int = 21, after_reject: int = 22
    ) -> None:
        """(Re)start the approval process: each approver pending, the ticket awaiting approval [G2396]."""
        with self._lock:
            ticket = self.tickets[ticket_id]
            ticket["approvers"] = [
                {"seq": i + 1, "actionnumber": 1, "name": name, "result": 0, "ticket_id": ticket_id}
                for i, name in enumerate(approvers)
            ]
            ticket["approval_status"] = 0
            ticket["faultapprovalfailed"] = False
            ticket["approval_process_id"] = 3
            ticket["_after"] = (after_accept, after_reject)
            self.change(ticket_id, status_id=20)

    def decide(self, ticket_id: int, seq: int, result: int) -> None:
        """An approver's decision, as ``POST /api/ticketapproval`` records it [G2345]."""
        with self._lock:
            ticket = self.tickets[ticket_id]
            for approver in ticket["approvers"]:
                if approver["seq"] == seq:
                    approver["result"] = result
                    approver["dateapproved"] = self._now()
            results = [a["result"] for a in ticket["approvers"]]
            after_accept, after_reject = ticket.get("_after", (21, 22))
            if 2 in results:
                ticket["approval_status"] = 2
                ticket["faultapprovalfailed"] = True
                self.change(ticket_id, status_id=after_reject)
            elif results and all(r == 1 for r in results):
                ticket["approval_status"] = 1
                self.change(ticket_id, status_id=after_accept)

    def notes(self, ticket_id: int) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self.actions.get(ticket_id, []))

    # Routes ------------------------------------------------------------------------------------------------
    @staticmethod
    def route_name(method: str, lowered: str) -> str | None:
        for prefix, name in (("/api/tickets/", "Tickets/{id}"), ("/api/actions/", "Actions/{id}")):
            if lowered.startswith(prefix):
                return f"{method} /api/{name}"
        names = {
            "/api/tickets": "Tickets",
            "/api/actions": "Actions",
            "/api/outcome": "Outcome",
            "/api/status": "Status",
            "/api/ticketapproval": "TicketApproval",
        }
        return f"{method} /api/{names[lowered]}" if lowered in names else None

    def handle(self, request: _Handler, method: str, path: str, query: dict[str, str], body: bytes) -> bool:
        """Serve a ticket route; False when ``path`` is not one."""
        lowered = path.lower()
        if lowered.startswith("/api/tickets/") and method == "GET":
            raw = path.rsplit("/", 1)[1]
            ticket = self.tickets.get(int(raw)) if raw.isdigit() else None
            if ticket is None:
                request._reply(404, {"message": f"Ticket {raw} not found"})
                return True
            with self._lock:
                shown = {k: v for k, v in copy.deepcopy(ticket).items() if not k.startswith("_")}
            if query.get("includedetails", "false").lower() != "true":
                shown.pop("customfields", None)
                shown.pop("approvers", None)
            request._reply(200, shown)
            return True
        if lowered == "/api/tickets" and method == "POST":
            self._update_tickets(request, body)
            return True
        if lowered == "/api/actions" and method == "POST":
            self._post_actions(request, body)
            return True
        if lowered == "/api/actions" and method == "GET":
            ticket_id = int(query.get("ticket_id", "0") or 0)
            actions = self.notes(ticket_id)
            request._reply(200, {"record_count": len(actions), "actions": actions})
            return True
        if lowered == "/api/outcome" and method == "GET":
            request._reply(200, list(OUTCOMES))
            return True
        if lowered == "/api/status" and method == "GET":
            request._reply(200, list(STATUSES))
            return True
        if lowered == "/api/ticketapproval" and method == "GET":
            with self._lock:
                ticket = self.tickets.get(int(query.get("ticket_id", "0") or 0))
                request._reply(200, copy.deepcopy(ticket["approvers"]) if ticket else [])
            return True
        if lowered == "/api/ticketapproval" and method == "POST":
            items = json.loads(body or b"[]")
            for item in items:
                self.decide(int(item["ticket_id"]), int(item["seq"]), int(item["result"]))
            request._reply(200, items)
            return True
        return False

    def _items(self, request: _Handler, body: bytes) -> list[dict[str, Any]] | None:
        try:
            items = json.loads(body)
        except ValueError:
            request._reply(400, {"message": "the body is not JSON"})
            return None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            request._reply(400, {"message": "send an array"})  # every Halo write is an array [HA-post]
            return None
        return items

    def _update_tickets(self, request: _Handler, body: bytes) -> None:
        items = self._items(request, body)
        if items is None:
            return
        saved = []
        for item in items:
            ticket_id = int(item.get("id") or 0)
            if ticket_id not in self.tickets:
                request._reply(400, {"message": f"Ticket {ticket_id} not found"})
                return
            fields = {k: v for k, v in item.items() if not k.startswith("_") and k not in ("id", "customfields")}
            custom = {c["name"]: c.get("value") for c in item.get("customfields") or [] if "name" in c}
            self.change(ticket_id, custom=custom, **fields)
            if "status_id" in fields:
                with self._lock:
                    self.status_changes.append((ticket_id, int(fields["status_id"])))
            if "user_id" in fields:
                # The ticket's user, set by the update as Halo's schema has it (Faults.user_id) [SW].
                with self._lock:
                    self.user_changes.append((ticket_id, int(fields["user_id"])))
            saved.append(copy.deepcopy(self.tickets[ticket_id]))
        request._reply(200, saved[0] if len(saved) == 1 else saved)

    def _post_actions(self, request: _Handler, body: bytes) -> None:
        items = self._items(request, body)
        if items is None:
            return
        known_ids = {o["id"] for o in OUTCOMES}
        known_names = {o["outcome"].lower() for o in OUTCOMES}
        for item in items:
            ticket_id = int(item.get("ticket_id") or 0)
            if ticket_id not in self.tickets:
                request._reply(400, {"message": "A valid Ticket ID must be entered for this Action"})
                return
            outcome_id, outcome = item.get("outcome_id"), str(item.get("outcome") or "")
            if outcome_id in (None, 0) and not outcome:
                self.refused_actions.append(OUTCOME_REQUIRED)
                request._reply(400, OUTCOME_REQUIRED)  # Halo answers the message text [CIPP comment]
                return
            if (outcome_id not in (None, 0) and outcome_id not in known_ids) or (
                outcome and outcome.lower() not in known_names
            ):
                self.refused_actions.append(OUTCOME_REQUIRED)
                request._reply(400, OUTCOME_REQUIRED)  # unconfirmed: an unknown outcome counts as none
                return
        saved = []
        with self._lock:
            for item in items:
                ticket_id = int(item["ticket_id"])
                actions = self.actions[ticket_id]
                action = {
                    **copy.deepcopy(item),
                    "id": max([a["id"] for a in actions], default=0) + 1,
                    "who": "API",
                    "actionby_application_id": "halo-lifecycle",
                    "datetime": self._now(),
                }
                actions.append(action)
                saved.append(action)
        request._reply(200, saved[0] if len(saved) == 1 else saved)
