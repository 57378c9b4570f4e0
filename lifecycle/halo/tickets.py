"""Halo tickets: what a ticket webhook or runbook sends, and the ticket calls the request loop makes.

Sources are in ``shared/reference/halo-tickets.md`` (its tags in brackets below). Everything Halo has not
documented is read tolerantly: an id may come as a string or a float, a single posted action may come back as
an object or a one-element array, and fields the models do not name are kept (``extra="allow"``), because
the mapping's ``[requests]`` conditions and templates may read any of them.

- ``GET /api/Tickets/{id}?includedetails=true``: the ticket, unwrapped, with ``customfields`` and the
  approval fields (``approvers``, ``approval_status``, ...) [SW][CIPP].
- ``POST /api/Actions`` with a one-element array: a private note (``hiddenfromuser``), which Halo refuses
  without an outcome ("An Outcome must be entered for this Action") [HA-e2e][CIPP].
- ``GET /api/Actions?ticket_id=N``: ``{record_count?, actions: [...]}``; action ids are unique only within a
  ticket [HA-get][DJ-action].
- ``POST /api/Tickets`` with ``[{"id": N, "status_id": S}]``: a status change [SW][DJ-tmodel]; with
  ``[{"id": N, "user_id": U, "_dont_fire_automations": true}]``: the ticket's user (``user_id`` is a ``Faults``
  field [SW]; the flag's effect is unconfirmed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lifecycle.errors import ConfigurationError, Permanent
from lifecycle.halo.models import MAX_HALO_ID, HaloCustomField

if TYPE_CHECKING:
    from lifecycle.halo.client import HaloClient


def _whole(value: Any) -> Any:
    """Halo sends ids as ints, floats (``18.0``) or, through runbook variables, strings; ``""`` is unset."""
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            return None
        if stripped.lstrip("-").isdigit():
            return int(stripped)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


class HaloTicket(BaseModel):
    """A Halo ticket (``Faults`` in Halo's schema); unknown fields are kept."""

    model_config = ConfigDict(extra="allow")

    id: int = Field(gt=0, le=MAX_HALO_ID)
    summary: str | None = None
    details: str | None = None
    status_id: int | None = None
    status_name: str | None = None
    tickettype_id: int | None = None
    tickettype_name: str | None = None
    client_id: int | None = None
    client_name: str | None = None
    site_id: int | None = None
    site_name: str | None = None
    site_timezone: str | None = None
    user_id: int | None = None
    user_name: str | None = None
    user_email: str | None = None
    customfields: list[HaloCustomField] | None = None
    approval_status: int | None = None
    approval_process_id: int | None = None
    approvers: list[dict[str, Any]] | None = None
    faultapprovalfailed: bool | None = None
    hasbeenclosed: bool | None = None

    @field_validator(
        "status_id", "tickettype_id", "client_id", "site_id", "user_id", "approval_status", "approval_process_id",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _whole(value)


class TicketDelivery(BaseModel):
    """One Halo webhook delivery about a ticket: full or small object under ``ticket``, or ids only [G838]."""

    model_config = ConfigDict(extra="allow")

    id: str | None = Field(default=None, min_length=1, max_length=200)
    event: str | None = None
    object_id: int | None = Field(default=None, gt=0, le=MAX_HALO_ID)
    agent_id: int | None = None
    timestamp: str | None = None
    ticket: dict[str, Any] | None = None

    @field_validator("object_id", "agent_id", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _whole(value)


class TicketRunbookBody(BaseModel):
    """What an Integration Runbook posts: the ticket's id, optionally field values read by the mapping.

    ``fields`` names ticket fields (``department``, or ``cf.<custom field>``) whose values replace what the
    ticket holds, for runbooks that collect them in a form of their own.
    """

    model_config = ConfigDict(extra="forbid")

    ticket_id: int = Field(gt=0, le=MAX_HALO_ID)
    fields: dict[str, str | int | float | bool | None] | None = None

    @field_validator("ticket_id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        return _whole(value)


def note_outcome(setting: str) -> dict[str, Any]:
    """The outcome fields of a note: an id (digits) or an outcome name, as ``LIFECYCLE_HALO_NOTE_OUTCOME`` says.

    Halo refuses an action without an outcome, and outcome ids differ per instance (``GET /api/Outcome``):
    there is no safe default [HA-e2e][CIPP].
    """
    value = setting.strip()
    if not value:
        raise ConfigurationError(
            "LIFECYCLE_HALO_NOTE_OUTCOME is not set: Halo needs an outcome for every note; set it to the name or id "
            "of a private-note outcome the API agent may use (Configuration > Tickets > Actions, or GET /api/Outcome)"
        )
    return {"outcome_id": int(value)} if value.isdigit() else {"outcome": value}


class HaloTickets:
    """The ticket calls, over a ``HaloClient`` (its token, rate limiter and retries)."""

    def __init__(self, client: HaloClient) -> None:
        self.client = client

    def _url(self, path: str) -> str:
        return f"{self.client.base_url}/api/{path}"

    def fetch_ticket(self, ticket_id: int) -> dict[str, Any] | None:
        """``GET /api/Tickets/{id}?includedetails=true``: the ticket, or None when Halo has no such ticket."""
        what = f"GET /api/Tickets/{ticket_id}"
        response = self.client._send(
            "GET", self._url(f"Tickets/{int(ticket_id)}"), patience=None, params={"includedetails": "true"}
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self.client._refuse(response, what)
        data = self.client._json(response, what)
        if not isinstance(data, dict) or _whole(data.get("id")) in (None, 0):
            return None  # an empty object for an unknown id, as some Halo versions answer for users
        if _whole(data.get("id")) != ticket_id:
            raise Permanent(f"Halo API: {what} answered ticket {data.get('id')!r}")
        return data

    def actions(self, ticket_id: int) -> list[dict[str, Any]]:
        """``GET /api/Actions?ticket_id=N``: the ticket's actions (notes), private ones included."""
        what = f"GET /api/Actions?ticket_id={ticket_id}"
        response = self.client._send(
            "GET",
            self._url("Actions"),
            patience=None,
            params={"ticket_id": str(int(ticket_id)), "excludesys": "true", "includehtmlnote": "true"},
        )
        if response.status_code != 200:
            raise self.client._refuse(response, what)
        data = self.client._json(response, what)
        items = data.get("actions") if isinstance(data, dict) else data
        return [a for a in items if isinstance(a, dict)] if isinstance(items, list) else []

    def post_note(self, ticket_id: int, *, text: str, html: str, outcome: dict[str, Any]) -> int | None:
        """Post a private note; returns its action id (unique only within the ticket), None if Halo sent none."""
        what = f"POST /api/Actions (ticket {ticket_id})"
        item = {"ticket_id": int(ticket_id), "hiddenfromuser": True, "note": text, "note_html": html, **outcome}
        response = self.client._send("POST", self._url("Actions"), patience=None, json=[item])
        if response.status_code not in (200, 201):
            if response.status_code == 400 and "outcome" in response.text.lower():
                raise Permanent(
                    f"Halo API: {what} was refused: Halo wants an outcome the API agent may use; check "
                    "LIFECYCLE_HALO_NOTE_OUTCOME against Halo's outcomes (GET /api/Outcome) and the agent's rights"
                )
            raise self.client._refuse(response, what)
        if not response.content.strip():
            return None
        data = self.client._json(response, what)
        saved = data[0] if isinstance(data, list) and data else data
        action_id = _whole(saved.get("id")) if isinstance(saved, dict) else None
        return action_id if isinstance(action_id, int) else None

    def set_status(self, ticket_id: int, status_id: int) -> None:
        """Change the ticket's status (``POST /api/Tickets`` with ``[{id, status_id}]``)."""
        what = f"POST /api/Tickets (ticket {ticket_id} status)"
        body = [{"id": int(ticket_id), "status_id": int(status_id)}]
        response = self.client._send("POST", self._url("Tickets"), patience=None, json=body)
        if response.status_code not in (200, 201):
            raise self.client._refuse(response, what)

    def set_user(self, ticket_id: int, user_id: int) -> None:
        """Make ``user_id`` the ticket's user (``POST /api/Tickets`` with ``[{id, user_id}]``) [SW][DJ-tmodel].

        ``_dont_fire_automations`` rides along so linking the person does not start the ticket's automations
        again; Halo documents the flag on Tickets but not its effect [SW], so nothing relies on it.
        """
        what = f"POST /api/Tickets (ticket {ticket_id} user)"
        body = [{"id": int(ticket_id), "user_id": int(user_id), "_dont_fire_automations": True}]
        response = self.client._send("POST", self._url("Tickets"), patience=None, json=body)
        if response.status_code not in (200, 201):
            raise self.client._refuse(response, what)

    def create_user(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Create a Halo user (``POST /api/Users`` without an id) with ``_dont_fire_automations``; returns it."""
        saved = self.client.update_users([{**fields, "_dont_fire_automations": True}])
        user = saved[0] if saved else None
        if not isinstance(user, dict) or _whole(user.get("id")) in (None, 0):
            raise Permanent("Halo API: POST /api/Users did not answer the new user (with its id)")
        return {**user, "id": _whole(user["id"])}
