"""The Service Bus client of the settings: the managed identity (``DefaultAzureCredential``) on
``LIFECYCLE_SERVICEBUS_NAMESPACE``, or ``LIFECYCLE_SERVICEBUS_CONNECTION_STRING`` for development.

The SDK (``azure.servicebus``, ``azure.identity``) is imported when the client is first built, not here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lifecycle.errors import ConfigurationError

if TYPE_CHECKING:
    from lifecycle.settings import Settings


def _normalise_namespace(namespace: str) -> str:
    host = namespace.strip().removeprefix("sb://").removeprefix("https://").rstrip("/")
    return host if "." in host else f"{host}.servicebus.windows.net"


def client_factory(settings: Settings) -> tuple[Callable[[], Any], str]:
    """How to build the SDK client of the settings (called on first use), and where it connects, for messages.

    Raises:
        ConfigurationError: Neither a namespace nor a connection string is set.
    """
    connection_string = settings.servicebus_connection_string.get_secret_value()
    namespace = settings.servicebus_namespace
    if connection_string:

        def factory() -> Any:
            from azure.servicebus import ServiceBusClient

            return ServiceBusClient.from_connection_string(connection_string)

        where = "the namespace of LIFECYCLE_SERVICEBUS_CONNECTION_STRING"
    elif namespace:
        host = _normalise_namespace(namespace)

        def factory() -> Any:
            from azure.identity import DefaultAzureCredential
            from azure.servicebus import ServiceBusClient

            return ServiceBusClient(fully_qualified_namespace=host, credential=DefaultAzureCredential())

        where = host
    else:
        raise ConfigurationError(
            "LIFECYCLE_QUEUE_BACKEND=servicebus needs LIFECYCLE_SERVICEBUS_NAMESPACE (managed identity) "
            "or LIFECYCLE_SERVICEBUS_CONNECTION_STRING (development)"
        )
    return factory, where
