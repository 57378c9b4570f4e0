"""Wiring: build the mapping, queue, store and plan context from settings, once per process, lazily.

Heavy modules (ldap3, azure-servicebus, azure-data-tables) are imported only when the piece that needs them
is first built, so the ingress path stays cheap on a cold start.
"""

from __future__ import annotations

import importlib
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from lifecycle.mapping.planner import PlanContext
from lifecycle.mapping.schema import Mapping, load_mapping
from lifecycle.settings import Settings, get_settings


class HaloUsers(Protocol):
    """What the worker needs of Halo's API: one user's full record, or None if Halo has no such user."""

    def fetch_user(self, user_id: int) -> dict[str, Any] | None: ...


if TYPE_CHECKING:
    from lifecycle.queue import WorkQueue
    from lifecycle.requests.store import RequestStore
    from lifecycle.state import StateStore


class Runtime:
    """The process's shared pieces. Each property is built on first use and then reused."""

    def __init__(self, settings: Settings | None = None, *, mapping: Mapping | None = None) -> None:
        self.settings = settings or get_settings()
        self._mapping = mapping
        self._lock = threading.Lock()

    @cached_property
    def mapping(self) -> Mapping:
        return self._mapping or load_mapping(self.settings.mapping_file)

    @cached_property
    def plan_context(self) -> PlanContext:
        names = {"default", *self.settings.ad_connections}
        return PlanContext({name: self.settings.ad_connection(name).base_dn for name in names})

    @cached_property
    def queue(self) -> WorkQueue:
        with self._lock:
            if self.settings.queue_backend == "servicebus":
                from lifecycle.queue.servicebus import ServiceBusQueue  # type: ignore[import-not-found]

                # The runtime hands the queue its parking (the queue layer imports no store).
                parking = None
                if self.settings.table_endpoint or self.settings.table_connection_string.get_secret_value():
                    from lifecycle.state.table_parking import TableParking

                    parking = TableParking.from_settings(self.settings)
                queue: WorkQueue = ServiceBusQueue.from_settings(self.settings, parking=parking)
            else:
                from lifecycle.queue.embedded import EmbeddedQueue

                self.settings.data_dir.mkdir(parents=True, exist_ok=True)
                queue = EmbeddedQueue(
                    self.settings.data_dir / "queue.sqlite3", max_deliveries=self.settings.max_deliveries
                )
            return queue

    @cached_property
    def store(self) -> StateStore:
        with self._lock:
            if self.settings.store_backend == "table":
                from lifecycle.state.table import TableStore  # type: ignore[import-not-found]

                store: StateStore = TableStore.from_settings(self.settings)
            else:
                from lifecycle.state.embedded import EmbeddedStore

                store = EmbeddedStore(self.settings.data_dir / "store.sqlite3")
            return store

    @cached_property
    def requests(self) -> RequestStore:
        """Ticket requests (lifecycle.requests): SQLite locally, the ``requests`` table in Azure."""
        with self._lock:
            if self.settings.store_backend == "table":
                from lifecycle.requests.table import TableRequestStore

                return TableRequestStore.from_settings(self.settings)
            from lifecycle.requests.store import EmbeddedRequestStore

            return EmbeddedRequestStore(self.settings.data_dir / "requests.sqlite3")

    @cached_property
    def halo(self) -> HaloUsers | None:
        """The Halo API client, when one is configured (thin webhooks are completed through it)."""
        try:
            module = importlib.import_module("lifecycle.halo.client")
        except ModuleNotFoundError as exc:
            if exc.name != "lifecycle.halo.client":
                raise
            return None
        # The store carries the rate limiter's window, so every instance stays within the share together.
        client: HaloUsers | None = module.build_client(self.settings, store=self.store)
        return client

    def close(self) -> None:
        for name in ("queue", "store", "requests"):
            if name in self.__dict__:
                getattr(self, name).close()
