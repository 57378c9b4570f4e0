"""Alerts: parked and dead-lettered work (the app's metric) and the queue's dead-letter count reach an e-mail.

Read from the parsed Bicep, like the security properties: each check returns its problems, so it runs against
the real templates (none) and against copies broken on purpose (the problem is named).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycle.observability import enable_telemetry
from tests.infra import bicep_model as bicep
from tests.infra.bicep_model import Ref, Value, dig, source
from tests.infra.conftest import INFRA, bicep_files, mutate

Templates = dict[str, bicep.BicepFile]
ALERTS = "modules/alerts.bicep"


def load(root: Path) -> Templates:
    return {p.relative_to(root).as_posix(): bicep.parse_file(p) for p in bicep_files(root)}


def criteria(alert: bicep.Resource) -> list[dict[str, Value]]:
    found = dig(alert.body, "properties", "criteria", "allOf")
    assert isinstance(found, list)
    return [c for c in found if isinstance(c, dict)]


def alert_problems(templates: Templates) -> list[str]:
    problems: list[str] = []
    main = templates["main.bicep"]
    module = main.modules.get("alerts")
    if module is None or module.path != ALERTS:
        return [f"main.bicep does not deploy {ALERTS}"]
    if module.params.get("alertEmail") != Ref("alertEmail") or "alertEmail" not in main.params:
        problems.append("the alert e-mail is not the alertEmail parameter of main.bicep")
    model = templates[ALERTS]
    groups = [r for r in model.resources_of_type("Microsoft.Insights/actionGroups") if not r.existing]
    receivers = dig(groups[0].body, "properties", "emailReceivers") if len(groups) == 1 else None
    if not (isinstance(receivers, list) and [dig(r, "emailAddress") for r in receivers] == [Ref("alertEmail")]):
        problems.append("the action group does not e-mail alertEmail")
    alerts = [r for r in model.resources_of_type("Microsoft.Insights/metricAlerts") if not r.existing]
    metrics = {str(c.get("metricName")): (alert, c) for alert in alerts for c in criteria(alert)}
    for name, namespace, scope in (
        ("lifecycle.items.dead_lettered", "azure.applicationinsights", "appInsights.id"),
        ("DeadletteredMessages", "Microsoft.ServiceBus/namespaces", "namespace.id"),
    ):
        if name not in metrics:
            problems.append(f"no alert on {name}")
            continue
        alert, criterion = metrics[name]
        if criterion.get("metricNamespace") != namespace:
            problems.append(f"{name}: metric namespace is not {namespace}")
        if (criterion.get("operator"), criterion.get("threshold")) != ("GreaterThan", 0):
            problems.append(f"{name}: does not fire on the first item (> 0)")
        if [source(s) for s in dig(alert.body, "properties", "scopes") or []] != [scope]:  # type: ignore[union-attr]
            problems.append(f"{name}: not scoped to {scope}")
        actions = dig(alert.body, "properties", "actions")
        if not (isinstance(actions, list) and [source(dig(a, "actionGroupId")) for a in actions] == ["operators.id"]):
            problems.append(f"{name}: does not notify the action group")
        if dig(alert.body, "properties", "enabled") is not True:
            problems.append(f"{name}: disabled")
    queue_filter = metrics.get("DeadletteredMessages", (None, {}))[1].get("dimensions")
    if not (isinstance(queue_filter, list) and dig(queue_filter[0], "values") == [Ref("queueName")]):
        problems.append("DeadletteredMessages: not filtered to the work queue (EntityName)")
    return problems


def test_parked_and_dead_lettered_work_and_the_dead_letter_queue_alert_by_e_mail(templates: Templates) -> None:
    assert alert_problems(templates) == []


def test_the_alerted_metric_is_the_one_the_app_exports() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from lifecycle import observability

    reader = InMemoryMetricReader()
    enable_telemetry(None, MeterProvider(metric_readers=[reader]))
    try:
        observability.record_outcome("dead_lettered")
        data = reader.get_metrics_data()
        assert data is not None
        names = {m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    finally:
        observability.disable_telemetry()
    assert "lifecycle.items.dead_lettered" in names


def test_the_parameters_file_names_an_alert_address() -> None:
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert "@" in parameters["alertEmail"]["value"]


@pytest.mark.parametrize(
    ("file", "old", "new", "problem"),
    [
        (ALERTS, "        emailAddress: alertEmail\n", "        emailAddress: 'nobody@example.com'\n", "e-mail"),
        (
            ALERTS,
            "          metricName: 'DeadletteredMessages'\n",
            "          metricName: 'ActiveMessages'\n",
            "no alert on DeadletteredMessages",
        ),
        (
            ALERTS,
            "          threshold: 0\n          timeAggregation: 'Total'\n",
            "          threshold: 5\n          timeAggregation: 'Total'\n",
            "first item",
        ),
        (
            ALERTS,
            "              values: [\n                queueName\n",
            "              values: [\n                '*'\n",
            "work queue",
        ),
        ("main.bicep", "    alertEmail: alertEmail\n", "    alertEmail: 'ops@example.com'\n", "alertEmail parameter"),
    ],
)
def test_an_alert_broken_on_purpose_is_caught(
    parser_ready: None, infra_copy: Path, file: str, old: str, new: str, problem: str
) -> None:
    mutate(infra_copy / file, old, new)
    problems = alert_problems(load(infra_copy))
    assert problems and any(problem in p for p in problems), problems
