"""Home folders never wait past the invocation's deadline (issue 13): SMB calls are cut, copies resume.

Each test failed on the code before: smbprotocol waited for a silent file server for the whole connect timeout
(and without any timeout once connected), and a file was copied whole in one go, however long it took, from
its first byte again after every interruption.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import pytest

from lifecycle import deadline
from lifecycle.errors import Retryable
from lifecycle.targets import files_tree
from lifecycle.targets.files_actions import FileRoot
from lifecycle.targets.files_local import LocalTree
from lifecycle.targets.files_smb import SmbTree
from lifecycle.targets.files_tree import CHUNK, Tally, move_file, temp_name
from lifecycle.targets.smb_watchdog import watched

T = TypeVar("T")


def within_20_seconds(call: Callable[[], T]) -> T:
    """Run ``call`` (in this context) in another thread; still running after 20 s fails the test."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(contextvars.copy_context().run, call).result(timeout=20)
    finally:
        pool.shutdown(wait=False)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on loopback that accepts connections and never answers (a hung file server)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def test_an_smb_call_to_a_silent_file_server_ends_at_the_invocations_deadline(silent_server: int) -> None:
    # The connect timeout (60 s) is far past the deadline: only the deadline can end this wait in time.
    root = FileRoot.model_validate({"path": r"\\127.0.0.1\staff", "port": silent_server, "timeout_seconds": 60})
    tree = SmbTree("staff", root)
    with deadline.invocation(1.0), pytest.raises(Retryable):
        within_20_seconds(lambda: tree.lstat(["alice"]))


def test_a_call_waiting_on_a_connection_is_woken_and_retried_when_the_deadline_passes() -> None:
    # What smbprotocol's receive thread does: block on the socket until the server answers or it is shut down.
    ours, theirs = socket.socketpair()
    connections = {"127.0.0.1:445": SimpleNamespace(transport=SimpleNamespace(_sock=ours, close=ours.close))}

    def wait_for_an_answer() -> bytes:
        data = ours.recv(1)
        raise ConnectionError("the connection was closed") if not data else AssertionError("no answer was sent")

    with deadline.invocation(0.5), pytest.raises(Retryable, match="before the invocation's deadline"):
        within_20_seconds(lambda: watched(connections, "stat alice", wait_for_an_answer))
    assert connections == {}  # the next attempt connects afresh
    theirs.close()


def test_nothing_is_sent_to_the_share_once_the_invocations_time_is_up() -> None:
    called: list[bool] = []
    with deadline.invocation(0.0), pytest.raises(Retryable, match="time is up"):
        watched({}, "stat alice", lambda: called.append(True))
    assert called == []


class CountingTree(LocalTree):
    """A local tree that records from which offset each file was read."""

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.offsets: list[int] = []

    def read_chunks(self, parts: Sequence[str], offset: int = 0) -> Iterator[bytes]:
        self.offsets.append(offset)
        return super().read_chunks(parts, offset)


def test_a_copy_cut_at_the_deadline_resumes_where_it_stopped_and_ends_with_the_same_file(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    content = os.urandom(3 * CHUNK + 123)
    (tmp_path / "old" / "big.bin").write_bytes(content)
    src, dst = CountingTree(tmp_path / "old"), LocalTree(tmp_path / "new")
    entry = src.lstat(["big.bin"])
    assert entry is not None

    # Less than CHUNK_TIME_MARGIN_SECONDS left: one chunk is copied, then the copy stops and keeps it.
    assert files_tree.CHUNK_TIME_MARGIN_SECONDS > 5.0
    with deadline.invocation(5.0), pytest.raises(Retryable, match="resumes"):
        move_file(src, ["big.bin"], dst, ["big.bin"], entry, Tally())
    assert (tmp_path / "new" / temp_name("big.bin")).stat().st_size == CHUNK
    assert (tmp_path / "old" / "big.bin").exists() and not (tmp_path / "new" / "big.bin").exists()

    tally = Tally()
    move_file(src, ["big.bin"], dst, ["big.bin"], entry, tally)  # the next attempt, with time enough

    assert src.offsets == [0, CHUNK, 0]  # resumed at the first byte not copied (then read whole to verify)
    assert (tmp_path / "new" / "big.bin").read_bytes() == content
    assert not (tmp_path / "old" / "big.bin").exists() and tally.files == 1


def test_a_resumed_copy_whose_source_changed_meanwhile_is_thrown_away_and_copied_again(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    (tmp_path / "old" / "doc.bin").write_bytes(b"a" * (2 * CHUNK))
    src, dst = LocalTree(tmp_path / "old"), LocalTree(tmp_path / "new")
    entry = src.lstat(["doc.bin"])
    assert entry is not None
    with deadline.invocation(5.0), pytest.raises(Retryable):
        move_file(src, ["doc.bin"], dst, ["doc.bin"], entry, Tally())
    changed = b"b" * (2 * CHUNK)  # same size, other content: only the digest tells
    (tmp_path / "old" / "doc.bin").write_bytes(changed)

    with pytest.raises(Retryable, match="changed while it was copied"):
        move_file(src, ["doc.bin"], dst, ["doc.bin"], entry, Tally())
    assert not (tmp_path / "new" / temp_name("doc.bin")).exists()
    move_file(src, ["doc.bin"], dst, ["doc.bin"], entry, Tally())
    assert (tmp_path / "new" / "doc.bin").read_bytes() == changed


def test_a_write_cut_at_the_deadline_ends_as_a_retry_even_when_its_handle_cannot_be_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from smbprotocol.exceptions import SMBConnectionClosed

    from lifecycle.targets import files_smb

    ours, theirs = socket.socketpair()

    class Handle:
        """An open file on a server that stops answering mid-write; closing it needs the dead connection."""

        def write(self, data: bytes) -> int:
            if not ours.recv(1):
                raise ConnectionError("the connection was closed")
            raise AssertionError("the server answered")

        def flush(self) -> None: ...

        def close(self) -> None:
            raise SMBConnectionClosed("SMB socket was closed, cannot send or receive any more data")

    monkeypatch.setattr(files_smb, "_smbclient", lambda: SimpleNamespace(open_file=lambda *a, **k: Handle()))
    tree = SmbTree("staff", FileRoot.model_validate({"path": r"\\127.0.0.1\staff"}))
    tree._cache["127.0.0.1:445"] = SimpleNamespace(transport=SimpleNamespace(_sock=ours, close=ours.close))

    with deadline.invocation(0.5), pytest.raises(Retryable, match="before the invocation's deadline"):
        within_20_seconds(lambda: tree.write_file(["alice", "big.bin"], iter([b"data"])))
    theirs.close()
