"""Logs carry the work context; telemetry goes to Application Insights only when it is configured."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lifecycle import observability
from lifecycle.observability import configure_logging, configure_telemetry, log, log_context
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def _telemetry_off() -> Iterator[None]:
    yield
    observability.disable_telemetry()


def test_every_line_inside_a_context_carries_its_fields_and_no_secret() -> None:
    stream = io.StringIO()
    configure_logging("INFO", ["s3cret-value"], stream)
    with log_context(work_id="w-1", user_id=26), log_context(step="01-create_user"):
        log.info("bound as %s", "s3cret-value")
    line = json.loads(stream.getvalue())
    assert (line["work_id"], line["user_id"], line["step"]) == ("w-1", 26, "01-create_user")
    assert "s3cret-value" not in stream.getvalue() and line["message"] == "bound as ***"


def test_without_a_connection_string_nothing_is_configured_or_imported() -> None:
    script = (
        "import sys\n"
        "from lifecycle.observability import configure_telemetry, log_context, record_outcome\n"
        "assert configure_telemetry({}) is False\n"
        "with log_context(work_id='w', step='s'): record_outcome('completed')\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'azure.monitor'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.fixture
def fake_monitor(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """azure.monitor.opentelemetry with configure_azure_monitor recording its options (no network)."""
    calls: list[dict[str, Any]] = []
    module = types.ModuleType("azure.monitor.opentelemetry")
    module.configure_azure_monitor = lambda **options: calls.append(options)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure.monitor.opentelemetry", module)
    return calls


def test_a_connection_string_configures_azure_monitor_for_the_lifecycle_logger(
    fake_monitor: list[dict[str, Any]],
) -> None:
    configure_logging("INFO", [], io.StringIO())
    connection = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://example.invalid/"
    assert configure_telemetry({"APPLICATIONINSIGHTS_CONNECTION_STRING": connection}) is True
    [options] = fake_monitor
    assert options["connection_string"] == connection and options["logger_name"] == "lifecycle"
    assert options["resource"].attributes["service.name"] == "halo-lifecycle"
    assert "credential" not in options
    assert observability.telemetry_enabled()


def test_entra_authentication_uses_the_managed_identity_named_in_the_setting(
    fake_monitor: list[dict[str, Any]],
) -> None:
    from azure.identity import ManagedIdentityCredential

    configure_telemetry(
        {
            "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000",
            "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": (
                "ClientId=11111111-2222-3333-4444-555555555555;Authorization=AAD"
            ),
        }
    )
    assert isinstance(fake_monitor[0]["credential"], ManagedIdentityCredential)


def test_work_items_and_steps_become_spans_and_metrics() -> None:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    observability.enable_telemetry(tracer_provider, MeterProvider(metric_readers=[reader]))

    with log_context(work_id="w-1", user_id=26):
        with log_context(step="01-create_user"):
            pass
        with pytest.raises(RuntimeError), log_context(step="02-add_to_groups"):
            raise RuntimeError("DC went away")
    observability.record_accepted(2)
    for outcome in ("completed", "retry", "dead_lettered"):
        observability.record_outcome(outcome)

    finished = {
        s.name + ":" + str((s.attributes or {}).get("lifecycle.step", "")): s for s in spans.get_finished_spans()
    }
    assert set(finished) == {"lifecycle.work_item:", "lifecycle.step:01-create_user", "lifecycle.step:02-add_to_groups"}
    item = finished["lifecycle.work_item:"]
    assert item.attributes is not None and item.attributes["lifecycle.work_id"] == "w-1"
    step = finished["lifecycle.step:01-create_user"]
    assert step.parent is not None and step.parent.span_id == item.context.span_id
    assert not finished["lifecycle.step:02-add_to_groups"].status.is_ok

    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = list(metric.data.data_points)
    assert [p.value for p in points["lifecycle.items.accepted"]] == [2]
    assert sorted(p.attributes["outcome"] for p in points["lifecycle.items.processed"]) == [
        "completed",
        "dead_lettered",
        "retry",
    ]
    assert [p.value for p in points["lifecycle.items.retried"]] == [1]
    assert [p.value for p in points["lifecycle.items.dead_lettered"]] == [1]
    durations = {p.attributes["step"]: p for p in points["lifecycle.step.duration"]}
    assert durations["01-create_user"].count == 1 and durations["01-create_user"].attributes["result"] == "ok"
    assert durations["02-add_to_groups"].attributes["result"] == "error"
