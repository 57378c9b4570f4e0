"""Whom a ticket request concerns: the Halo user the ticket names (by id or e-mail address), or, for a joiner,
the Halo user created once for it; a ticket that does not name one person is answered with a note saying what
to fill in, and nothing is planned.

``TicketRequests`` (``lifecycle.requests.service``) builds on this, as this builds on the exactly-once Halo
writes (``lifecycle.requests.writes``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from lifecycle.errors import Permanent, Retryable
from lifecycle.mapping.schema import RequestType
from lifecycle.observability import log
from lifecycle.requests import notes
from lifecycle.requests.planning import SubjectUnclear, concerned_user, person_fields
from lifecycle.requests.store import RequestRecord, RequestStore, request_id_for, update
from lifecycle.requests.writes import PENDING_PREFIX, HaloWrites


class RequestSubjects(HaloWrites):
    """The person of each request, and the request records' wiring (``TicketRequests`` builds on it)."""

    # Preview (``?dry_run=true``): read and plan, write nothing anywhere.
    preview: bool

    # Wiring ------------------------------------------------------------------------------------------------
    @property
    def _writes(self) -> bool:
        return not (self.preview or self.settings.dry_run)

    @property
    def store(self) -> RequestStore:
        return self.runtime.requests

    def _save(self, request_id: str, change: Callable[[RequestRecord | None], RequestRecord | None]) -> RequestRecord:
        saved = update(self.store, request_id, change)
        assert saved is not None
        return saved

    # The person ------------------------------------------------------------------------------------------
    def _person(
        self,
        request_id: str,
        kind: RequestType,
        ticket: Mapping[str, Any],
        context: Mapping[str, str | None],
        record: RequestRecord | None,
    ) -> tuple[int, dict[str, Any], bool]:
        """The Halo user the request concerns: named by the ticket, or (a joiner) created once."""
        halo = self._halo()
        # The user created for a joiner stays its subject; anyone else is read from the ticket each time, so a
        # corrected field is a new plan (the user id is one of the plan's inputs).
        pinned = record is not None and record.halo_user_created and record.halo_user_id
        subject = record.halo_user_id if pinned and record is not None else concerned_user(kind, context)
        if isinstance(subject, str):
            subject = self._user_by_email(kind, subject)
        user_id = subject
        if user_id is None and not self._writes:
            return 0, {}, True  # dry run: the Halo user is not created; the plan shows "user 0" in its place
        if user_id is not None:
            user = halo.client.fetch_user(user_id)
            if user is None:
                if kind.kind == "joiner":
                    raise Permanent(f"Halo has no user {user_id}, whom ticket {ticket['id']} names")
                raise SubjectUnclear(
                    f"request {kind.name}: Halo has no user {user_id}, whom the ticket names",
                    "fill it with the Halo user id (or the e-mail address) of an existing Halo user",
                )
            created = bool(record and record.halo_user_created)
            return user_id, user, created
        fields = person_fields(kind, context)
        if not (fields.get("firstname") or fields.get("surname") or fields.get("name")):
            raise Permanent(
                f"ticket {ticket['id']}: the {kind.name} request gives no name for the new person: fill the ticket's "
                "name fields (the mapping's [[requests.types]] person.firstname / person.surname)"
            )
        fields.setdefault("name", " ".join(v for v in (fields.get("firstname"), fields.get("surname")) if v))
        for key in ("client_id", "site_id"):
            if ticket.get(key) is not None:
                fields.setdefault(key, ticket[key])
        created_user: dict[str, Any] = {}

        def write() -> dict[str, Any]:
            created_user.update(halo.create_user(fields))
            log.info("created Halo user %s for ticket %s", created_user["id"], ticket["id"])
            return {"user_id": created_user["id"]}

        def recover() -> bool:
            # An attempt stopped after Halo saved the user: find it rather than create a second one.
            page = halo.client.users_page(1, page_size=50, params={"search": str(fields["name"])})
            same = [
                u
                for u in page.users
                if u.get("name") == fields["name"] and u.get("client_id") in (None, fields.get("client_id"))
            ]
            if len(same) == 1:
                created_user.update(same[0])
                return True
            return False

        self._once(request_id, "halo-user", write, recover=recover)
        if not created_user:
            claim = self.runtime.store.claim_step(f"{PENDING_PREFIX}{request_id}", "halo-user", self.owner, 0.0)
            user_id = int((claim.result or {}).get("user_id") or 0)
            if not user_id:
                raise Retryable(f"request {request_id}: the Halo user's creation is unfinished", retry_after=30.0)
            created_user.update(halo.client.fetch_user(user_id) or {"id": user_id})
        user_id = int(created_user["id"])
        ticket_id = int(ticket["id"])
        self._save(
            request_id,
            lambda r: replace(
                r or RequestRecord(request_id, ticket_id, "received"),
                halo_user_id=user_id,
                halo_user_created=True,
                type_name=kind.name,
                kind=kind.kind,
            ),
        )
        return user_id, created_user, True

    def _user_by_email(self, kind: RequestType, address: str) -> int:
        """The one Halo user whose e-mail address is ``address``; several or none: ``SubjectUnclear``."""
        halo = self._halo()
        # Halo's `search` reads fields it does not document: every answer is compared exactly here.
        found = {
            int(u["id"])
            for u in halo.client.list_users(params={"search": address, "includeinactive": "true"})
            if str(u.get("emailaddress") or "").strip().lower() == address and u.get("id") is not None
        }
        if len(found) == 1:
            return found.pop()
        fill = "fill it with the person's Halo user id instead (their user page in Halo shows it)"
        if not found:
            raise SubjectUnclear(f"request {kind.name}: no Halo user has the e-mail address {address}", fill)
        raise SubjectUnclear(
            f"request {kind.name}: {len(found)} Halo users have the e-mail address {address} "
            f"(ids {', '.join(map(str, sorted(found)))})",
            fill,
        )

    def _subject_unclear(
        self, record: RequestRecord | None, kind: RequestType, ticket_id: int, exc: SubjectUnclear
    ) -> RequestRecord | None:
        """Refuse to plan for a leaver or mover whose ticket does not name one person; say on the ticket what to
        fill in (once per problem). The request stays open: the next read of the ticket tries again."""
        request_id = request_id_for(ticket_id)
        message = f"{exc}: nothing is planned until the ticket says whom it concerns; {exc.fill}"
        if self.preview or self.settings.dry_run:
            raise exc
        key = "subject:" + hashlib.sha256(message.encode()).hexdigest()[:8]
        self.post_note(request_id, ticket_id, notes.subject_note(request_id, key=key, problem=str(exc), fill=exc.fill))
        log.info("request %s: %s", request_id, message)

        def change(current: RequestRecord | None) -> RequestRecord:
            base = current or RequestRecord(request_id, ticket_id, "received", type_name=kind.name, kind=kind.kind)
            # An open plan stays posted but never runs while its subject is unclear (advance stops before the
            # approval is read); a request that never had one stays "received", read again by the timer.
            return replace(base, message=message)

        return self._save(request_id, change)
