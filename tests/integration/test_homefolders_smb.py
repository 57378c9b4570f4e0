"""Home folders on a real Samba file server (smbd on loopback) for accounts in a real Samba AD DC."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from ldap3.protocol.formatters.formatters import format_sid  # type: ignore[import-untyped]

from lifecycle.errors import Permanent, PolicyRefused
from lifecycle.local.samba import DCInfo
from lifecycle.local.samba_files import FileServerInfo, SambaFileServer, smbd_available
from lifecycle.mapping.schema import Lifecycles, Mapping
from lifecycle.runtime import Runtime
from lifecycle.targets import StepContext
from lifecycle.targets.ad import Account
from lifecycle.targets.files_actions import TEMP_PREFIX, FileRoot
from lifecycle.targets.files_smb import SmbTree
from lifecycle.targets.homefolders import HomeFolderTarget
from lifecycle.work import LifecycleEvent, Step, WorkItem
from lifecycle.worker import Worker
from tests.integration.conftest import World, admin_connection, dc_settings, delivery, new_user
from tests.integration.smb_acls import (
    ALLOWED,
    CONTAINER_INHERIT,
    FULL_CONTROL,
    OBJECT_INHERIT,
    SMBCACLS_PORT,
    Ace,
    read_acl,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SHARES = ("staff", "sales", "archive")


def build_mapping(example: Mapping, host: str) -> Mapping:
    """The example mapping with home-folder steps: staff share for joiners, sales share for Sales movers."""

    def place(share: str) -> str:
        # {{samaccountname}} reaches the worker as {samaccountname}, filled from the AD account at run time.
        return f"\\\\{host}\\{share}\\{{{{samaccountname}}}}"

    sales = {"department": "Sales"}
    lifecycles = example.lifecycles.model_dump()
    lifecycles["joiner"] = [
        {"action": "create_user"},
        {"action": "create_home_folder", "path": place("staff")},
        {"action": "set_home_directory", "path": place("staff"), "drive": "H:"},
    ]
    lifecycles["mover"] = [
        {"action": "modify_properties"},
        {"action": "move_home_folder", "when": sales, "destination": place("sales")},
        {"action": "set_home_directory", "when": sales, "path": place("sales"), "drive": "H:"},
    ]
    lifecycles["leaver"] = [
        {"action": "disable_user"},
        {"action": "archive_home_folder", "destination": place("archive"), "after_days": 30},
    ]
    return example.model_copy(update={"lifecycles": Lifecycles.model_validate(lifecycles)})


@pytest.fixture(scope="module")
def file_server(tmp_path_factory: pytest.TempPathFactory, directory: DCInfo) -> Iterator[FileServerInfo]:
    if not smbd_available():
        if os.environ.get("CI"):
            pytest.fail("smbd is not installed or not runnable as root: CI must not skip the home-folder tests")
        pytest.skip("smbd is not installed (make test installs samba) or we are not root")
    base = tmp_path_factory.mktemp("smb")
    # Port 445 of a loopback address of its own: smbcacls, which reads the ACLs back, connects to no other.
    server = SambaFileServer(
        base / "server",
        {share: base / share for share in SHARES},
        exclude_hosts=("127.0.0.1", directory.host),
        port=SMBCACLS_PORT,
    )
    info = server.start()
    yield info
    server.stop()


def file_roots(info: FileServerInfo) -> dict[str, dict[str, object]]:
    return {share: info.root(share) for share in SHARES}


@pytest.fixture
def settings_values(directory: DCInfo, file_server: FileServerInfo, tmp_path: Path) -> dict[str, Any]:
    """Settings as plain JSON values, so a worker subprocess can be given the very same ones."""
    return {
        "mapping_file": str(ROOT / "mapping.example.toml"),
        "data_dir": str(tmp_path / "data"),
        "webhook_basic_user": "halo",
        "webhook_basic_password": "basic-secret-value",
        "webhook_hmac_secret": "hmac-secret-value",
        "ad_url": directory.url,
        "ad_user": directory.admin_user,
        "ad_password": directory.admin_password,
        "ad_ca_file": str(directory.ca_file),
        "ad_tls_server_name": directory.tls_server_name,
        "ad_base_dn": directory.base_dn,
        "file_roots": file_roots(file_server),
        "retry_base_seconds": 0.05,
        "retry_cap_seconds": 0.2,
    }


@pytest.fixture
def files_world(
    directory: DCInfo, example_mapping: Mapping, file_server: FileServerInfo, settings_values: dict[str, Any]
) -> Iterator[World]:
    settings = dc_settings(directory, Path(settings_values["data_dir"]).parent, **_typed(settings_values))
    runtime = Runtime(settings, mapping=build_mapping(example_mapping, file_server.host))
    worker = Worker(runtime)
    conn = admin_connection(directory)
    yield World(directory, runtime, worker, conn)
    worker.close()
    conn.unbind()
    runtime.close()


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    skip = {"ad_url", "ad_user", "ad_password", "ad_ca_file", "ad_tls_server_name", "ad_base_dn", "data_dir"}
    return {k: v for k, v in values.items() if k not in skip}


def tree_manifest(folder: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        found[relative + ("/" if path.is_dir() else "")] = (
            "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        )
    return found


def populate(folder: Path) -> dict[str, str]:
    """Nested files, as a user would leave them; one spans several copy chunks."""
    for index in range(24):
        path = folder / f"project-{index % 3}" / ("drafts" if index % 2 else "final") / f"doc-{index:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"document {index}\n".encode() * (index * 300 + 1))
    (folder / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    (folder / "empty.txt").write_bytes(b"")
    (folder / "Ünïcode name.txt").write_text("ü")
    return tree_manifest(folder)


def _joined(world: World, user: dict[str, Any]) -> dict[str, Any]:
    world.accept(delivery("created", user))
    assert [r.outcome for r in world.drain()] == ["completed"]
    account = world.account(user["id"])
    assert account is not None
    return account


def test_a_joiner_gets_a_home_folder_the_user_may_use_and_home_directory_points_at_it(
    files_world: World, file_server: FileServerInfo
) -> None:
    user = new_user("Hana", "Homefolder")
    account = _joined(files_world, user)
    sam = account["sAMAccountName"]
    assert account["homeDirectory"] == file_server.unc("staff", sam) and account["homeDrive"] == "H:"
    assert (file_server.shares["staff"] / sam).is_dir()
    granted = [c for e in files_world.changes(user["id"]) for c in e.changes if c.attribute == "homeFolderAccess"]
    sid = format_sid(account["objectSid"])
    assert len(granted) == 1 and f"allow {sid} full control" in str(granted[0].after)
    # The ACE is really on the folder, as Samba's own client reads it: the user's SID, allowed full control,
    # inherited by what the folder will hold, set on the folder itself.
    acl = read_acl(file_server, "staff", sam)
    wanted = Ace(sid, ALLOWED, OBJECT_INHERIT | CONTAINER_INHERIT, FULL_CONTROL)
    assert [a for a in acl.aces if a.sid == sid] == [wanted], acl
    # The same joiner again changes nothing.
    before = len(files_world.changes(user["id"]))
    files_world.accept(delivery("created", user))
    assert [r.outcome for r in files_world.drain()] == ["completed"]
    assert len(files_world.changes(user["id"])) == before


def _run_child(config: dict[str, Any], tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    # The config (with the test's secrets) goes over stdin, never into a file the secret scan would flag.
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.homefolder_child"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert child.stdin is not None
    child.stdin.write(json.dumps(config).encode())
    child.stdin.close()
    child.stdin = None  # sent and closed: communicate() must not flush it again
    return child


def _kill_when_stopped(child: subprocess.Popen[bytes], marker: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if child.poll() is not None:
            output = child.stdout.read().decode() if child.stdout else ""
            pytest.fail(f"the worker finished before the stop point:\n{output}")
        assert time.monotonic() < deadline, "the worker never reached the stop point"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)


def test_a_mover_killed_mid_move_ends_with_every_file_once_in_the_new_share_and_home_directory_updated(
    files_world: World, file_server: FileServerInfo, settings_values: dict[str, Any], tmp_path: Path
) -> None:
    user = new_user("Moritz", "Mover")
    sam = _joined(files_world, user)["sAMAccountName"]
    old, new = file_server.shares["staff"] / sam, file_server.shares["sales"] / sam
    expected = populate(old)
    files_world.accept(delivery("updated", {**user, "department": "Sales"}))
    base = {"settings": settings_values, "host": file_server.host}

    # 1. Killed while copying the 5th file: a partial temporary copy may be left in the new share.
    marker = tmp_path / "stop-1"
    child = _run_child({**base, "stop": {"method": "write_file", "after": 5, "marker": str(marker)}}, tmp_path, "one")
    _kill_when_stopped(child, marker)
    moved, left = tree_manifest(new), tree_manifest(old)
    assert [k for k in moved if not k.endswith("/")] and left

    # 2. Rerun minutes later, killed after a file was renamed into place but before its source was removed.
    marker = tmp_path / "stop-2"
    child = _run_child(
        {**base, "clock_offset": 200, "stop": {"method": "remove", "after": 4, "marker": str(marker)}},
        tmp_path,
        "two",
    )
    _kill_when_stopped(child, marker)
    both = {k for k in tree_manifest(old) if not k.endswith("/")} & set(tree_manifest(new))
    assert both, "a file should be in both places after this crash"

    # 3. Rerun again: it completes.
    child = _run_child({**base, "clock_offset": 400}, tmp_path, "three")
    output, _ = child.communicate(timeout=300)
    assert json.loads(output.decode().strip().splitlines()[-1])["outcome"] == "completed", output.decode()

    assert tree_manifest(new) == expected  # every file once, intact, nothing extra (no temporary copies)
    assert not old.exists()
    assert not list(file_server.shares["sales"].rglob(TEMP_PREFIX + "*"))
    account = files_world.account(user["id"])
    assert account is not None and account["homeDirectory"] == file_server.unc("sales", sam)
    moves = [e for e in files_world.audit(user["id"]) if e.action == "move_home_folder"]
    assert moves[-1].outcome == "changed" and "interrupted" in moves[-1].message


def _context(action: str, params: dict[str, Any], account: Account | None) -> StepContext:
    step = Step(key=f"01-{action}", action=action, system="files", target="default", params=params)
    event = LifecycleEvent(
        kind="updated", user_id=1, occurred_at=datetime(2026, 1, 1, tzinfo=UTC), source="webhook", user={"id": 1}
    )
    item = WorkItem(work_id="w", lifecycle="leaver", event=event, steps=[step])
    return StepContext(item=item, step=step, dry_run=False, ad_account=lambda: account)


def test_a_delete_over_smb_never_follows_links_and_refuses_paths_outside_the_roots(
    file_server: FileServerInfo, tmp_path: Path
) -> None:
    staff = file_server.shares["staff"]
    folder, colleague, outside = staff / "del.links", staff / "del.colleague", tmp_path / "outside"
    populate(folder)
    for place in (colleague, outside):
        place.mkdir()
        (place / "canary.txt").write_text("must survive")
    os.symlink(outside, folder / "project-0" / "escape")  # leaves the share
    os.symlink("../del.colleague", folder / "sideways")  # another user's folder in the same share
    roots = {name: FileRoot(**value) for name, value in file_roots(file_server).items()}  # type: ignore[arg-type]
    target = HomeFolderTarget("default", roots)
    try:
        sid = "S-1-5-21-1111-2222-3333-4444"
        home = Account("CN=x,DC=corp", {"homedirectory": [file_server.unc("staff", "del.links")], "objectsid": [sid]})
        # The folder is this person's (their explicit ACE): only then may its files be deleted (issue 14).
        tree = SmbTree("staff", roots["staff"])
        try:
            assert tree.grant(["del.links"], home, "full_control")
        finally:
            tree.close()
        # The server shows no link to a client, so the folder cannot be emptied: the step stops, says why,
        # and what the links point to is untouched.
        with pytest.raises(Permanent, match="cannot see"):
            target.run(_context("delete_home_folder", {}, home))
        assert (outside / "canary.txt").read_text() == "must survive"
        assert (colleague / "canary.txt").read_text() == "must survive"
        assert (folder / "project-0" / "escape").is_symlink() and (folder / "sideways").is_symlink()
        for path in (
            file_server.unc("staff", "..", "..", "etc"),
            file_server.unc("staff"),
            f"\\\\{file_server.host}\\IPC$\\x",
            "/etc",
        ):
            with pytest.raises(PolicyRefused, match="refused"):
                target.run(_context("delete_home_folder", {"path": path}, None))
        assert colleague.exists() and staff.exists()
    finally:
        target.close()


def test_a_leaver_archives_the_home_folder_after_the_retention_not_at_once(
    files_world: World, file_server: FileServerInfo
) -> None:
    user = new_user("Lea", "Leaver")
    sam = _joined(files_world, user)["sAMAccountName"]
    expected = populate(file_server.shares["staff"] / sam)
    files_world.accept(delivery("updated", {**user, "inactive": True}))
    assert [r.outcome for r in files_world.drain()] == ["completed"]
    (pending,) = files_world.runtime.store.pending(user_id=user["id"])
    assert "archive_home_folder 30 days" in pending.description
    assert tree_manifest(file_server.shares["staff"] / sam) == expected  # not yet

    later = Worker(files_world.runtime, clock=lambda: time.time() + 31 * 86400)
    try:
        assert later.release_due() == 1
        assert [r.outcome for r in files_world.drain()] == ["completed"]
    finally:
        later.close()
    assert tree_manifest(file_server.shares["archive"] / sam) == expected
    assert not (file_server.shares["staff"] / sam).exists()
