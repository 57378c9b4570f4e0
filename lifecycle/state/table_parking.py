"""The parking place of dead-lettered work, in the ``deadletters`` table of the Table store's account.

The Service Bus adapter parks permanent failures of trigger-delivered messages through its own port
(``lifecycle.queue.servicebus.DeadLetterParking``); the runtime hands it this one. One entity per message:
PartitionKey ``parked``, RowKey = its sequence number (zero-padded, so the table reads in order).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from lifecycle.queue import DeadLetteredMessage
from lifecycle.state.table_io import (
    Tables,
    etag,
    get_bytes,
    get_text,
    int64,
    plain,
    put_bytes,
    put_text,
    service_from_settings,
    translated,
)

if TYPE_CHECKING:
    from lifecycle.settings import Settings


class TableParking:
    """Dead-lettered work parked with its reason in the ``deadletters`` table (see lifecycle.queue.servicebus)."""

    def __init__(self, service: Any, *, prefix: str = "") -> None:
        self._tables = Tables(service, prefix)

    @classmethod
    def from_settings(cls, settings: Settings, *, prefix: str = "") -> TableParking:
        return cls(service_from_settings(settings), prefix=prefix)

    @translated
    def park(self, entry: DeadLetteredMessage) -> None:
        entity: dict[str, Any] = {
            "PartitionKey": "parked",
            "RowKey": f"{entry.sequence_number:020d}",
            "sequence_number": int64(entry.sequence_number),
            "message_id": entry.message_id,
            "session_id": entry.session_id,
            "delivery_count": entry.delivery_count,
            "enqueued_at": entry.enqueued_at,
            "dead_lettered_at": entry.dead_lettered_at,
            "reason": entry.reason,
        }
        put_text(entity, "description", entry.description)
        put_text(entity, "properties", json.dumps(entry.properties, sort_keys=True))
        put_bytes(entity, "body", entry.body)
        self._tables.upsert("deadletters", entity)

    @staticmethod
    def _entry(entity: Any) -> DeadLetteredMessage:
        return DeadLetteredMessage(
            message_id=entity["message_id"],
            session_id=entity["session_id"],
            body=get_bytes(entity, "body"),
            properties=json.loads(get_text(entity, "properties") or "{}"),
            delivery_count=int(plain(entity["delivery_count"])),
            enqueued_at=plain(entity["enqueued_at"]),
            dead_lettered_at=plain(entity["dead_lettered_at"]),
            reason=entity["reason"],
            description=get_text(entity, "description"),
            sequence_number=int(plain(entity["sequence_number"])),
        )

    @translated
    def parked(self, limit: int = 100) -> list[DeadLetteredMessage]:
        entries = [self._entry(e) for e in self._tables.query("deadletters", "PartitionKey eq 'parked'")]
        entries.sort(key=lambda m: (m.dead_lettered_at, m.sequence_number))
        return entries[:limit]

    @translated
    def get(self, sequence_number: int) -> DeadLetteredMessage | None:
        entity = self._tables.get("deadletters", "parked", f"{sequence_number:020d}")
        return None if entity is None else self._entry(entity)

    @translated
    def remove(self, sequence_number: int) -> bool:
        entity = self._tables.get("deadletters", "parked", f"{sequence_number:020d}")
        if entity is None:
            return False
        return self._tables.delete_if("deadletters", "parked", f"{sequence_number:020d}", etag(entity))

    def close(self) -> None:
        self._tables.close()
