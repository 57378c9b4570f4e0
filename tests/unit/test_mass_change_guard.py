"""The mass-change guard: what counts as destructive, the shared window, holding, approving and rejecting."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lifecycle.cli import main
from lifecycle.guard import HeldConflict, HeldNotFound, MassChangeGuard, held_id_for, is_destructive
from lifecycle.ingress import PROBLEM_JSON, Ingress, Request, Response
from lifecycle.mapping.planner import PlanContext, plan
from lifecycle.mapping.schema import Mapping
from lifecycle.queue.embedded import EmbeddedQueue
from lifecycle.runtime import Runtime
from lifecycle.settings import Settings, get_settings
from lifecycle.state import PersonRecord
from lifecycle.state.embedded import EmbeddedStore
from lifecycle.work import LifecycleEvent, Step, WorkItem
from tests.conftest import BASE_DN, ROOT, make_settings

ADMIN = "operator-token-value-0123456789abcdef"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def event(user_id: int, kind: str = "updated", **fields: Any) -> LifecycleEvent:
    user = {"id": user_id, "name": "Pat Doe", "firstname": "Pat", "surname": "Doe", "site_name": "Main", **fields}
    return LifecycleEvent(
        kind=kind,  # type: ignore[arg-type]
        user_id=user_id,
        occurred_at=datetime.fromtimestamp(T0, UTC),
        source="webhook",
        delivery_id=f"d-{user_id}-{kind}",
        user=user,
    )


def leaver(mapping: Mapping, user_id: int) -> WorkItem:
    return plan(
        event(user_id, inactive=True), mapping, work_id=f"w-{user_id}", context=PlanContext({"default": BASE_DN})
    )


def person(user_id: int, status: str) -> PersonRecord:
    return PersonRecord(user_id, status, datetime.fromtimestamp(T0 - 60, UTC), "earlier")  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    s = EmbeddedStore(tmp_path / "store.sqlite3", clock=Clock())
    yield s
    s.close()


def guard_for(store: EmbeddedStore, clock: Clock | None = None, **settings: Any) -> MassChangeGuard:
    values: dict[str, Any] = {"guard_max_count": 3, "guard_window_seconds": 600, **settings}
    return MassChangeGuard(Settings(**values), store, clock=clock or Clock())


# What counts ------------------------------------------------------------------------------------------------
def test_leavers_deletions_and_guarded_actions_are_destructive_and_joiners_and_movers_are_not(
    example_mapping: Mapping,
) -> None:
    actions = Settings().guard_actions
    context = PlanContext({"default": BASE_DN})
    joiner = plan(event(1, "created"), example_mapping, work_id="j", context=context)
    mover = plan(event(1), example_mapping, work_id="m", context=context, status="active")
    deleted = plan(event(1, "deleted"), example_mapping, work_id="d", context=context, status="active")
    assert not is_destructive(joiner, None, actions)
    assert not is_destructive(mover, person(1, "active"), actions)
    assert is_destructive(leaver(example_mapping, 1), person(1, "active"), actions)
    assert is_destructive(leaver(example_mapping, 1), None, actions)
    assert is_destructive(deleted, person(1, "active"), actions)
    # A mover whose mapping disables (a custom step list) is destructive through the action list.
    disabling = mover.model_copy(update={"steps": [Step(key="01-disable_user", action="disable_user", target="x")]})
    assert is_destructive(disabling, person(1, "active"), actions)
    assert not is_destructive(disabling, person(1, "active"), ["delete_user"])


def test_a_leaver_repeated_for_someone_already_left_is_not_counted_but_a_deletion_coming_due_is(
    example_mapping: Mapping,
) -> None:
    actions = Settings().guard_actions
    context = PlanContext({"default": BASE_DN})
    assert not is_destructive(leaver(example_mapping, 1), person(1, "left"), actions)
    # The deleted steps only stage the deletion (after_days): nothing is deleted now.
    deleted = plan(event(1, "deleted"), example_mapping, work_id="d", context=context, status="left")
    assert not is_destructive(deleted, person(1, "left"), actions)
    due = WorkItem(
        work_id="d:05-delete_user",
        lifecycle="staged",
        event=event(1, "deleted"),
        steps=[Step(key="05-delete_user", action="delete_user", target="default", params={"after_days": 0})],
        planned_for_status="left",
    )
    assert is_destructive(due, person(1, "left"), actions)


# The window -------------------------------------------------------------------------------------------------
def test_past_the_count_limit_items_are_held_and_after_the_window_they_run_again(
    store: EmbeddedStore, example_mapping: Mapping
) -> None:
    clock = Clock()
    guard = guard_for(store, clock)
    verdicts = [guard.check(item, None, item).action for item in (leaver(example_mapping, i) for i in range(1, 6))]
    assert verdicts == ["run", "run", "run", "held", "held"]
    assert [h.user_id for h in store.held()] == [4, 5]
    # A redelivery of an admitted item is not counted twice; one of a held item stays held, once.
    assert guard.check(leaver(example_mapping, 2), None, leaver(example_mapping, 2)).action == "run"
    assert guard.check(leaver(example_mapping, 4), None, leaver(example_mapping, 4)).action == "held"
    assert len(store.held()) == 2
    clock.now += 601
    assert guard.check(leaver(example_mapping, 6), None, leaver(example_mapping, 6)).action == "run"


def test_joiners_are_counted_in_a_window_of_their_own_and_held_past_their_limit(
    store: EmbeddedStore, example_mapping: Mapping
) -> None:
    guard = guard_for(store, guard_max_count=1, guard_max_joiners=3)
    joiners = [plan(event(i, "created"), example_mapping, work_id=f"j{i}") for i in range(5)]
    verdicts = [guard.check(j, None, j) for j in joiners]
    assert [v.action for v in verdicts] == ["run", "run", "run", "held", "held"]
    assert "joiners (account creations)" in verdicts[3].message
    now = datetime.fromtimestamp(T0, UTC)
    assert store.destructive_count(now=now, window_seconds=600) == 0  # leavers still have their whole window
    assert store.destructive_count(now=now, window_seconds=600, window="joiner") == 3
    assert [h.lifecycle for h in store.held()] == ["joiner", "joiner"]
    assert guard.check(leaver(example_mapping, 9), None, leaver(example_mapping, 9)).action == "run"


def test_with_max_joiners_zero_joiners_are_never_held(store: EmbeddedStore, example_mapping: Mapping) -> None:
    guard = guard_for(store, guard_max_count=1, guard_max_joiners=0)
    joiners = [plan(event(i, "created"), example_mapping, work_id=f"j{i}") for i in range(5)]
    assert {guard.check(j, None, j).action for j in joiners} == {"run"}


def test_the_percentage_limit_is_a_share_of_the_active_people_and_the_smaller_limit_wins(
    store: EmbeddedStore,
) -> None:
    for user_id in range(1, 201):
        store.put_person(person(user_id, "active" if user_id <= 150 else "left"))
    limits = guard_for(store, guard_max_count=25, guard_max_percent=5).limits()
    assert limits is not None and limits.limit == 7 and limits.managed == 150  # floor(5% of 150)
    limits = guard_for(store, guard_max_count=5, guard_max_percent=5).limits()
    assert limits is not None and limits.limit == 5
    assert guard_for(store, guard_max_count=0, guard_max_percent=0).limits() is None
    # A share below one item still lets one through: a single leaver is never held by arithmetic.
    limits = guard_for(store, guard_max_count=0, guard_max_percent=0.1).limits()
    assert limits is not None and limits.limit == 1


def test_workers_in_several_processes_share_one_window_and_never_overshoot_it(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    stores = [EmbeddedStore(path) for _ in range(4)]  # four connections: as four processes would
    now = datetime.fromtimestamp(T0, UTC)
    admitted: list[bool] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        for n in range(25):
            answer = stores[index].admit_destructive(f"w{index}-{n}", now=now, window_seconds=600, limit=10)
            with lock:
                admitted.append(answer.admitted)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admitted.count(True) == 10 and len(admitted) == 100
    for s in stores:
        s.close()


def test_in_dry_run_nothing_is_held_but_the_verdict_says_it_would_be(
    store: EmbeddedStore, example_mapping: Mapping
) -> None:
    guard = guard_for(store, guard_max_count=1, dry_run=True)
    assert guard.check(leaver(example_mapping, 1), None, leaver(example_mapping, 1)).dry_run_note == ""
    verdict = guard.check(leaver(example_mapping, 2), None, leaver(example_mapping, 2))
    assert verdict.action == "run" and verdict.dry_run_note.startswith("would be held")
    assert store.held() == []


# Decisions --------------------------------------------------------------------------------------------------
def test_approving_re_enqueues_the_held_body_once_and_the_guard_then_lets_it_through(
    store: EmbeddedStore, example_mapping: Mapping, tmp_path: Path
) -> None:
    guard = guard_for(store, guard_max_count=1)
    first, second = leaver(example_mapping, 1), leaver(example_mapping, 2)
    guard.check(first, None, first)
    assert guard.check(second, None, second).action == "held"
    held_id = held_id_for(second.work_id)
    queue = EmbeddedQueue(tmp_path / "queue.sqlite3")
    try:
        approved = guard.approve(held_id, queue, by="alice", source="cli", note="planned layoff")
        again = guard.approve(held_id, queue, by="alice", source="cli")  # a second click sends nothing new
        assert approved.status == again.status == "approved" and approved.decided_by == "alice"
        message = queue.receive(timeout=0)
        assert message is not None and queue.receive(timeout=0) is None
        assert WorkItem.from_bytes(message.body) == second
        assert message.properties["approved_by"] == "alice" and message.session_id == "2"
        assert guard.check(second, None, second).action == "run"
        with pytest.raises(HeldConflict):
            guard.reject(held_id, by="bob", source="cli")
    finally:
        queue.close()
    audit = store.audit(user_id=2)
    assert [(e.action, e.outcome, e.requested_by["by"]) for e in audit] == [("mass_change_guard", "approved", "alice")]
    assert "planned layoff" in audit[0].message


def test_a_rejected_item_is_audited_never_runs_and_cannot_be_approved(
    store: EmbeddedStore, example_mapping: Mapping, tmp_path: Path
) -> None:
    guard = guard_for(store, guard_max_count=1)
    first, second = leaver(example_mapping, 1), leaver(example_mapping, 2)
    guard.check(first, None, first)
    guard.check(second, None, second)
    held_id = held_id_for(second.work_id)
    assert guard.reject(held_id, by="bob", source="manage-api", note="bad import").status == "rejected"
    # Halo re-sends the same delivery later: it is not run either.
    assert guard.check(second, None, second).action == "rejected"
    queue = EmbeddedQueue(tmp_path / "queue.sqlite3")
    with pytest.raises(HeldConflict):
        guard.approve(held_id, queue, by="x", source="cli")
    assert queue.receive(timeout=0) is None
    queue.close()
    with pytest.raises(HeldNotFound):
        guard.reject("nope", by="bob", source="cli")
    assert [e.outcome for e in store.audit(user_id=2)] == ["rejected"]


# The operator routes ----------------------------------------------------------------------------------------
@pytest.fixture
def held_runtime(tmp_path: Path, example_mapping: Mapping) -> Iterator[tuple[Runtime, list[str]]]:
    runtime = Runtime(make_settings(tmp_path, admin_token=ADMIN, guard_max_count=1), mapping=example_mapping)
    guard = MassChangeGuard(runtime.settings, runtime.store)
    ids = []
    for user_id in (1, 2, 3):
        item = leaver(example_mapping, user_id)
        if guard.check(item, None, item).action == "held":
            ids.append(held_id_for(item.work_id))
    yield runtime, ids
    runtime.close()


def manage(
    runtime: Runtime, method: str, held_id: str | None = None, decision: str | None = None, **kw: Any
) -> Response:
    headers = kw.pop("headers", {"Authorization": f"Bearer {ADMIN}"})
    body = kw.pop("body", b"")
    return Ingress(runtime).manage_held(Request(method, body, headers, kw), held_id, decision)


def test_the_operator_routes_list_approve_and_reject_held_work(held_runtime: tuple[Runtime, list[str]]) -> None:
    runtime, (first, second) = held_runtime
    listing = manage(runtime, "GET")
    assert listing.status == 200
    assert [h["held_id"] for h in listing.json()["held"]] == [first, second]
    assert listing.json()["guard"]["limit"] == 1 and listing.json()["guard"]["held"] == 2
    approved = manage(runtime, "POST", first, "approve", body=b'{"by": "carol", "note": "expected"}')
    assert approved.status == 200 and approved.json()["held"]["status"] == "approved"
    assert approved.json()["held"]["decided_by"] == "carol"
    assert manage(runtime, "POST", second, "reject").json()["held"]["status"] == "rejected"
    assert manage(runtime, "GET").json()["held"] == []
    assert len(manage(runtime, "GET", status="all").json()["held"]) == 2
    conflict = manage(runtime, "POST", second, "approve")
    assert conflict.status == 409 and conflict.content_type == PROBLEM_JSON


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-token"}, 401),
        ({"Authorization": f"Basic {ADMIN}"}, 401),
        ({"Authorization": "Basic " + base64.b64encode(b"halo:basic-secret-value").decode()}, 401),
    ],
)
def test_the_operator_routes_refuse_missing_or_wrong_credentials(
    held_runtime: tuple[Runtime, list[str]], headers: dict[str, str], status: int
) -> None:
    runtime, (first, _) = held_runtime
    for response in (
        manage(runtime, "GET", headers=headers),
        manage(runtime, "POST", first, "approve", headers=headers),
    ):
        assert response.status == status and response.content_type == PROBLEM_JSON
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert runtime.store.get_held(first).status == "held"  # type: ignore[union-attr]


def test_the_operator_routes_are_off_without_a_token_and_answer_bad_requests_with_problems(
    tmp_path: Path, held_runtime: tuple[Runtime, list[str]]
) -> None:
    runtime, (first, _) = held_runtime
    off = Runtime(make_settings(tmp_path / "off"))
    assert manage(off, "GET").status == 404 and "LIFECYCLE_ADMIN_TOKEN" in manage(off, "GET").json()["detail"]
    off.close()
    cases = [
        (manage(runtime, "POST"), 405),
        (manage(runtime, "GET", first, "approve"), 405),
        (manage(runtime, "POST", first, "explode"), 404),
        (manage(runtime, "POST", "unknown-id", "approve"), 404),
        (manage(runtime, "POST", first, "approve", body=b"{not json"), 400),
        (manage(runtime, "POST", first, "approve", body=b'{"by": 7}'), 422),
        (manage(runtime, "GET", status="everything"), 422),
    ]
    for response, status in cases:
        assert (response.status, response.content_type) == (status, PROBLEM_JSON), response.body
        assert "Traceback" not in response.body.decode()
    assert runtime.store.get_held(first).status == "held"  # type: ignore[union-attr]


# The command ------------------------------------------------------------------------------------------------
@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, example_mapping: Mapping) -> Iterator[list[str]]:
    monkeypatch.setenv("LIFECYCLE_MAPPING_FILE", str(ROOT / "mapping.example.toml"))
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LIFECYCLE_AD_BASE_DN", BASE_DN)
    monkeypatch.setenv("LIFECYCLE_GUARD_MAX_COUNT", "1")
    get_settings.cache_clear()
    runtime = Runtime()
    guard = MassChangeGuard(runtime.settings, runtime.store)
    ids = []
    for user_id in (1, 2, 3, 4):
        item = leaver(example_mapping, user_id)
        if guard.check(item, None, item).action == "held":
            ids.append(held_id_for(item.work_id))
    runtime.close()
    yield ids
    get_settings.cache_clear()


def test_held_list_approve_and_reject_on_the_command_line(env: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    first, second, third = env
    assert main(["held", "list"]) == 0
    out = capsys.readouterr().out
    assert "1 destructive item(s)" in out and "3 held" in out
    assert all(held_id in out for held_id in env)
    assert main(["held", "reject", first, "--by", "dana", "--note", "wrong import"]) == 0
    assert main(["held", "approve", "--all", "--by", "dana"]) == 0
    assert "approved and released 2 held work item(s)" in capsys.readouterr().out
    assert main(["held", "list", "--status", "all", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["held"]
    assert {(h["held_id"], h["status"]) for h in listed} == {
        (first, "rejected"),
        (second, "approved"),
        (third, "approved"),
    }
    assert main(["held", "show", second, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["work_item"]["lifecycle"] == "leaver"
    runtime = Runtime()
    released = []
    while (message := runtime.queue.receive(timeout=0)) is not None:
        released.append(WorkItem.from_bytes(message.body).event.user_id)
        runtime.queue.complete(message)
    runtime.close()
    assert sorted(released) == [3, 4]


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["held", "approve"], "name what to approve"),
        (["held", "approve", "abc", "--all"], "not both"),
        (["held", "reject", "abc"], "no held work item"),
        (["held", "show", "abc"], "no held work item"),
    ],
)
def test_held_errors_are_one_line(
    env: list[str], capsys: pytest.CaptureFixture[str], argv: list[str], mentions: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lifecycle: error: ") and mentions in err and err.count("\n") == 1
