"""What the Azure Functions host does for a session-enabled Service Bus trigger and a timer trigger.

Service Bus, with the real azure-servicebus SDK's receiver (against the AMQP broker in tests,
tests/standins/amqp_broker): the host accepts the next available session, receives one message
in peek-lock, hands the Python worker the message body and its trigger metadata, and settles by the function's
result: completed when it returns, abandoned when it raises. The Python worker turns body and metadata into
``func.ServiceBusMessage`` with ``ServiceBusMessageInConverter.decode`` (the library's own code, used here as
is), so the function under test sees exactly what it would see in Azure.

Timers: the host resolves a binding expression ``%NAME%`` in the schedule from the app settings when it
indexes the functions, and a name without a value puts the function in error ("'%NAME%' does not resolve to a
value", Microsoft Learn, "Azure Functions binding expression patterns: app settings"); the schedule must be an
NCRONTAB expression of six fields ("Timer trigger for Azure Functions: NCRONTAB expressions"). On each
occurrence it hands the worker a JSON body ``{"Schedule", "ScheduleStatus", "IsPastDue"}`` that
``TimerRequestConverter.decode`` turns into ``func.TimerRequest``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
from azure.functions import meta
from azure.functions.decorators.function_app import FunctionBuilder
from azure.functions.servicebus import ServiceBusMessageInConverter
from azure.functions.timer import TimerRequestConverter
from azure.servicebus import NEXT_AVAILABLE_SESSION
from azure.servicebus.exceptions import OperationTimeoutError


def _dotnet_time(moment: datetime) -> str:
    # The host serialises DateTime with seven fractional digits and a Z.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def functions_message(
    body: bytes,
    *,
    message_id: str,
    session_id: str,
    delivery_count: int = 1,
    sequence_number: int = 1,
    enqueued_time_utc: datetime | None = None,
    application_properties: dict[str, Any] | None = None,
    lock_token: str = "00000000-0000-0000-0000-000000000001",  # noqa: S107 - a lock token, not a password
    content_type: str | None = "application/json",
) -> func.ServiceBusMessage:
    """A ``func.ServiceBusMessage`` built the way the Python worker builds it from the host's trigger data."""
    enqueued = enqueued_time_utc or datetime.now(UTC)
    metadata: dict[str, meta.Datum] = {
        "MessageId": meta.Datum(message_id, "string"),
        "SessionId": meta.Datum(session_id, "string"),
        "DeliveryCount": meta.Datum(delivery_count, "int"),
        "SequenceNumber": meta.Datum(sequence_number, "int"),
        "EnqueuedTimeUtc": meta.Datum(_dotnet_time(enqueued), "string"),
        "LockToken": meta.Datum(lock_token, "string"),
        "ApplicationProperties": meta.Datum(json.dumps(application_properties or {}), "json"),
        "UserProperties": meta.Datum(json.dumps(application_properties or {}), "json"),
    }
    if content_type is not None:
        metadata["ContentType"] = meta.Datum(content_type, "string")
    message = ServiceBusMessageInConverter.decode(meta.Datum(body, "bytes"), trigger_metadata=metadata)
    assert isinstance(message, func.ServiceBusMessage)
    return message


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def from_received(received: Any) -> func.ServiceBusMessage:
    """The trigger's view of a ``ServiceBusReceivedMessage`` the host received from the broker."""
    return functions_message(
        b"".join(received.body),
        message_id=str(received.message_id),
        session_id=str(received.session_id),
        # The host (the .NET SDK) counts this delivery too; AMQP's header counts only the previous ones.
        delivery_count=int(received.delivery_count or 0) + 1,
        sequence_number=received.sequence_number,
        enqueued_time_utc=received.enqueued_time_utc,
        application_properties={_text(k): _text(v) for k, v in (received.application_properties or {}).items()},
        lock_token=str(received.lock_token),
        content_type=received.content_type,
    )


@dataclass(frozen=True)
class Delivery:
    message_id: str
    session_id: str
    delivery_count: int
    settled: str  # "completed" or "abandoned"
    error: BaseException | None = None


class FunctionsHost:
    """Runs a Service Bus-triggered function the way the host does, one message at a time."""

    def __init__(self, client: Any, queue_name: str, *, wait_seconds: float = 1.0) -> None:
        self.client = client
        self.queue_name = queue_name
        self.wait_seconds = wait_seconds

    def deliver_next(self, function: Callable[[func.ServiceBusMessage], None]) -> Delivery | None:
        """Deliver one message to ``function`` and settle it by the outcome; None when nothing is deliverable."""
        try:
            receiver = self.client.get_queue_receiver(
                self.queue_name, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=self.wait_seconds
            )
            receiver.__enter__()
        except OperationTimeoutError:
            return None
        with receiver:
            try:
                messages = receiver.receive_messages(max_message_count=1, max_wait_time=self.wait_seconds)
            except OperationTimeoutError:  # no session came: the broker detached the link after opening it
                return None
            if not messages:
                return None
            received = messages[0]
            count = int(received.delivery_count or 0) + 1
            try:
                function(from_received(received))
            except Exception as exc:
                receiver.abandon_message(received)
                return Delivery(str(received.message_id), str(received.session_id), count, "abandoned", exc)
            receiver.complete_message(received)
            return Delivery(str(received.message_id), str(received.session_id), count, "completed")

    def drain(self, function: Callable[[func.ServiceBusMessage], None], *, limit: int = 100) -> list[Delivery]:
        """Deliver until nothing is deliverable now (scheduled messages wait for the clock)."""
        deliveries: list[Delivery] = []
        for _ in range(limit):
            delivery = self.deliver_next(function)
            if delivery is None:
                return deliveries
            deliveries.append(delivery)
        raise AssertionError(f"still delivering after {limit} messages: {deliveries[-3:]}")


_EXPRESSION = re.compile(r"%([^%]+)%")
_NCRONTAB_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


class TimerError(AssertionError):
    """The host would put the function in error (it never runs)."""


def resolve_schedule(schedule: str, app_settings: Mapping[str, str]) -> str:
    """The schedule the host runs: ``%NAME%`` replaced by the app setting, checked as six-field NCRONTAB."""

    def setting(match: re.Match[str]) -> str:
        name = match.group(1)
        if not app_settings.get(name):
            raise TimerError(f"'%{name}%' does not resolve to a value")
        return app_settings[name]

    resolved = _EXPRESSION.sub(setting, schedule)
    fields = resolved.split()
    if len(fields) != 6 or not all(_NCRONTAB_FIELD.match(f) for f in fields):
        raise TimerError(f"the schedule {resolved!r} is not a six-field NCRONTAB expression")
    return resolved


def fire_timer(
    function: FunctionBuilder, app_settings: Mapping[str, str], *, past_due: bool = False
) -> func.TimerRequest:
    """Run a timer-triggered function once, the way the host does at an occurrence of its schedule."""
    [trigger] = [b for b in function.build().get_bindings() if b.get_dict_repr()["type"] == "timerTrigger"]
    binding = trigger.get_dict_repr()
    schedule = resolve_schedule(str(binding["schedule"]), app_settings)
    body = {
        "Schedule": {"AdjustForDST": True},
        "ScheduleStatus": {"Last": "0001-01-01T00:00:00", "Next": "0001-01-01T00:00:00", "LastUpdated": ""},
        "IsPastDue": past_due,
    }
    timer = TimerRequestConverter.decode(meta.Datum(json.dumps(body), "json"), trigger_metadata={})
    assert isinstance(timer, func.TimerRequest) and schedule
    function(**{str(binding["name"]): timer})
    return timer
