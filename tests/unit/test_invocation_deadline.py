"""Every invocation finishes well inside the Functions host's functionTimeout.

One deadline per invocation (75 % of host.json's functionTimeout, read in lifecycle/deadline.py only). Every
setting that is a wait is either waited inside one invocation, and then validation refuses a value past the
deadline, or it is a horizon that rescheduled retries span. A new wait setting fails here until it is one of
the two.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from lifecycle import deadline
from lifecycle.halo import client as halo_client
from lifecycle.settings import Settings
from lifecycle.settings_models import ADConnection
from lifecycle.targets.files_actions import FileRoot
from lifecycle.targets.script_actions import ScriptEntry
from tests.conftest import ROOT

WAIT_NAME = re.compile(r"(timeout|wait|patience|poll|interval|seconds)")
# Waited inside one invocation: validation keeps them within the deadline.
IN_INVOCATION: set[tuple[type[BaseModel], str]] = {
    (Settings, "ad_timeout_seconds"),
    (Settings, "halo_timeout_seconds"),
    (Settings, "graph_timeout_seconds"),
    (ADConnection, "timeout_seconds"),
    (ScriptEntry, "timeout_seconds"),
    (ScriptEntry, "poll_interval_seconds"),
    (FileRoot, "timeout_seconds"),
}
# Horizons that rescheduled retries span (each attempt is its own invocation), or not waits at all.
ACROSS_INVOCATIONS: set[tuple[type[BaseModel], str]] = {
    (Settings, "retry_max_seconds"),
    (Settings, "retry_base_seconds"),  # a back-off delay: the message is rescheduled, nothing waits
    (Settings, "retry_cap_seconds"),
    (Settings, "setup_retry_seconds"),
    (Settings, "guard_window_seconds"),  # a sliding window, not a wait
    (Settings, "halo_rate_limit_window_seconds"),  # the limiter waits at most the caller's bounded patience
    (Settings, "graph_sync_wait_seconds"),  # directory sync: the step is rescheduled until then
    (Settings, "graph_poll_seconds"),  # the reschedule interval while a mailbox is provisioned
    (ScriptEntry, "poll_timeout_seconds"),  # polling resumes across invocations from the status URL
    (Settings, "webhook_max_future_seconds"),  # a tolerance on timestamps, not a wait
    (Settings, "webhook_signed_window_seconds"),  # likewise
    (Settings, "halo_poll_page_size"),  # a page size, not a wait
}


def _float_fields(model: type[BaseModel]) -> set[tuple[type[BaseModel], str]]:
    return {
        (model, name)
        for name, field in model.model_fields.items()
        if field.annotation in (float, int, "float", "int", float | None) and WAIT_NAME.search(name)
    }


def test_the_deadline_is_three_quarters_of_host_json_function_timeout() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert deadline.function_timeout_seconds() == deadline.parse_timespan(host["functionTimeout"]) == 240.0
    assert deadline.invocation_budget_seconds() == 180.0


def test_every_wait_setting_is_either_bounded_by_the_deadline_or_spans_invocations() -> None:
    found: set[tuple[type[BaseModel], str]] = set()
    for model in (Settings, ADConnection, ScriptEntry, FileRoot):
        found |= _float_fields(model)
    unclassified = found - IN_INVOCATION - ACROSS_INVOCATIONS
    assert not unclassified, f"classify these waits in this test and bound them: {sorted(n for _, n in unclassified)}"


def _build(model: type[BaseModel], name: str, value: float, tmp_path: Path) -> Any:
    values: dict[str, Any] = {name: value}
    if model is ScriptEntry:
        values.update(kind="webhook", target="https://automation.example.com/hook", secret="s3cret-for-a-test")
    elif model is FileRoot:
        values.update(path=str(tmp_path))
    return model.model_validate(values)


def _named(pair: tuple[type[BaseModel], str]) -> str:
    return f"{pair[0].__name__}.{pair[1]}"


BOUNDED = sorted(IN_INVOCATION, key=_named)


@pytest.mark.parametrize(("model", "name"), BOUNDED, ids=str)
def test_a_wait_inside_one_invocation_cannot_be_set_past_the_deadline(
    model: type[BaseModel], name: str, tmp_path: Path
) -> None:
    budget = deadline.invocation_budget_seconds()
    default = float(model.model_fields[name].default)
    assert default <= budget, f"{model.__name__}.{name} defaults to {default} s, past the {budget} s deadline"
    _build(model, name, budget, tmp_path)
    with pytest.raises(ValidationError, match="longer than one invocation may take"):
        _build(model, name, budget + 1, tmp_path)


def test_the_halo_clients_patience_is_cut_at_the_deadline() -> None:
    assert deadline.invocation_budget_seconds() >= halo_client.WORKER_PATIENCE_SECONDS
    with deadline.invocation(5.0):
        assert deadline.bounded(halo_client.BATCH_PATIENCE_SECONDS) <= 5.0
    assert deadline.bounded(halo_client.BATCH_PATIENCE_SECONDS) == halo_client.BATCH_PATIENCE_SECONDS


def test_a_nested_deadline_never_extends_the_outer_one() -> None:
    with deadline.invocation(2.0) as outer, deadline.invocation(100.0) as inner:
        assert inner == outer and deadline.remaining() <= 2.0


# Graph: in-place waits on Retry-After and token requests (lifecycle/targets/graph/transport.py, tokens.py) --
def test_graphs_in_place_wait_is_short_and_never_past_what_is_left_of_the_invocation() -> None:
    from types import SimpleNamespace

    from lifecycle.targets.graph.transport import INLINE_RETRY_MAX_SECONDS, GraphClient, Response

    assert deadline.invocation_budget_seconds() > INLINE_RETRY_MAX_SECONDS
    client: Any = SimpleNamespace(settings=SimpleNamespace(retry_base_seconds=1.0))
    throttled = Response(429, {"retry-after": "5"})
    assert GraphClient.inline_wait(client, throttled, 0) == 5.0
    with deadline.invocation(2.0):
        assert GraphClient.inline_wait(client, throttled, 0) is None  # handed back: the item is rescheduled
        assert GraphClient.inline_wait(client, Response(503, {}), 3) is None  # 1 s * 2**3 = 8 s > 2 s left


def test_a_graph_token_request_never_waits_past_the_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    from lifecycle.targets.graph.tokens import TokenSource
    from tests.conftest import make_settings

    seen: list[float] = []

    def record(self: requests.Session, *args: Any, **kwargs: Any) -> None:
        seen.append(kwargs["timeout"])

    monkeypatch.setattr(requests.Session, "request", record)
    session = TokenSource(make_settings(tmp_path, graph_timeout_seconds=60.0), "https://graph.test")._session()
    session.request("POST", "https://login.test/token", timeout=60.0)  # msal passes its own timeout
    with deadline.invocation(2.0):
        session.request("POST", "https://login.test/token", timeout=60.0)
    with deadline.invocation(0.0), pytest.raises(requests.Timeout):
        session.request("POST", "https://login.test/token")
    assert seen[0] == 60.0 and seen[1] <= 2.0 and len(seen) == 2


# Home folders and SMB (lifecycle/targets/homefolders.py, files_*.py, smb_acl.py, smb_watchdog.py) ----------
WAITING_MODULES = (
    "lifecycle.targets.graph.transport",
    "lifecycle.targets.graph.tokens",
    "lifecycle.targets.graph.mail",
    "lifecycle.targets.homefolders",
    "lifecycle.targets.files_tree",
    "lifecycle.targets.files_local",
    "lifecycle.targets.files_smb",
    "lifecycle.targets.smb_acl",
    "lifecycle.targets.smb_watchdog",
    "lifecycle.targets.files_actions",
)


@pytest.mark.parametrize("module_name", WAITING_MODULES)
def test_no_wait_constant_of_the_graph_or_home_folder_code_reaches_the_deadline(module_name: str) -> None:
    import importlib

    module = importlib.import_module(module_name)
    budget = deadline.invocation_budget_seconds()
    for name, value in vars(module).items():
        if name.isupper() and WAIT_NAME.search(name.lower()) and isinstance(value, (int, float)):
            assert value < budget, f"{module_name}.{name} = {value} s does not fit the {budget} s deadline"


def test_home_folder_waits_are_cut_at_the_deadline() -> None:
    from lifecycle.targets import files_tree, smb_watchdog

    assert files_tree.CHUNK_TIME_MARGIN_SECONDS < files_tree.FILE_TIME_MARGIN_SECONDS
    assert smb_watchdog.connection_timeout(60.0) == 60  # outside an invocation (the CLI): as configured
    with deadline.invocation(2.0):
        assert smb_watchdog.connection_timeout(60.0) <= 2  # a new connection's connect, cut at the deadline
