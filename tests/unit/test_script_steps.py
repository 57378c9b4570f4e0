"""Python script steps: allow-list only, results classified, output redacted, time-outs never rerun blindly."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lifecycle.errors import OutcomeUnknown, Permanent, PolicyRefused, Retryable
from lifecycle.settings import Settings
from lifecycle.targets import StepContext
from lifecycle.targets.ad import Account
from lifecycle.targets.script_actions import RunScriptParams, ScriptEntry
from lifecycle.targets.scripts import ScriptTarget, redact, sign, verify
from lifecycle.work import LifecycleEvent, Step, WorkItem

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import time

CALLS = []

def record(event, args):
    CALLS.append((event["work_id"], args))
    return {"status": "ok", "output": {"seen": args.get("value"), "password": "pw-in-output", "note": "key k3y-s3cr3t"}}

def busy(event, args):
    return {"status": "retry", "retry_after": 12, "output": "the mail system is busy"}

def refuse(event, args):
    return {"status": "fail", "output": "no such mailbox"}

def network(event, args):
    raise ConnectionError("the API is unreachable")

def bug(event, args):
    raise KeyError("surname")

def hangs(event, args):
    time.sleep(1)

def nothing(event, args):
    return None

def odd(event, args):
    return {"status": "maybe"}
"""


@pytest.fixture
def scripts_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "unit_scripts.py").write_text(SCRIPT)
    return folder


def target(scripts_dir: Path, **timeouts: float) -> ScriptTarget:
    names = ("record", "busy", "refuse", "network", "bug", "hangs", "nothing", "odd")
    allow = {
        name: ScriptEntry(kind="python", target=f"unit_scripts:{name}", timeout_seconds=timeouts.get(name, 5.0))
        for name in names
    }
    allow["welcome"] = ScriptEntry(kind="python", target="examples:welcome_note")
    return ScriptTarget("default", allow, scripts_dir=scripts_dir, secrets=["k3y-s3cr3t"])


def context(
    name: str, args: dict[str, Any] | None = None, *, dry_run: bool = False, who: Account | None = None
) -> StepContext:
    step = Step(
        key="02-run_script",
        action="run_script",
        system="script",
        target="default",
        params={"script": name, "args": args or {}},
    )
    event = LifecycleEvent(
        kind="created",
        user_id=9,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        source="webhook",
        user={"id": 9, "firstname": "Ada", "site_name": "Main"},
    )
    item = WorkItem(work_id="w-9", lifecycle="joiner", event=event, steps=[step])
    return StepContext(item=item, step=step, dry_run=dry_run, ad_account=lambda: who)


def test_a_script_receives_the_event_and_its_args_and_its_output_is_audited_redacted(scripts_dir: Path) -> None:
    result = target(scripts_dir).run(context("record", {"value": "x1"}))
    assert result.outcome == "changed"
    assert result.data["output"] == {"seen": "x1", "password": "***", "note": "key ***"}
    assert "k3y-s3cr3t" not in result.message and "pw-in-output" not in result.message
    import sys

    calls = sys.modules["lifecycle_scripts.unit_scripts"].CALLS
    assert calls[-1] == ("w-9", {"value": "x1"})


def test_a_script_that_is_not_on_the_allow_list_is_refused_and_never_loaded(scripts_dir: Path) -> None:
    (scripts_dir / "os.py").write_text("raise SystemExit('must never be imported')")
    with pytest.raises(PolicyRefused, match="not on the allow-list"):
        target(scripts_dir).run(context("os"))


def test_a_step_can_only_name_an_allow_list_entry_not_a_command_or_a_path() -> None:
    for name in ("rm -rf /", "../scripts/x", "os:system", "https://evil.example/x", ""):
        with pytest.raises(ValueError):
            RunScriptParams(script=name)


@pytest.mark.parametrize(
    ("name", "error", "text"),
    [
        ("busy", Retryable, "asks to be retried"),
        ("network", Retryable, "ConnectionError"),
        ("refuse", Permanent, "no such mailbox"),
        ("bug", Permanent, "KeyError"),
        ("odd", Permanent, "expected ok, retry or fail"),
    ],
)
def test_a_scripts_failure_is_classified_by_its_result(
    scripts_dir: Path, name: str, error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text) as raised:
        target(scripts_dir).run(context(name))
    if name == "busy":
        assert isinstance(raised.value, Retryable) and raised.value.retry_after == 12
    assert not isinstance(raised.value, PolicyRefused)


def test_a_script_that_does_not_return_in_time_has_an_unknown_outcome_and_is_not_retried(scripts_dir: Path) -> None:
    with pytest.raises(OutcomeUnknown, match="may still be running"):
        target(scripts_dir, hangs=0.2).run(context("hangs"))


def test_a_script_returning_nothing_succeeded(scripts_dir: Path) -> None:
    assert target(scripts_dir).run(context("nothing")).outcome == "changed"


def test_a_dry_run_names_the_script_without_running_it(scripts_dir: Path) -> None:
    result = target(scripts_dir).run(context("refuse", dry_run=True))
    assert result.outcome == "dry_run" and "would run python script refuse" in result.message


def test_scripts_are_not_run_for_a_protected_account(scripts_dir: Path) -> None:
    admin = Account("CN=Admin,CN=Users,DC=corp", {"admincount": ["1"]})
    with pytest.raises(PolicyRefused, match="protected"):
        target(scripts_dir).run(context("record", who=admin))


def test_the_example_script_in_the_repository_runs() -> None:
    allow = {"welcome": ScriptEntry(kind="python", target="examples:welcome_note")}
    result = ScriptTarget("default", allow, scripts_dir=ROOT / "scripts").run(context("welcome"))
    assert result.data["output"]["text"] == "Welcome, Ada! See you at Main."


def test_webhook_entries_must_be_https_except_on_loopback_and_must_be_signed() -> None:
    ScriptEntry(kind="webhook", target="https://automation.example/webhooks?token=x", secret="s" * 32)
    ScriptEntry(kind="webhook", target="http://127.0.0.1:8080/hook", secret_env="HOOK_SECRET")
    with pytest.raises(ValueError, match="https"):
        ScriptEntry(kind="webhook", target="http://automation.example/hook", secret="s" * 32)
    with pytest.raises(ValueError, match="needs secret"):
        ScriptEntry(kind="webhook", target="https://automation.example/hook")
    with pytest.raises(ValueError, match="module:function"):
        ScriptEntry(kind="python", target="os.system('id')")


def test_a_signature_verifies_only_for_the_exact_body_and_secret() -> None:
    header = sign("shared-secret", b'{"a":1}')
    assert header.startswith("sha256=") and verify("shared-secret", b'{"a":1}', header)
    assert not verify("shared-secret", b'{"a": 1}', header)
    assert not verify("other-secret", b'{"a":1}', header)


def test_script_secrets_are_redacted_from_logs_and_audit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOOK_SECRET", "from-the-environment")
    settings = Settings(
        data_dir=tmp_path,
        scripts={
            "a": {"kind": "webhook", "target": "https://x.example/h", "secret": "inline-secret"},
            "b": {"kind": "webhook", "target": "https://x.example/h", "secret_env": "HOOK_SECRET"},
        },
        file_roots={"h": {"path": "\\\\fs\\home", "password": "share-password"}},
    )
    assert {"inline-secret", "from-the-environment", "share-password"} <= set(settings.secret_values())
    assert redact({"text": "x inline-secret y", "token": "abc"}, settings.secret_values()) == {
        "text": "x *** y",
        "token": "***",
    }
