"""Home folders on local paths: moves survive a crash at any point, deletes never follow a link out."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lifecycle.errors import Permanent, PolicyRefused
from lifecycle.mapping.planner import plan
from lifecycle.mapping.schema import Lifecycles, Mapping
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.ad import Account
from lifecycle.targets.files_actions import TEMP_PREFIX, FileRoot
from lifecycle.targets.files_local import OWNER_XATTR, LocalTree
from lifecycle.targets.homefolders import HomeFolderTarget
from lifecycle.work import LifecycleEvent, Step, WorkItem

MUTATIONS = ("mkdir", "write_file", "rename", "remove", "rmdir", "set_mtime", "symlink")


class Crash(BaseException):
    """Stands for the worker being killed (a BaseException: nothing in the code under test catches it)."""


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    places = {name: tmp_path / name for name in ("staff", "sales", "archive")}
    for place in places.values():
        place.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "canary.txt").write_text("must survive")
    return places


def target_for(roots: dict[str, Path], **options: Any) -> HomeFolderTarget:
    configured = {name: FileRoot(path=str(path), **options.get(name, {})) for name, path in roots.items()}
    return HomeFolderTarget("default", configured)


SID = "S-1-5-21-1111-2222-3333-1105"


def own(folder: Path, sid: str = SID) -> Path:
    """Mark ``folder`` as the person's, as the service does when it grants access on a local root."""
    os.setxattr(folder, OWNER_XATTR, sid.encode())
    return folder


def account(home: Path | str | None, sam: str = "jdoe", **attributes: str) -> Account:
    values: dict[str, list[Any]] = {"samaccountname": [sam], "objectsid": [SID]}
    if home is not None:
        values["homedirectory"] = [str(home)]
    values.update({k.lower(): [v] for k, v in attributes.items()})
    return Account(f"CN={sam},OU=Staff,DC=corp,DC=example,DC=test", values)


def run(
    target: HomeFolderTarget, action: str, params: dict[str, Any], who: Account | None, *, dry_run: bool = False
) -> StepResult:
    step = Step(key=f"01-{action}", action=action, system="files", target="default", params=params)
    event = LifecycleEvent(
        kind="updated", user_id=5, occurred_at=datetime(2026, 1, 1, tzinfo=UTC), source="webhook", user={"id": 5}
    )
    item = WorkItem(work_id="w-1", lifecycle="mover", event=event, steps=[step])
    return target.run(StepContext(item=item, step=step, dry_run=dry_run, ad_account=lambda: who))


def populate(folder: Path) -> dict[str, str]:
    """A nested tree with an empty file, a multi-chunk file and a non-ASCII name; returns its manifest."""
    files = {
        "notes.txt": b"top level",
        "empty.dat": b"",
        "Zoë's plan.txt": "ünïcode".encode(),
        "docs/a.txt": b"a" * 10,
        "docs/deep/er/b.bin": os.urandom(2 * 1024 * 1024 + 17),
        "docs/deep/c.txt": b"c",
        "pictures/p.jpg": os.urandom(4096),
    }
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (folder / "empty-folder").mkdir()
    own(folder)
    return manifest(folder)


def manifest(folder: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[relative] = "link->" + os.readlink(path)
        elif path.is_dir():
            found[relative + "/"] = "dir"
        else:
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def crash_at(monkeypatch: pytest.MonkeyPatch, when: int) -> Callable[[], int]:
    """Make the ``when``-th change to any file system raise Crash (a write stops half-way); returns a counter."""
    counter = itertools.count(1)
    seen = [0]
    for name in MUTATIONS:
        original = getattr(LocalTree, name)

        def wrapper(self: LocalTree, *args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            seen[0] = next(counter)
            if seen[0] != when:
                return _original(self, *args, **kwargs)
            if _name == "write_file":
                parts, chunks = args
                first = next(iter(chunks), b"")

                def half() -> Iterator[bytes]:
                    yield first[: len(first) // 2]

                _original(self, parts, half())  # a temporary copy is left half-written
            raise Crash

        monkeypatch.setattr(LocalTree, name, wrapper)
    return lambda: seen[0]


def test_a_move_between_roots_moves_every_file_once_and_removes_the_old_tree(roots: dict[str, Path]) -> None:
    expected = populate(roots["staff"] / "jdoe")
    target = target_for(roots)
    result = run(
        target,
        "move_home_folder",
        {"destination": str(roots["sales"] / "{samaccountname}")},
        account(roots["staff"] / "jdoe"),
    )
    assert result.outcome == "changed"
    assert manifest(roots["sales"] / "jdoe") == expected
    assert not (roots["staff"] / "jdoe").exists()
    assert result.data["files"] == 7 and result.data["home_directory"] == str(roots["sales"] / "jdoe")
    # Running it again changes nothing.
    again = run(
        target, "move_home_folder", {"destination": str(roots["sales"] / "jdoe")}, account(roots["sales"] / "jdoe")
    )
    assert again.outcome == "unchanged"


def test_a_move_killed_at_any_point_completes_on_rerun_with_every_file_once(
    roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    params = {"destination": str(roots["sales"] / "jdoe"), "source": str(roots["staff"] / "jdoe")}
    # Count the file-system changes of an undisturbed move, then crash at each one in turn.
    expected = populate(roots["staff"] / "jdoe")
    with monkeypatch.context() as patch:
        count = crash_at(patch, when=0)
        run(target_for(roots), "move_home_folder", params, account(None))
        total = count()
    assert total > 20
    for when in range(1, total + 1):
        for place in ("staff", "sales"):
            for path in sorted(roots[place].rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        expected = populate(roots["staff"] / "jdoe")
        with monkeypatch.context() as patch, pytest.raises(Crash):
            crash_at(patch, when)
            run(target_for(roots), "move_home_folder", params, account(None))
        result = run(target_for(roots), "move_home_folder", params, account(None))
        assert result.outcome == "changed", f"crash at change {when}"
        assert manifest(roots["sales"] / "jdoe") == expected, f"crash at change {when}"
        assert not (roots["staff"] / "jdoe").exists(), f"crash at change {when}"
        assert not [p for p in roots["sales"].rglob(TEMP_PREFIX + "*")], f"crash at change {when}"


def test_a_file_in_both_places_with_different_content_stops_the_move_and_overwrites_nothing(
    roots: dict[str, Path],
) -> None:
    (roots["staff"] / "jdoe").mkdir()
    (roots["staff"] / "jdoe" / "report.txt").write_text("old place")
    (roots["sales"] / "jdoe").mkdir()
    (roots["sales"] / "jdoe" / "report.txt").write_text("new place, edited since")
    own(roots["staff"] / "jdoe")
    own(roots["sales"] / "jdoe")
    with pytest.raises(Permanent, match="conflict"):
        run(
            target_for(roots),
            "move_home_folder",
            {"destination": str(roots["sales"] / "jdoe")},
            account(roots["staff"] / "jdoe"),
        )
    assert (roots["staff"] / "jdoe" / "report.txt").read_text() == "old place"
    assert (roots["sales"] / "jdoe" / "report.txt").read_text() == "new place, edited since"


def test_a_move_within_one_root_is_a_single_rename(roots: dict[str, Path]) -> None:
    expected = populate(roots["staff"] / "jdoe")
    result = run(
        target_for(roots),
        "move_home_folder",
        {"destination": str(roots["staff"] / "team" / "jdoe")},
        account(roots["staff"] / "jdoe"),
    )
    assert result.message == "renamed in place"
    assert manifest(roots["staff"] / "team" / "jdoe") == expected


def test_links_inside_a_moved_folder_move_as_links_and_are_never_followed(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    folder = roots["staff"] / "jdoe"
    folder.mkdir()
    own(folder)
    os.symlink(tmp_path / "outside", folder / "escape")
    run(target_for(roots), "move_home_folder", {"destination": str(roots["sales"] / "jdoe")}, account(folder))
    assert os.readlink(roots["sales"] / "jdoe" / "escape") == str(tmp_path / "outside")
    assert (tmp_path / "outside" / "canary.txt").read_text() == "must survive"
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["canary.txt"]


def test_a_dry_run_move_reports_what_would_move_and_changes_nothing(roots: dict[str, Path]) -> None:
    expected = populate(roots["staff"] / "jdoe")
    result = run(
        target_for(roots),
        "move_home_folder",
        {"destination": str(roots["sales"] / "jdoe")},
        account(roots["staff"] / "jdoe"),
        dry_run=True,
    )
    assert result.outcome == "dry_run" and result.data["files"] == 7
    assert manifest(roots["staff"] / "jdoe") == expected and not (roots["sales"] / "jdoe").exists()


def test_a_joiner_folder_is_created_private_and_a_second_run_changes_nothing(roots: dict[str, Path]) -> None:
    target = target_for(roots)
    params = {"path": str(roots["staff"] / "{samaccountname}")}
    first = run(target, "create_home_folder", params, account(None))
    assert first.outcome == "changed" and (roots["staff"] / "jdoe").is_dir()
    assert (roots["staff"] / "jdoe").stat().st_mode & 0o777 == 0o700
    assert run(target, "create_home_folder", params, account(None)).outcome == "unchanged"


def test_archiving_moves_the_folder_and_a_rerun_finds_it_archived(roots: dict[str, Path]) -> None:
    expected = populate(roots["staff"] / "jdoe")
    target = target_for(roots)
    params = {"destination": str(roots["archive"] / "{samaccountname}")}
    assert run(target, "archive_home_folder", params, account(roots["staff"] / "jdoe")).outcome == "changed"
    assert manifest(roots["archive"] / "jdoe") == expected
    assert run(target, "archive_home_folder", params, account(roots["staff"] / "jdoe")).outcome == "unchanged"


def test_a_delete_removes_the_folder_and_the_links_in_it_but_never_what_they_point_to(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    folder = roots["staff"] / "jdoe"
    populate(folder)
    (roots["staff"] / "colleague").mkdir()
    (roots["staff"] / "colleague" / "theirs.txt").write_text("not jdoe's")
    os.symlink(tmp_path / "outside", folder / "docs" / "escape")  # out of every root
    os.symlink("../../colleague", folder / "docs" / "sideways")  # to another user's folder
    os.symlink(tmp_path / "outside" / "canary.txt", folder / "file-link")
    result = run(target_for(roots), "delete_home_folder", {}, account(folder))
    assert result.outcome == "changed" and result.data["links"] == 3
    assert not folder.exists()
    assert (tmp_path / "outside" / "canary.txt").read_text() == "must survive"
    assert (roots["staff"] / "colleague" / "theirs.txt").read_text() == "not jdoe's"


def test_a_home_folder_that_is_itself_a_link_is_refused_not_followed(roots: dict[str, Path], tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside", roots["staff"] / "jdoe")
    with pytest.raises(PolicyRefused, match="link"):
        run(target_for(roots), "delete_home_folder", {}, account(roots["staff"] / "jdoe"))
    assert (tmp_path / "outside" / "canary.txt").exists()


def test_a_link_among_the_ancestors_is_refused_not_followed(roots: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "outside" / "jdoe").mkdir()
    (tmp_path / "outside" / "jdoe" / "keep.txt").write_text("keep")
    os.symlink(tmp_path / "outside", roots["staff"] / "team")
    with pytest.raises(PolicyRefused, match="link"):
        run(target_for(roots), "delete_home_folder", {}, account(roots["staff"] / "team" / "jdoe"))
    assert (tmp_path / "outside" / "jdoe" / "keep.txt").exists()


@pytest.mark.parametrize(
    "home",
    ["/etc", "/etc/ssh", "{staff}/../outside", "{staff}", "relative/path", "\\\\evil.example\\c$\\Windows"],
)
def test_a_delete_outside_the_configured_roots_is_refused(roots: dict[str, Path], tmp_path: Path, home: str) -> None:
    path = home.replace("{staff}", str(roots["staff"]))
    with pytest.raises(PolicyRefused, match="home folder refused"):
        run(target_for(roots), "delete_home_folder", {}, account(path))
    assert (tmp_path / "outside" / "canary.txt").exists() and roots["staff"].exists()


def test_a_surname_of_dot_dot_slash_etc_in_a_path_template_is_refused_and_harmless(
    roots: dict[str, Path], tmp_path: Path, example_mapping: Mapping
) -> None:
    lifecycles = example_mapping.lifecycles.model_dump()
    lifecycles["leaver"] = [{"action": "delete_home_folder", "path": str(roots["staff"]) + "/{surname}"}]
    mapping = example_mapping.model_copy(update={"lifecycles": Lifecycles.model_validate(lifecycles)})
    event = LifecycleEvent(
        kind="updated",
        user_id=5,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        source="webhook",
        user={"id": 5, "surname": "../../outside", "inactive": True},
    )
    (step,) = plan(event, mapping, work_id="w", status="active").steps
    assert step.params["path"].endswith("/../../outside")
    with pytest.raises(PolicyRefused, match=r"'\.\.'"):
        run(target_for(roots), "delete_home_folder", step.params, account(None))
    assert (tmp_path / "outside" / "canary.txt").exists()


def test_a_root_that_does_not_allow_deletes_refuses_them(roots: dict[str, Path]) -> None:
    (roots["staff"] / "jdoe").mkdir()
    target = target_for(roots, staff={"allow_delete": False})
    with pytest.raises(PolicyRefused, match="not allowed"):
        run(target, "delete_home_folder", {}, account(roots["staff"] / "jdoe"))
    assert (roots["staff"] / "jdoe").exists()


def test_a_protected_accounts_home_folder_is_never_touched(roots: dict[str, Path]) -> None:
    (roots["staff"] / "admin").mkdir()
    with pytest.raises(PolicyRefused, match="adminCount"):
        run(target_for(roots), "delete_home_folder", {}, account(roots["staff"] / "admin", adminCount="1"))
    assert (roots["staff"] / "admin").exists()


def test_a_dry_run_delete_deletes_nothing(roots: dict[str, Path]) -> None:
    expected = populate(roots["staff"] / "jdoe")
    result = run(target_for(roots), "delete_home_folder", {}, account(roots["staff"] / "jdoe"), dry_run=True)
    assert result.outcome == "dry_run" and result.data["files"] == 7
    assert manifest(roots["staff"] / "jdoe") == expected


def test_after_days_on_a_home_folder_step_reaches_its_params_for_staging(example_mapping: Mapping) -> None:
    lifecycles = example_mapping.lifecycles.model_dump()
    lifecycles["leaver"] = [{"action": "delete_home_folder", "after_days": 30}]
    mapping = example_mapping.model_copy(update={"lifecycles": Lifecycles.model_validate(lifecycles)})
    event = LifecycleEvent(
        kind="updated",
        user_id=5,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        source="webhook",
        user={"id": 5, "inactive": True},
    )
    (step,) = plan(event, mapping, work_id="w", status="active").steps
    assert step.params == {"after_days": 30}


def test_a_folder_with_someone_elses_files_is_never_granted_moved_or_deleted(roots: dict[str, Path]) -> None:
    # Issue 14: a joiner reusing a predecessor's name was granted the predecessor's folder, and move and
    # delete trusted homeDirectory. Fails on the old code (every step below succeeded).
    folder = roots["staff"] / "jdoe"
    predecessor = populate(folder)  # marked as the predecessor's: SID ...-1105
    successor = account(folder, objectSid="S-1-5-21-1111-2222-3333-2207")
    target = target_for(roots)
    attempts = {
        "create_home_folder": {"path": str(roots["staff"] / "{samaccountname}")},
        "move_home_folder": {"destination": str(roots["sales"] / "jdoe")},
        "archive_home_folder": {"destination": str(roots["archive"] / "jdoe")},
        "delete_home_folder": {},
    }
    for action, params in attempts.items():
        with pytest.raises(PolicyRefused, match="neither its owner nor an explicit ACE"):
            run(target, action, params, successor)
    with pytest.raises(PolicyRefused, match="no AD account"):
        run(target, "delete_home_folder", {"path": str(folder)}, None)
    assert manifest(folder) == predecessor
    assert not (roots["sales"] / "jdoe").exists() and not (roots["archive"] / "jdoe").exists()
    # An empty folder holds nothing of anyone's: it is granted.
    (roots["staff"] / "fresh").mkdir()
    fresh = account(roots["staff"] / "fresh", sam="fresh", objectSid="S-1-5-21-1111-2222-3333-2207")
    assert run(target, "create_home_folder", {}, fresh).outcome == "changed"


def test_a_halo_value_holding_braces_never_becomes_a_placeholder_of_the_second_render(
    roots: dict[str, Path], example_mapping: Mapping
) -> None:
    # Issue 14: a surname "{mail}" was rendered a second time from the AD account (second-order injection).
    step = {"action": "create_home_folder", "path": str(roots["staff"]) + "/{surname}-{{samaccountname}}"}
    lifecycles = {**example_mapping.lifecycles.model_dump(), "joiner": ["create_user", step]}
    mapping = example_mapping.model_copy(update={"lifecycles": Lifecycles.model_validate(lifecycles)})
    event = LifecycleEvent(
        kind="created",
        user_id=5,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        source="webhook",
        user={"id": 5, "firstname": "Eve", "surname": "{mail}", "name": "Eve {mail}"},
    )
    (planned,) = [s for s in plan(event, mapping, work_id="w").steps if s.action == "create_home_folder"]
    who = account(None, mail="ceo-private@example.test")
    target = target_for(roots)
    result = target.run(
        StepContext(
            item=WorkItem(work_id="w", lifecycle="joiner", event=event, steps=[planned]),
            step=planned,
            dry_run=False,
            ad_account=lambda: who,
        )
    )
    assert result.data["home_directory"] == f"{roots['staff']}/{{mail}}-jdoe"
    assert (roots["staff"] / "{mail}-jdoe").is_dir()
    assert not any("ceo-private" in p.name for p in roots["staff"].iterdir())
