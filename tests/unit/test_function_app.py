"""function_app.py as the Azure Functions Python worker sees it: bindings, import cost, and what each body does.

The decorated functions are called the way the worker calls them (``func.HttpRequest``,
``func.ServiceBusMessage`` built by the library's own converter), on a runtime whose Service Bus client is the
stand-in at the SDK boundary.
"""

from __future__ import annotations

import base64
import inspect
import json
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessageInConverter
from pydantic import SecretStr

import function_app
from lifecycle import azure_host
from lifecycle.errors import ConfigurationError
from lifecycle.queue.servicebus import ServiceBusQueue
from lifecycle.runtime import Runtime
from lifecycle.settings import Settings
from lifecycle.work import WorkItem
from tests.conftest import EVENTS, ROOT, make_settings
from tests.standins.amqp_broker.process import BrokerProcess
from tests.standins.functions_host import functions_message
from tests.unit.conftest import Bus

BASIC = "Basic " + base64.b64encode(b"halo:basic-secret-value").decode()
# What a cold start must not pay for before the first invocation needs it.
HEAVY_MODULES = (
    "azure.servicebus",
    "msgraph",
    "ldap3",
    "azure.data.tables",
    "azure.identity",
    "azure.monitor",
    "opentelemetry",
    "msal",
)


@pytest.fixture(scope="module")
def functions() -> dict[str, Any]:
    # get_functions() indexes the app once per process (a second call raises).
    return {str(f.get_function_name()): f for f in function_app.app.get_functions()}


def bindings(function: Any) -> dict[str, dict[str, Any]]:
    return {b.name: json.loads(json.dumps(b.get_dict_repr(), default=str)) for b in function.get_bindings()}


# Binding metadata ------------------------------------------------------------------------------------------
def test_the_app_has_exactly_its_functions(functions: dict[str, Any]) -> None:
    assert sorted(functions) == [
        "console",
        "halo_events",
        "halo_poll",
        "halo_request",
        "halo_tickets",
        "health",
        "manage_held",
        "manage_held_decision",
        "reconcile",
        "release_due",
        "ticket_requests",
        "work",
    ]


def test_the_delta_poll_timer_reads_its_schedule_from_an_app_setting(functions: dict[str, Any]) -> None:
    trigger = bindings(functions["halo_poll"])["timer"]
    assert trigger["type"] == "timerTrigger" and trigger["runOnStartup"] is False
    assert trigger["schedule"] == "%LIFECYCLE_HALO_POLL_SCHEDULE%"
    assert Settings.model_fields["halo_poll_schedule"].default == "0 */5 * * * *"


def test_the_ticket_routes_need_a_function_key_and_their_timer_does_not_run_at_start_up(
    functions: dict[str, Any],
) -> None:
    tickets = bindings(functions["halo_tickets"])["req"]
    status = bindings(functions["halo_request"])["req"]
    assert (tickets["route"], tickets["methods"], tickets["authLevel"]) == ("halo/tickets", ["POST"], "FUNCTION")
    assert (status["route"], status["methods"], status["authLevel"]) == (
        "halo/requests/{request_id}",
        ["GET"],
        "FUNCTION",
    )
    timer = bindings(functions["ticket_requests"])["timer"]
    assert timer["type"] == "timerTrigger" and timer["runOnStartup"] is False


def test_the_staged_work_timer_reads_its_schedule_from_an_app_setting(functions: dict[str, Any]) -> None:
    trigger = bindings(functions["release_due"])["timer"]
    assert trigger["type"] == "timerTrigger" and trigger["runOnStartup"] is False
    assert trigger["schedule"] == "%LIFECYCLE_RELEASE_SCHEDULE%"


def test_the_operator_routes_need_a_function_key_and_avoid_the_reserved_admin_prefix(
    functions: dict[str, Any],
) -> None:
    listing = bindings(functions["manage_held"])["req"]
    decision = bindings(functions["manage_held_decision"])["req"]
    assert (listing["route"], listing["methods"], listing["authLevel"]) == ("manage/held", ["GET"], "FUNCTION")
    assert (decision["route"], decision["methods"], decision["authLevel"]) == (
        "manage/held/{held_id}/{decision}",
        ["POST"],
        "FUNCTION",
    )


def test_the_console_route_is_anonymous_at_the_host_because_the_console_signs_people_in(
    functions: dict[str, Any],
) -> None:
    trigger = bindings(functions["console"])["req"]
    assert (trigger["route"], sorted(trigger["methods"]), trigger["authLevel"]) == (
        "console/{*path}",
        ["GET", "POST"],
        "ANONYMOUS",
    )


def test_the_events_route_takes_posts_with_a_function_key(functions: dict[str, Any]) -> None:
    trigger = bindings(functions["halo_events"])["req"]
    assert trigger["type"] == "httpTrigger"
    assert (trigger["route"], trigger["methods"], trigger["authLevel"]) == ("halo/events", ["POST"], "FUNCTION")


def test_the_health_route_is_anonymous_for_probes(functions: dict[str, Any]) -> None:
    trigger = bindings(functions["health"])["req"]
    assert (trigger["route"], trigger["methods"], trigger["authLevel"]) == ("health", ["GET"], "ANONYMOUS")


def test_the_worker_triggers_on_the_session_queue_named_by_a_setting(functions: dict[str, Any]) -> None:
    trigger = bindings(functions["work"])["msg"]
    assert trigger["type"] == "serviceBusTrigger"
    assert trigger["queueName"] == "%LIFECYCLE_SERVICEBUS_QUEUE%"
    assert trigger["connection"] == "ServiceBusConnection"
    assert trigger["isSessionsEnabled"] is True


def test_the_reconciliation_timer_does_not_run_at_start_up_and_reads_its_schedule_from_an_app_setting(
    functions: dict[str, Any],
) -> None:
    trigger = bindings(functions["reconcile"])["timer"]
    assert trigger["type"] == "timerTrigger" and trigger["runOnStartup"] is False
    assert trigger["schedule"] == "%LIFECYCLE_RECONCILE_SCHEDULE%"
    # The default the infrastructure and the settings give it: NCRONTAB with seconds, once a day.
    assert Settings.model_fields["reconcile_schedule"].default == "0 0 5 * * *"


def test_every_binding_name_matches_a_parameter_of_its_function(functions: dict[str, Any]) -> None:
    for name, function in functions.items():
        parameters = set(inspect.signature(function.get_user_function()).parameters)
        named = {b for b in bindings(function) if b != "$return"}
        assert named == parameters, f"{name}: bindings {named} but parameters {parameters}"


def test_the_workers_type_checks_accept_every_annotation(functions: dict[str, Any]) -> None:
    # The worker resolves annotations with get_type_hints (they are strings here) and checks each trigger's.
    hints = {name: typing.get_type_hints(f.get_user_function()) for name, f in functions.items()}
    assert hints["halo_events"]["req"] is func.HttpRequest and hints["halo_events"]["return"] is func.HttpResponse
    assert ServiceBusMessageInConverter.check_input_type_annotation(hints["work"]["msg"])
    assert hints["reconcile"]["timer"] is func.TimerRequest


def test_host_json_keeps_the_function_timeout_below_the_lock_renewal(functions: dict[str, Any]) -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["extensionBundle"]["version"] == "[4.*, 5.0.0)"
    service_bus = host["extensions"]["serviceBus"]

    def seconds(text: str) -> int:
        h, m, s = (int(part) for part in text.split(":"))
        return h * 3600 + m * 60 + s

    assert seconds(host["functionTimeout"]) < seconds(service_bus["maxAutoLockRenewalDuration"])
    assert seconds(service_bus["sessionIdleTimeout"]) <= 10
    assert service_bus["autoCompleteMessages"] is True


# Import cost -----------------------------------------------------------------------------------------------
def test_importing_function_app_imports_no_heavy_sdk() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import function_app"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "function_app" in imported and "azure.functions" in imported
    heavy = sorted(
        m
        for m in imported
        if m.split(".")[0] in {"msgraph", "ldap3", "msal", "opentelemetry"} or m.startswith(HEAVY_MODULES)
    )
    assert heavy == []


def test_planning_with_an_ad_only_mapping_imports_no_extension_action_models() -> None:
    # The first webhook's cold path loads and validates the mapping and plans: with only AD actions it needs
    # none of the extension actions' pydantic models (the Graph ones alone cost more than our planner module).
    script = (
        "import sys\n"
        "from datetime import UTC, datetime\n"
        "from lifecycle.mapping.planner import plan\n"
        "from lifecycle.mapping.schema import load_mapping\n"
        "from lifecycle.work import LifecycleEvent\n"
        "mapping = load_mapping(__import__('pathlib').Path('mapping.example.toml'))\n"
        "user = {'id': 5, 'name': 'A B', 'firstname': 'A', 'surname': 'B', 'site_name': 'Main'}\n"
        "event = LifecycleEvent(kind='created', user_id=5, occurred_at=datetime.now(UTC), source='cli', user=user)\n"
        "assert plan(event, mapping, work_id='w').steps\n"
        "print(sorted(m for m in sys.modules if m.startswith('lifecycle.targets')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# The HTTP functions ----------------------------------------------------------------------------------------
# Service Bus is the AMQP broker (tests/standins/amqp_broker), reached by the real SDK; ``bus`` is a fresh queue.
@pytest.fixture
def runtime(tmp_path: Path, bus: Bus) -> Iterator[Runtime]:
    rt = Runtime(make_settings(tmp_path, queue_backend="servicebus"))
    rt.__dict__["queue"] = ServiceBusQueue(bus.queue, client_factory=bus.client, receive_wait_seconds=1.0)
    azure_host.use_runtime(rt)
    yield rt
    azure_host.use_runtime(None)
    rt.close()


def post(body: bytes, headers: dict[str, str] | None = None, params: dict[str, str] | None = None) -> func.HttpResponse:
    request = func.HttpRequest(
        method="POST",
        url="https://func-halo.azurewebsites.net/api/halo/events",
        headers={"Authorization": BASIC, "Content-Type": "application/json", **(headers or {})},
        params=params or {},
        body=body,
    )
    response: func.HttpResponse = function_app.halo_events(request)
    return response


def test_an_accepted_event_is_enqueued_with_its_work_id_session_and_properties(runtime: Runtime, bus: Bus) -> None:
    response = post((EVENTS / "runbook-created.json").read_bytes())
    assert response.status_code == 202, response.get_body()
    [accepted] = json.loads(response.get_body())["accepted"]
    [sent] = bus.active()
    assert sent["message_id"] == accepted["work_id"]
    assert sent["session_id"] == str(accepted["user_id"]) == "26"
    assert sent["properties"] == {"event": "created", "lifecycle": "joiner", "schema_version": "1"}
    item = WorkItem.from_bytes(sent["body"].encode())
    assert (item.work_id, item.event.user_id, item.lifecycle) == (accepted["work_id"], 26, "joiner")


def test_a_rejected_event_is_a_problem_and_sends_nothing(runtime: Runtime, bus: Bus) -> None:
    response = post((EVENTS / "runbook-created.json").read_bytes(), headers={"Authorization": "Basic bm9wZTpub3Bl"})
    assert response.status_code == 401 and response.mimetype == "application/problem+json"
    assert bus.active() == []


def test_an_unreachable_service_bus_answers_503_so_that_halo_sends_again(
    runtime: Runtime, amqp_broker: BrokerProcess, bus: Bus
) -> None:
    amqp_broker.fail_next("send", "amqp:connection:forced", "connection refused")
    response = post((EVENTS / "runbook-created.json").read_bytes())
    assert response.status_code == 503 and response.mimetype == "application/problem+json"
    assert "Traceback" not in response.get_body().decode()
    # A 503 tells Halo to send again: it is honest only if nothing of this request was queued.
    assert bus.state()["messages"] == [] and bus.state()["dead_letters"] == []


def test_a_dry_run_answers_the_plan_and_sends_nothing(runtime: Runtime, bus: Bus) -> None:
    response = post((EVENTS / "runbook-created.json").read_bytes(), params={"dry_run": "true"})
    assert response.status_code == 200 and json.loads(response.get_body())["dry_run"] is True
    assert bus.active() == []


def test_health_reports_the_queue_the_store_and_the_mapping(runtime: Runtime) -> None:
    request = func.HttpRequest(method="GET", url="https://x/api/health", body=b"")
    response = function_app.health(request)
    assert response.status_code == 200
    assert json.loads(response.get_body())["checks"] == {"queue": True, "store": True, "mapping": True}


# The worker function ---------------------------------------------------------------------------------------
def test_an_unreadable_message_without_parking_is_given_back_to_the_host(runtime: Runtime) -> None:
    message = functions_message(b"not json", message_id="m-1", session_id="26")
    # No Table storage to park it in: the host abandons it, and Service Bus dead-letters it after
    # maxDeliveryCount deliveries, so nothing is lost.
    with pytest.raises(azure_host.AbandonMessage, match="m-1"):
        function_app.work(message)


def test_the_worker_function_refuses_to_run_on_the_embedded_queue(tmp_path: Path) -> None:
    rt = Runtime(make_settings(tmp_path))
    azure_host.use_runtime(rt)
    try:
        with pytest.raises(ConfigurationError, match="LIFECYCLE_QUEUE_BACKEND=servicebus"):
            function_app.work(functions_message(b"{}", message_id="m-1", session_id="26"))
    finally:
        azure_host.use_runtime(None)
        rt.close()


# The timer -------------------------------------------------------------------------------------------------
def timer() -> func.TimerRequest:
    from azure.functions.timer import TimerRequest

    return TimerRequest(past_due=False)


def test_the_timer_says_so_when_reconciliation_is_not_there_yet(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "lifecycle.reconcile", None)  # as if the module did not exist
    monkeypatch.setattr("lifecycle.observability.log.propagate", True)
    with caplog.at_level("WARNING", logger="lifecycle"):
        assert function_app.reconcile(timer()) is None
    assert "reconciliation is not available" in caplog.text


def test_the_timer_runs_reconciliation_on_the_process_runtime(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []
    module = types.ModuleType("lifecycle.reconcile")
    module.run_reconcile = lambda rt, **kwargs: calls.append((rt, kwargs))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lifecycle.reconcile", module)
    function_app.reconcile(timer())
    assert calls == [(runtime, {})]


def manage(runtime: Runtime, route_params: dict[str, str], method: str, token: str | None) -> func.HttpResponse:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = func.HttpRequest(
        method=method,
        url="https://func-halo.azurewebsites.net/api/manage/held",
        headers=headers,
        params={},
        route_params=route_params,
        body=b"",
    )
    function = function_app.manage_held_decision if route_params else function_app.manage_held
    response: func.HttpResponse = function(request)
    return response


def test_the_operator_routes_are_off_without_a_token_and_need_the_right_one(tmp_path: Path) -> None:
    rt = Runtime(make_settings(tmp_path))
    azure_host.use_runtime(rt)
    try:
        assert manage(rt, {}, "GET", "anything").status_code == 404
        rt.settings = rt.settings.model_copy(update={"admin_token": SecretStr("operator-token-value")})
        assert manage(rt, {}, "GET", None).status_code == 401
        assert manage(rt, {}, "GET", "wrong-token").status_code == 401
        listing = manage(rt, {}, "GET", "operator-token-value")
        assert listing.status_code == 200 and json.loads(listing.get_body())["held"] == []
        missing = manage(rt, {"held_id": "nope", "decision": "approve"}, "POST", "operator-token-value")
        assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    finally:
        azure_host.use_runtime(None)
        rt.close()


def test_a_ticket_runbook_body_is_queued_in_the_tickets_own_session(runtime: Runtime, bus: Bus) -> None:
    request = func.HttpRequest(
        method="POST",
        url="https://func-halo.azurewebsites.net/api/halo/tickets",
        headers={"Authorization": BASIC, "Content-Type": "application/json"},
        params={},
        body=b'{"ticket_id": 123}',
    )
    response = function_app.halo_tickets(request)
    assert response.status_code == 202, response.get_body()
    assert json.loads(response.get_body())["request_id"] == "ticket-123"
    [sent] = bus.active()
    assert sent["session_id"] == "-123" and WorkItem.from_bytes(sent["body"].encode()).lifecycle == "ticket"
    status = function_app.halo_request(
        func.HttpRequest(
            method="GET",
            url="https://func-halo.azurewebsites.net/api/halo/requests/ticket-123",
            headers={"Authorization": BASIC},
            params={},
            route_params={"request_id": "ticket-123"},
            body=b"",
        )
    )
    assert status.status_code == 200 and json.loads(status.get_body())["status"] == "received"
