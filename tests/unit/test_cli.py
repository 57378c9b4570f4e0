"""The ``lifecycle`` command: the plan it prints, its one-line errors, dead letters and the audit trail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle.cli import main
from lifecycle.ingress import Ingress, Request
from lifecycle.queue import OutgoingMessage
from lifecycle.runtime import Runtime
from lifecycle.settings import get_settings
from tests.conftest import BASE_DN, EVENTS, ROOT


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LIFECYCLE_MAPPING_FILE", str(ROOT / "mapping.example.toml"))
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LIFECYCLE_AD_BASE_DN", BASE_DN)
    monkeypatch.setenv("LIFECYCLE_WEBHOOK_HMAC_SECRET", "hmac-secret-value")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_plan_of_an_agents_user_record_is_out_of_scope(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The seed's sample user is linked to agent 3: the example mapping's [scope] excludes agents.
    assert main(["plan", "--file", str(EVENTS / "halo-user-sample.json"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["plans"][0]
    assert printed["lifecycle"] == "out_of_scope"
    assert printed["steps"] == []
    assert "agent 3" in printed["note"]


def test_plan_prints_the_same_plan_as_a_dry_run_request(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = json.loads((EVENTS / "halo-user-sample.json").read_text())
    user = sample["users"][0]
    user.pop("linked_agent_id")  # an ordinary member of staff, in the example's scope
    (env / "user.json").write_text(json.dumps(sample))
    assert main(["plan", "--file", str(env / "user.json"), "--event", "created", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["plans"][0]
    runtime = Runtime()
    # The request is built from the fixture itself, not from what the command printed: a command that dropped
    # or changed a field of the user would print a plan of its own making and still equal a request built on it.
    body = json.dumps({"event": "created", "user_id": user["id"], "user": user}).encode()
    runtime.settings = runtime.settings.model_copy(update={"webhook_auth": "none"})
    answer = Ingress(runtime).events(Request("POST", body, {}, {"dry_run": "true"})).json()["plans"][0]
    assert printed["steps"] == answer["steps"]
    assert printed["steps"][0]["params"]["ou"] == f"OU=Main,OU=Staff,OU=Halo,{BASE_DN}"
    runtime.close()


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["plan", "--file", "/nonexistent.json"], "No such file"),
        (["dlq", "show", "99"], "no dead-lettered message"),
        (["dlq", "replay"], "name what to replay"),
        (["audit", "--since", "yesterday-ish"], "--since"),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(
    env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], mentions: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lifecycle: error: ") and mentions in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_broken_mapping_file_is_reported_with_its_path(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = env / "broken.toml"
    broken.write_text('version = 1\nanchor = "employeeID"\n')
    monkeypatch.setenv("LIFECYCLE_MAPPING_FILE", str(broken))
    get_settings.cache_clear()
    assert main(["check-config"]) == 3  # invalid configuration, not a finding
    err = capsys.readouterr().err
    assert str(broken) in err and "naming" in err


def test_dlq_lists_and_replays_a_dead_lettered_item(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runtime = Runtime()
    runtime.queue.send([OutgoingMessage("w-1", "26", b"{}", {"event": "created"})])
    message = runtime.queue.receive(timeout=0)
    assert message is not None
    runtime.queue.dead_letter(message, "Permanent", "the OU does not exist")
    runtime.close()

    assert main(["dlq", "list"]) == 0
    listing = capsys.readouterr().out
    assert "w-1" in listing and "the OU does not exist" in listing
    assert main(["dlq", "replay", "--reason", "OU does not", "--dry-run"]) == 0
    assert "would replay 1" in capsys.readouterr().out
    assert main(["dlq", "replay", "--all"]) == 0
    assert "replayed 1" in capsys.readouterr().out
    assert main(["dlq", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    runtime = Runtime()
    replayed = runtime.queue.receive(timeout=0)
    assert replayed is not None and replayed.message_id != "w-1"
    assert replayed.properties["original_message_id"] == "w-1"
    # Audited with who replayed it, as the console's replays are.
    [entry] = [e for e in runtime.store.audit(user_id=26) if e.action == "replay"]
    assert entry.requested_by["source"] == "cli" and entry.requested_by["by"]
    assert entry.requested_by["message_id"] == replayed.message_id
    runtime.close()


def test_sign_prints_the_token_halo_would_send(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lifecycle.halo.auth import sign_body

    body = EVENTS / "runbook-created.json"
    assert main(["sign", str(body)]) == 0
    assert capsys.readouterr().out.strip() == sign_body("hmac-secret-value", body.read_bytes())


def _stage(user_id: int) -> str:
    from datetime import UTC, datetime, timedelta

    from lifecycle.mapping.planner import plan
    from lifecycle.state import PendingAction
    from lifecycle.work import LifecycleEvent

    runtime = Runtime(get_settings())
    try:
        event = LifecycleEvent(
            kind="deleted", user_id=user_id, occurred_at=datetime.now(UTC), source="webhook", user={"id": user_id}
        )
        item = plan(event, runtime.mapping, work_id=f"w-{user_id}", context=runtime.plan_context, status="left")
        runtime.store.add_pending(
            PendingAction(user_id, "05-delete_user", datetime.now(UTC) + timedelta(days=30), item.model_dump_json(),
                          datetime.now(UTC), "delete the account 30 days after the leaver")
        )
    finally:
        runtime.close()
    return "05-delete_user"


def test_pending_cancel_drops_the_staged_step_and_audits_who(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = _stage(61)
    assert main(["pending", "--user", "61", "--cancel", key]) == 0
    assert "cancelled 05-delete_user of user 61" in capsys.readouterr().out
    runtime = Runtime(get_settings())
    try:
        assert runtime.store.pending(user_id=61) == []
        [entry] = [e for e in runtime.store.audit(user_id=61) if e.action == "cancel_pending"]
        assert entry.requested_by["source"] == "cli" and entry.requested_by["by"]
    finally:
        runtime.close()
    assert main(["pending", "--user", "61", "--cancel", key]) == 2  # gone: one line, non-zero


def test_pending_run_now_needs_a_confirmation_then_enqueues(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = _stage(62)
    assert main(["pending", "--user", "62", "--run-now", key]) == 2  # no terminal to confirm on, no --yes
    assert "add --yes" in capsys.readouterr().err
    assert main(["pending", "--user", "62", "--run-now", key, "--yes"]) == 0
    runtime = Runtime(get_settings())
    try:
        assert runtime.store.pending(user_id=62) == []
        message = runtime.queue.receive(timeout=0)
        assert message is not None and message.session_id == "62"
    finally:
        runtime.close()
