"""Which events are stale snapshots of a person (skipped, audited, counted) and which always run.

Staged work is old on purpose; a thin event is fetched now; a leaver or deletion is never skipped unless the
newer applied event was itself a leaver or deletion (a future-dated timestamp must not block deprovisioning
for good: issue 14, item 4).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from lifecycle import observability
from lifecycle.ordering import stale_reason
from lifecycle.runtime import Runtime
from lifecycle.state import PersonRecord
from lifecycle.work import EventKind, Lifecycle, LifecycleEvent, WorkItem
from lifecycle.worker import Worker
from tests.conftest import make_settings

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(hours=1)
FUTURE = datetime(2031, 1, 1, tzinfo=UTC)


def item(
    kind: EventKind = "updated",
    lifecycle: Lifecycle = "mover",
    *,
    at: datetime = EARLIER,
    inactive: bool = False,
    thin: bool = False,
) -> WorkItem:
    user = None if thin else {"id": 42, "inactive": inactive}
    event = LifecycleEvent(kind=kind, user_id=42, occurred_at=at, source="webhook", user=user)
    return WorkItem(work_id=f"w-{kind}-{lifecycle}-{at.timestamp()}", lifecycle=lifecycle, event=event, steps=[])


def person(status: Literal["active", "left"], last: datetime = NOW) -> PersonRecord:
    return PersonRecord(user_id=42, status=status, last_event_at=last, last_work_id="w-0")


def test_an_older_update_than_the_one_applied_is_stale() -> None:
    assert stale_reason(item(), person("active")) is not None


def test_a_newer_or_first_event_runs() -> None:
    assert stale_reason(item(at=NOW + timedelta(seconds=1)), person("active")) is None
    assert stale_reason(item(), None) is None


def test_staged_work_is_never_stale_for_its_age() -> None:
    assert stale_reason(item("deleted", "staged"), person("left")) is None


def test_a_thin_event_is_fetched_now_so_it_is_never_an_older_snapshot() -> None:
    assert stale_reason(item(thin=True, lifecycle="fetch"), person("active")) is None


@pytest.mark.parametrize(
    "leaver",
    [item("deleted", "deleted"), item("updated", "leaver", inactive=True)],
    ids=["deleted", "inactive"],
)
def test_a_leaver_older_than_an_applied_update_still_runs(leaver: WorkItem) -> None:
    # The applied update carried a timestamp years ahead (a wrong clock, or a hostile field): the leaver runs.
    assert stale_reason(leaver, person("active", FUTURE)) is None


def test_a_leaver_older_than_an_applied_leaver_is_stale() -> None:
    assert stale_reason(item("deleted", "deleted"), person("left")) is not None


@pytest.fixture
def metrics() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    observability.enable_telemetry(None, MeterProvider(metric_readers=[reader]))
    yield reader
    observability.disable_telemetry()


def _stale_points(reader: InMemoryMetricReader) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "lifecycle.items.stale_skipped"
        for point in metric.data.data_points
    ]


def test_every_stale_skip_is_audited_and_counted(tmp_path: Path, metrics: InMemoryMetricReader) -> None:
    runtime = Runtime(make_settings(tmp_path))
    worker = Worker(runtime)
    try:
        runtime.store.put_person(person("active"))
        result = worker.run(item(), {"source": "webhook"})
        assert result.outcome == "skipped" and result.reason.startswith("stale")
        [entry] = runtime.store.audit(user_id=42)
        assert entry.outcome == "skipped" and entry.message == result.reason
        [point] = _stale_points(metrics)
        assert point.value == 1 and dict(point.attributes) == {"lifecycle": "mover"}
    finally:
        worker.close()
        runtime.close()
