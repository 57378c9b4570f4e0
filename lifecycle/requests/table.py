"""Ticket requests in Azure Table storage (table ``requests``): PartitionKey ``request``, RowKey the request id.

The record is JSON in ``body`` (split over numbered properties past the 64 KiB property limit), with
``status``, ``notes_owed`` and ``version`` beside it for queries; writes are ETag-matched, so a version read is
the version replaced.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from lifecycle.requests.store import RequestRecord, VersionConflict
from lifecycle.state.table_io import Tables, get_text, put_text, service_from_settings, translated

if TYPE_CHECKING:
    from lifecycle.settings import Settings

_PARTITION = "request"


class TableRequestStore:
    """The ``requests`` table."""

    def __init__(self, service: Any, *, prefix: str = "") -> None:
        self._tables = Tables(service, prefix)

    @classmethod
    def from_settings(cls, settings: Settings, *, prefix: str = "") -> TableRequestStore:
        return cls(service_from_settings(settings), prefix=prefix)

    def _entity(self, record: RequestRecord) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": _PARTITION,
            "RowKey": record.request_id,
            "ticket_id": record.ticket_id,
            "status": record.status,
            "notes_owed": record.notes_owed,
            "version": record.version,
        }
        put_text(entity, "body", record.to_json())
        return entity

    @translated
    def get(self, request_id: str) -> RequestRecord | None:
        entity = self._tables.get("requests", _PARTITION, request_id)
        return RequestRecord.from_json(get_text(entity, "body")) if entity is not None else None

    @translated
    def put(self, record: RequestRecord, *, expected_version: int) -> RequestRecord:
        stored = replace(record, version=expected_version + 1)
        if expected_version == 0:
            if not self._tables.insert("requests", self._entity(stored)):
                raise VersionConflict(record.request_id)
            return stored
        entity = self._tables.get("requests", _PARTITION, record.request_id)
        if entity is None or int(entity.get("version", 0)) != expected_version:
            raise VersionConflict(record.request_id)
        if not self._tables.replace_if("requests", self._entity(stored), str(entity.metadata["etag"])):
            raise VersionConflict(record.request_id)
        return stored

    @translated
    def list(self, *, statuses: frozenset[str] | None = None, notes_owed: bool = False) -> list[RequestRecord]:
        clauses: list[str] = []
        parameters: dict[str, Any] = {}
        for index, status in enumerate(sorted(statuses or ())):
            clauses.append(f"status eq @s{index}")
            parameters[f"s{index}"] = status
        if notes_owed:
            clauses.append("notes_owed eq true")
        if statuses is not None and not clauses:
            return []
        query = " or ".join(clauses)
        entities = self._tables.query("requests", query, parameters)
        records = [RequestRecord.from_json(get_text(e, "body")) for e in entities]
        return sorted(records, key=lambda r: r.ticket_id)

    def close(self) -> None:
        return None
