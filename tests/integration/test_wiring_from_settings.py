"""The production wiring: the Service Bus queue and the Table store the runtime builds from ``Settings`` alone.

Other tests hand the runtime a queue and a store built by the test (``runtime.__dict__["queue"] = ...``), so
they would pass whatever ``ServiceBusQueue.from_settings`` and ``TableStore.from_settings`` did. Here nothing
is injected: with connection strings the runtime talks over the wire to the AMQP broker standing in for
Service Bus and to Azurite; with the managed-identity settings (a namespace and a table endpoint) the clients
are built and inspected without any traffic: the credential is the managed identity's chain, the endpoints
the configured ones.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from azure.data.tables import TableServiceClient
from azure.identity import DefaultAzureCredential

from lifecycle.queue import OutgoingMessage
from lifecycle.queue.servicebus import ServiceBusQueue
from lifecycle.runtime import Runtime
from lifecycle.state.table import TableStore
from lifecycle.state.table_io import encode_key
from lifecycle.state.table_parking import TableParking
from tests.conftest import make_settings
from tests.integration.azurite import Azurite
from tests.standins.amqp_broker.process import BrokerProcess


def test_connection_strings_give_a_runtime_whose_queue_and_store_reach_service_bus_and_table_storage(
    tmp_path: Path, azurite: Azurite, amqp_broker: BrokerProcess
) -> None:
    queue_name = f"lifecycle-work-{uuid.uuid4().hex[:8]}"
    amqp_broker.create_queue(queue_name, max_delivery_count=3)
    settings = make_settings(
        tmp_path,
        queue_backend="servicebus",
        store_backend="table",
        servicebus_connection_string=amqp_broker.connection_string,
        servicebus_queue=queue_name,
        table_connection_string=azurite.connection_string,
    )
    runtime = Runtime(settings)
    work_id = f"w-{uuid.uuid4().hex}"  # the runtime's tables carry no per-test prefix: the id is unique instead
    try:
        assert isinstance(runtime.queue, ServiceBusQueue) and isinstance(runtime.queue.parking, TableParking)
        assert isinstance(runtime.store, TableStore)
        assert runtime.queue.send([OutgoingMessage(work_id, "7", b'{"x": 1}')]) == [True]
        assert runtime.store.claim_step(work_id, "create_user", "worker-1", 60.0).status == "acquired"
    finally:
        runtime.close()
    # Read back with clients of the test's own, not the code's.
    assert [m["message_id"] for m in amqp_broker.active(queue_name)] == [work_id]
    with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        entity = service.get_table_client("journal").get_entity(encode_key(work_id), encode_key("create_user"))
    assert (entity["status"], entity["owner"]) == ("in_progress", "worker-1")


def test_managed_identity_settings_give_clients_on_the_configured_endpoints_with_the_identitys_credential(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path,
        queue_backend="servicebus",
        store_backend="table",
        servicebus_namespace="contoso-bus",
        table_endpoint="https://contosostate.table.core.windows.net",
    )
    runtime = Runtime(settings)
    try:
        queue, store = runtime.queue, runtime.store
        assert isinstance(queue, ServiceBusQueue) and isinstance(store, TableStore)
        # The client the queue would connect with (built lazily, on first use; building it sends nothing).
        client = queue._client()
        assert client.fully_qualified_namespace == "contoso-bus.servicebus.windows.net"
        assert isinstance(client._credential, DefaultAzureCredential)
        assert isinstance(queue.parking, TableParking)
        for service in (store._tables.service, queue.parking._tables.service):
            assert isinstance(service, TableServiceClient)
            assert service.url.startswith("https://contosostate.table.core.windows.net")
            assert isinstance(service.credential, DefaultAzureCredential)
    finally:
        runtime.close()
