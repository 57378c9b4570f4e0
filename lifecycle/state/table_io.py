"""Table storage plumbing under the store adapters: keys, chunked properties, size limits, errors, clients.

What Table storage accepts, and how this module keeps to it (Microsoft Learn, "Understanding the Table service
data model" and "Table service error codes"):

- **Keys** may not contain ``/ \\ # ?`` or control characters, and a ``%`` is decoded twice in point operations
  (the key in the URL path), so ``encode_key`` escapes everything but letters, digits and ``-_.:`` as ``!XX``
  (the UTF-8 bytes in hex); no key written here ever holds a ``%``.
- **Sizes**: a string property holds at most 64 KiB of UTF-16 (32,768 code units), a binary one 64 KiB, an
  entity 1 MiB by the service's formula (``entity_size``). Long text is split over numbered properties counted
  in UTF-16 units (a character outside the BMP is two), and ``check_entity`` refuses an entity the service
  would refuse, with a reason that names the property, before anything is written.
- **Errors**: 401/403 are a set-up problem (``ConfigurationError``: the worker waits, it does not burn
  deliveries), 400 and 413 are permanent (the same write fails again), everything else is transient.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import unquote

from lifecycle.errors import ConfigurationError, LifecycleError, Permanent, Retryable

if TYPE_CHECKING:
    from lifecycle.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")

TEXT_CHUNK_UNITS = 30_000  # UTF-16 code units; a string property holds 32,768 (64 KiB)
BYTES_CHUNK = 60_000  # a binary property holds 64 KiB
MAX_PROPERTY_BYTES = 64 * 1024
MAX_ENTITY_BYTES = 1024 * 1024
MAX_PROPERTIES = 252  # custom properties, besides PartitionKey, RowKey and Timestamp
CAS_ATTEMPTS = 50
_KEY_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
_KEY_ESCAPE = "!"


def encode_key(value: str) -> str:
    """``value`` as a PartitionKey or RowKey: never a ``%``, never a character Table storage forbids."""
    return "".join(c if c in _KEY_SAFE else "".join(f"!{b:02X}" for b in c.encode("utf-8")) for c in value)


def decode_key(value: str) -> str:
    """The value ``encode_key`` encoded (and keys an older version percent-encoded)."""
    if _KEY_ESCAPE in value:
        data = bytearray()
        index = 0
        while index < len(value):
            if value[index] == _KEY_ESCAPE:
                data.append(int(value[index + 1 : index + 3], 16))
                index += 3
            else:
                data.extend(value[index].encode("utf-8"))
                index += 1
        return data.decode("utf-8")
    return unquote(value) if "%" in value else value


def utf16_units(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (how Table storage counts a string)."""
    return len(text.encode("utf-16-le")) // 2


def _text_chunks(text: str, units: int = TEXT_CHUNK_UNITS) -> list[str]:
    """``text`` cut into pieces of at most ``units`` UTF-16 units, never inside a surrogate pair."""
    chunks: list[str] = []
    start, used = 0, 0
    for index, char in enumerate(text):
        width = 2 if ord(char) > 0xFFFF else 1
        if used + width > units:
            chunks.append(text[start:index])
            start, used = index, 0
        used += width
    chunks.append(text[start:])
    return chunks


def int64(value: int) -> Any:
    from azure.data.tables import EdmType

    return (value, EdmType.INT64)


def plain(value: Any) -> Any:
    """An entity value as a plain Python value (Int64 comes back wrapped, datetimes as a subclass)."""
    inner = getattr(value, "value", value)
    if isinstance(inner, datetime):
        return datetime.fromtimestamp(inner.timestamp(), UTC)
    return inner


def _value_size(value: Any) -> int:
    """Bytes a property value takes by the service's formula."""
    if isinstance(value, tuple):
        return 8  # (value, EdmType): the only typed value written here is Int64
    if isinstance(value, str):
        return 4 + 2 * utf16_units(value)
    if isinstance(value, bytes | bytearray):
        return 4 + len(value)
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return 4 if -(2**31) <= value < 2**31 else 8
    return 8  # float, datetime


def entity_size(entity: dict[str, Any]) -> int:
    """The entity's size as Table storage counts it: 4 + 2 x (key lengths) + per property 8 + 2 x name + value."""
    keys = utf16_units(str(entity.get("PartitionKey", ""))) + utf16_units(str(entity.get("RowKey", "")))
    properties = (
        8 + 2 * utf16_units(name) + _value_size(value)
        for name, value in entity.items()
        if name not in ("PartitionKey", "RowKey")
    )
    return 4 + 2 * keys + sum(properties)


def check_entity(table: str, entity: dict[str, Any]) -> None:
    """Refuse, before writing, an entity Table storage would refuse for its size.

    Raises:
        Permanent: A property over 64 KiB, more than 252 properties, or an entity over 1 MiB.
    """
    where = f"{table} entity ({entity.get('PartitionKey')!s:.40}, {entity.get('RowKey')!s:.40})"
    custom = [name for name in entity if name not in ("PartitionKey", "RowKey")]
    if len(custom) > MAX_PROPERTIES:
        raise Permanent(f"the {where} would have {len(custom)} properties; Table storage allows {MAX_PROPERTIES}")
    for name in custom:
        value = entity[name]
        if isinstance(value, str | bytes | bytearray) and _value_size(value) - 4 > MAX_PROPERTY_BYTES:
            raise Permanent(
                f"property {name!r} of the {where} holds {_value_size(value) - 4} bytes; Table storage allows "
                f"{MAX_PROPERTY_BYTES} per property"
            )
    size = entity_size(entity)
    if size > MAX_ENTITY_BYTES:
        raise Permanent(
            f"the {where} would take {size} bytes; Table storage allows {MAX_ENTITY_BYTES} per entity (the text "
            "it carries is too long to keep)"
        )


def put_text(entity: dict[str, Any], name: str, text: str) -> None:
    chunks = _text_chunks(text)
    entity[name] = chunks[0]
    for index, chunk in enumerate(chunks[1:], 1):
        entity[f"{name}__{index}"] = chunk


def get_text(entity: dict[str, Any], name: str) -> str:
    parts = [str(entity.get(name) or "")]
    index = 1
    while f"{name}__{index}" in entity:
        parts.append(str(entity[f"{name}__{index}"]))
        index += 1
    return "".join(parts)


def put_bytes(entity: dict[str, Any], name: str, data: bytes) -> None:
    chunks = [data[i : i + BYTES_CHUNK] for i in range(0, len(data), BYTES_CHUNK)] or [b""]
    entity[name] = chunks[0]
    entity[f"{name}__n"] = len(chunks)
    for index, chunk in enumerate(chunks[1:], 1):
        entity[f"{name}__{index}"] = chunk


def get_bytes(entity: dict[str, Any], name: str) -> bytes:
    count = int(plain(entity.get(f"{name}__n", 1)))
    return b"".join(bytes(entity.get(name if i == 0 else f"{name}__{i}") or b"") for i in range(count))


def _is_table_missing(exc: BaseException) -> bool:
    return "TableNotFound" in str(exc)


def translated(method: Callable[P, T]) -> Callable[P, T]:
    """Storage errors as the port's errors: transient -> Retryable, refused -> ConfigurationError."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

        try:
            return method(*args, **kwargs)
        except LifecycleError:
            raise
        except ClientAuthenticationError as exc:
            raise ConfigurationError(
                f"Table storage refused the credentials: {exc.message} (the identity needs the Storage Table "
                "Data Contributor role; check LIFECYCLE_TABLE_ENDPOINT)"
            ) from exc
        except HttpResponseError as exc:
            if exc.status_code in (401, 403):
                raise ConfigurationError(
                    f"Table storage refused access ({exc.status_code}): the identity needs the Storage Table Data "
                    "Contributor role"
                ) from exc
            if exc.status_code in (400, 413):
                # The same request fails the same way again (a value too large, a key refused): retrying it
                # for a day helps nobody.
                raise Permanent(f"Table storage refused the write ({exc.status_code}): {exc.reason}") from exc
            raise Retryable(f"Table storage failed ({exc.status_code}): {exc.reason}") from exc
        except AzureError as exc:
            raise Retryable(f"Table storage unreachable: {exc.message}") from exc

    return wrapper


def service_from_settings(settings: Settings) -> Any:
    from azure.data.tables import TableServiceClient

    connection_string = settings.table_connection_string.get_secret_value()
    if connection_string:
        return TableServiceClient.from_connection_string(connection_string)
    if settings.table_endpoint:
        from azure.identity import DefaultAzureCredential

        return TableServiceClient(endpoint=settings.table_endpoint, credential=DefaultAzureCredential())
    raise ConfigurationError(
        "Table storage needs LIFECYCLE_TABLE_ENDPOINT (managed identity) or LIFECYCLE_TABLE_CONNECTION_STRING "
        "(development)"
    )


class Tables:
    """Table clients by short name, creating a table the first time it turns out to be missing."""

    def __init__(self, service: Any, prefix: str) -> None:
        if prefix and not (prefix[0].isalpha() and prefix.isalnum()):
            raise ValueError(f"table prefix must be letters and digits, starting with a letter: {prefix!r}")
        self.service = service
        self.prefix = prefix
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def client(self, name: str) -> Any:
        with self._lock:
            if name not in self._clients:
                self._clients[name] = self.service.get_table_client(f"{self.prefix}{name}")
            return self._clients[name]

    def call(self, name: str, operation: Callable[[Any], T]) -> T:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        table = self.client(name)
        try:
            return operation(table)
        except ResourceNotFoundError as exc:
            if not _is_table_missing(exc):
                raise
        try:
            self.service.create_table(f"{self.prefix}{name}")
        except ResourceExistsError:
            pass  # another worker created it in the meantime
        return operation(table)

    def get(self, name: str, partition: str, row: str) -> Any | None:
        from azure.core.exceptions import ResourceNotFoundError

        def read(table: Any) -> Any | None:
            try:
                return table.get_entity(partition, row)
            except ResourceNotFoundError as exc:
                if _is_table_missing(exc):
                    raise
                return None

        return self.call(name, read)

    def query(self, name: str, query: str, parameters: dict[str, Any] | None = None) -> list[Any]:
        """Entities matching an OData filter (every entity when ``query`` is empty)."""
        if not query:
            return self.call(name, lambda t: list(t.list_entities()))
        return self.call(name, lambda t: list(t.query_entities(query, parameters=parameters or {})))

    def insert(self, name: str, entity: dict[str, Any]) -> bool:
        """Insert if absent; False when the entity exists."""
        from azure.core.exceptions import ResourceExistsError

        check_entity(name, entity)

        def insert(table: Any) -> bool:
            try:
                table.create_entity(entity)
                return True
            except ResourceExistsError:
                return False

        return self.call(name, insert)

    def replace_if(self, name: str, entity: dict[str, Any], etag: str) -> bool:
        """Replace only if unchanged since ``etag`` was read; False when someone else changed it."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        check_entity(name, entity)

        def replace(table: Any) -> bool:
            try:
                table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
                return True
            except ResourceModifiedError:
                return False
            except ResourceNotFoundError as exc:
                if _is_table_missing(exc):
                    raise
                return False

        return self.call(name, replace)

    def upsert(self, name: str, entity: dict[str, Any]) -> None:
        from azure.data.tables import UpdateMode

        check_entity(name, entity)

        self.call(name, lambda t: t.upsert_entity(entity, mode=UpdateMode.REPLACE))

    def delete_if(self, name: str, partition: str, row: str, etag: str) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        def delete(table: Any) -> bool:
            try:
                table.delete_entity(partition, row, etag=etag, match_condition=MatchConditions.IfNotModified)
                return True
            except ResourceModifiedError:
                return False
            except ResourceNotFoundError as exc:
                if _is_table_missing(exc):
                    raise
                return False

        return self.call(name, delete)

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
        self.service.close()


def etag(entity: Any) -> str:
    return str(entity.metadata["etag"])
