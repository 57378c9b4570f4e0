"""Script steps end to end: real AD accounts, the worker's journal, and a signed HTTPS webhook stand-in."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lifecycle import cli
from lifecycle.errors import OutcomeUnknown, Permanent, Retryable
from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import Lifecycles, Mapping
from lifecycle.queue import ORIGINAL_MESSAGE_ID, OutgoingMessage
from lifecycle.runtime import Runtime
from lifecycle.targets import StepContext
from lifecycle.targets.script_actions import ScriptEntry
from lifecycle.targets.scripts import ScriptTarget, verify
from lifecycle.work import LifecycleEvent, Step, WorkItem
from lifecycle.worker import Worker
from tests.integration.conftest import World, admin_connection, dc_settings, delivery, new_user
from tests.standins.script_endpoint import ScriptEndpoint

pytestmark = pytest.mark.integration
SECRET = "webhook-signing-secret-0123456789abcdef"

RECORDER = """
from pathlib import Path

def record(event, args):
    with Path(args["log"]).open("a") as log:
        log.write(f"{event['work_id']} {event['step']} {args['user']}\\n")
    return {"status": "ok", "output": {"recorded": args["user"], "api_key": "never-shown"}}
"""


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[ScriptEndpoint]:
    server = ScriptEndpoint(tmp_path / "endpoint", SECRET).start()
    yield server
    server.stop()


def _mapping(example: Mapping, joiner: list[dict[str, Any]]) -> Mapping:
    lifecycles = example.lifecycles.model_dump()
    lifecycles["joiner"] = [{"action": "create_user"}, *joiner]
    return example.model_copy(update={"lifecycles": Lifecycles.model_validate(lifecycles)})


@pytest.fixture
def script_log(tmp_path: Path) -> Path:
    return tmp_path / "ran.log"


def make_world(
    directory: DCInfo, mapping: Mapping, tmp_path: Path, endpoint: ScriptEndpoint
) -> tuple[Runtime, Worker, Any]:
    scripts_dir = tmp_path / "scripts"
    scripts_dir.mkdir(exist_ok=True)
    (scripts_dir / "it_scripts.py").write_text(RECORDER)
    settings = dc_settings(
        directory,
        tmp_path,
        scripts_dir=scripts_dir,
        scripts={
            "record": {"kind": "python", "target": "it_scripts:record"},
            "notify": {
                "kind": "webhook",
                "target": endpoint.url("/ok"),
                "secret": SECRET,
                "ca_file": str(endpoint.ca_file),
            },
        },
        retry_base_seconds=0.05,
        retry_cap_seconds=0.2,
    )
    runtime = Runtime(settings, mapping=mapping)
    return runtime, Worker(runtime), admin_connection(directory)


@pytest.fixture
def scripts_world(
    directory: DCInfo, example_mapping: Mapping, tmp_path: Path, endpoint: ScriptEndpoint, script_log: Path
) -> Iterator[World]:
    mapping = _mapping(
        example_mapping,
        [
            {"action": "run_script", "script": "record", "args": {"log": str(script_log), "user": "{user_id}"}},
            {"action": "run_script", "script": "notify", "args": {"name": "{name}", "password": "p@ss-in-args"}},
        ],
    )
    runtime, worker, conn = make_world(directory, mapping, tmp_path, endpoint)
    yield World(directory, runtime, worker, conn)
    worker.close()
    conn.unbind()
    runtime.close()


def _deliver_again(world: World, body: bytes, session: str, message_id: str, times: int) -> None:
    for n in range(times):
        world.runtime.queue.send(
            [
                OutgoingMessage(
                    message_id=f"{message_id}-again-{n}",
                    session_id=session,
                    body=body,
                    properties={ORIGINAL_MESSAGE_ID: message_id},
                )
            ]
        )


def test_a_python_and_a_webhook_script_each_run_exactly_once_across_three_deliveries(
    scripts_world: World, endpoint: ScriptEndpoint, script_log: Path
) -> None:
    user = new_user("Sven", "Scripted")
    scripts_world.accept(delivery("created", user))
    message = scripts_world.runtime.queue.receive(timeout=0)
    assert message is not None
    assert scripts_world.worker.process_message(message).outcome == "completed"
    # The same work item twice more: a redelivery and a replay, each under its own message id.
    _deliver_again(scripts_world, message.body, str(user["id"]), message.message_id, times=2)
    assert [r.outcome for r in scripts_world.drain()] == ["completed", "completed"]

    assert script_log.read_text().splitlines() == [f"{message.message_id} 02-run_script {user['id']}"]
    (call,) = endpoint.calls
    assert endpoint.state.rejected == 0  # the signature over the raw body verified
    assert call.body["args"] == {"name": user["name"], "password": "p@ss-in-args"}
    assert call.headers["Idempotency-Key"] == f"{message.message_id}/03-run_script"
    assert call.body["event"]["user_id"] == user["id"] and call.body["dn"].startswith("CN=Sven Scripted")
    ran = [e for e in scripts_world.audit(user["id"]) if e.action == "run_script"]
    assert [(e.step, e.outcome) for e in ran] == [("02-run_script", "changed"), ("03-run_script", "changed")]
    assert "never-shown" not in ran[0].message and "tok-should-not-show" not in ran[1].message


def test_a_script_not_on_the_allow_list_is_refused_and_audited(
    directory: DCInfo, example_mapping: Mapping, tmp_path: Path, endpoint: ScriptEndpoint, script_log: Path
) -> None:
    mapping = _mapping(
        example_mapping,
        [
            {"action": "run_script", "script": "wipe_everything", "args": {}},
            {"action": "run_script", "script": "record", "args": {"log": str(script_log), "user": "{user_id}"}},
        ],
    )
    runtime, worker, conn = make_world(directory, mapping, tmp_path, endpoint)
    world = World(directory, runtime, worker, conn)
    try:
        user = new_user("Rita", "Refused")
        world.accept(delivery("created", user))
        assert [r.outcome for r in world.drain()] == ["refused"]
        (refusal,) = [e for e in world.audit(user["id"]) if e.outcome == "refused"]
        assert refusal.action == "run_script" and "'wipe_everything' is not on the allow-list" in refusal.message
        assert not script_log.exists() and endpoint.calls == []
    finally:
        worker.close()
        conn.unbind()
        runtime.close()


def test_a_script_whose_worker_died_mid_step_is_not_rerun_until_an_operator_releases_it(
    scripts_world: World, script_log: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    user = new_user("Otto", "Outcome")
    work_id = scripts_world.accept(delivery("created", user))["accepted"][0]["work_id"]
    store = scripts_world.runtime.store
    # A worker claimed the script step and died (its lease is over): did the script run? Nobody knows.
    store.claim_step(work_id, "02-run_script", "a-worker-that-died", lease_seconds=-1)
    store.note_step(work_id, "02-run_script", "a-worker-that-died", {"marker": None})  # it began the script
    assert [r.outcome for r in scripts_world.drain()] == ["dead_lettered"]
    (dead,) = scripts_world.runtime.queue.dead_letters()
    assert dead.reason == "OutcomeUnknown" and "may have run" in dead.description
    assert f"lifecycle journal release {work_id} 02-run_script" in dead.description
    assert not script_log.exists()

    monkeypatch.setattr(cli, "_runtime", lambda: scripts_world.runtime)
    assert cli.main(["journal", "release", work_id, "02-run_script"]) == 0
    assert "released" in capsys.readouterr().out
    scripts_world.runtime.queue.replay(dead.sequence_number)
    assert [r.outcome for r in scripts_world.drain()] == ["completed"]
    assert len(script_log.read_text().splitlines()) == 1
    # A finished step is never released.
    assert cli.main(["journal", "release", work_id, "02-run_script"]) == 2
    assert "is done" in capsys.readouterr().err
    assert any(e.action == "journal_release" for e in scripts_world.audit(user["id"]))


def test_a_step_marked_done_by_the_operator_is_not_run_on_replay(
    scripts_world: World, script_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = new_user("Doris", "Done")
    work_id = scripts_world.accept(delivery("created", user))["accepted"][0]["work_id"]
    store = scripts_world.runtime.store
    store.claim_step(work_id, "02-run_script", "a-worker-that-died", lease_seconds=-1)
    store.note_step(work_id, "02-run_script", "a-worker-that-died", {"marker": None})
    assert [r.outcome for r in scripts_world.drain()] == ["dead_lettered"]
    monkeypatch.setattr(cli, "_runtime", lambda: scripts_world.runtime)
    assert cli.main(["journal", "release", work_id, "02-run_script", "--done"]) == 0
    (dead,) = scripts_world.runtime.queue.dead_letters()
    scripts_world.runtime.queue.replay(dead.sequence_number)
    assert [r.outcome for r in scripts_world.drain()] == ["completed"]
    assert not script_log.exists()


# The webhook contract, against the stand-in ---------------------------------------------------------------------
def _context() -> StepContext:
    step = Step(key="04-run_script", action="run_script", system="script", target="default", params={"script": "hook"})
    event = LifecycleEvent(
        kind="updated", user_id=3, occurred_at=datetime(2026, 1, 1, tzinfo=UTC), source="webhook", user={"id": 3}
    )
    item = WorkItem(work_id="w-3", lifecycle="leaver", event=event, steps=[step])
    return StepContext(item=item, step=step, dry_run=False, ad_account=lambda: None)


def _hook(endpoint: ScriptEndpoint, path: str, **options: Any) -> ScriptTarget:
    entry = ScriptEntry(
        kind="webhook",
        target=endpoint.url(path),
        secret=options.pop("secret", SECRET),
        ca_file=endpoint.ca_file,
        **options,
    )
    return ScriptTarget("default", {"hook": entry}, scripts_dir=Path("scripts"))


def test_a_webhook_call_is_signed_over_its_raw_body_and_its_output_redacted(endpoint: ScriptEndpoint) -> None:
    target = _hook(endpoint, "/ok")
    try:
        result = target.run(_context())
    finally:
        target.close()
    assert result.outcome == "changed" and result.data["output"]["token"] == "***"
    (call,) = endpoint.calls
    assert call.body["sent_at"].startswith("20") and call.headers["X-Lifecycle-Timestamp"].isdigit()


def test_throttling_and_server_errors_are_retried_and_honour_retry_after(endpoint: ScriptEndpoint) -> None:
    with pytest.raises(Retryable, match="429") as throttled:
        _hook(endpoint, "/throttle").run(_context())
    assert throttled.value.retry_after == 7
    with pytest.raises(Retryable, match="503"):
        _hook(endpoint, "/unavailable").run(_context())
    with pytest.raises(Retryable, match="mailbox busy") as busy:
        _hook(endpoint, "/retry").run(_context())
    assert busy.value.retry_after == 42


def test_a_client_error_or_a_bad_signature_is_permanent(endpoint: ScriptEndpoint) -> None:
    with pytest.raises(Permanent, match=r"400: .*mailbox not found"):
        _hook(endpoint, "/bad").run(_context())
    with pytest.raises(Permanent, match="401"):
        _hook(endpoint, "/ok", secret="the-wrong-secret-entirely").run(_context())
    assert endpoint.state.rejected == 1 and len(endpoint.calls) == 1


def test_a_timed_out_webhook_may_have_run_so_it_is_not_retried_unless_the_endpoint_dedupes(
    endpoint: ScriptEndpoint,
) -> None:
    endpoint.state.slow_seconds = 1.5
    with pytest.raises(OutcomeUnknown, match="may have run"):
        _hook(endpoint, "/slow", timeout_seconds=0.3).run(_context())
    with pytest.raises(Retryable, match="same key"):
        _hook(endpoint, "/slow", timeout_seconds=0.3, retry_on_timeout=True).run(_context())


def test_an_unreachable_endpoint_is_retried(endpoint: ScriptEndpoint) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    entry = ScriptEntry(kind="webhook", target=f"https://127.0.0.1:{port}/x", secret=SECRET, timeout_seconds=2)
    with pytest.raises(Retryable, match="cannot reach"):
        ScriptTarget("default", {"hook": entry}, scripts_dir=Path("scripts")).run(_context())


def test_a_job_style_endpoint_is_polled_until_the_job_completes(endpoint: ScriptEndpoint) -> None:
    target = _hook(endpoint, "/job", poll=True, poll_interval_seconds=0.05, poll_timeout_seconds=10)
    result = target.run(_context())
    assert result.data["output"] == {"job": "job-1", "done": True}
    assert list(endpoint.state.polls.values()) == [2]


def test_the_stand_in_refuses_what_a_receiver_must_refuse() -> None:
    assert not verify(SECRET, b"{}", "sha256=" + "0" * 64)
