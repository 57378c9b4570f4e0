"""A home-folder root on an SMB share, through ``smbprotocol`` (pure Python, SMB 2/3, encrypted by default).

An entry with the reparse-point attribute (a Windows symlink or junction) is a link: refused, never followed.
Every call is watched and cut at the invocation's deadline (``smb_watchdog``).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from lifecycle.errors import Permanent, Retryable
from lifecycle.targets.files_actions import FileRoot
from lifecycle.targets.files_tree import CHUNK, Entry, LinkRefused
from lifecycle.targets.smb_acl import ACCESS_MASKS, grant_sid, owner_and_explicit_sids
from lifecycle.targets.smb_watchdog import connection_timeout, watched

if TYPE_CHECKING:
    from lifecycle.targets.ad_model import Account

FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
_NT_SHARING_VIOLATION = 0xC0000043
_NT_ACCESS_DENIED = 0xC0000022
_NT_DELETE_PENDING = 0xC0000056
T = TypeVar("T")


def _smbclient() -> Any:
    """smbprotocol's high-level client, imported on first use (it is not needed by local roots or the ingress)."""
    import smbclient  # type: ignore[import-untyped]

    return smbclient


def _translate_smb(exc: Exception, what: str) -> Exception:
    """An smbprotocol error as an ``OSError`` the algorithms handle, or as Retryable/Permanent."""
    from smbprotocol.exceptions import (
        SMBAuthenticationError,
        SMBConnectionClosed,
        SMBException,
        SMBOSError,
        SMBResponseException,
    )

    if isinstance(exc, SMBOSError):
        status = exc.ntstatus
        if status == _NT_SHARING_VIOLATION:
            return Retryable(f"{what}: a file is in use (open by the user?); will try again", retry_after=300)
        if status == _NT_DELETE_PENDING:
            return Retryable(f"{what}: a file is being deleted by someone else", retry_after=30)
        if status == _NT_ACCESS_DENIED:
            return Permanent(f"{what}: access denied (give the service account rights on the share)")
        if exc.errno in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            return OSError(exc.errno, exc.strerror, exc.filename)
        return Permanent(f"{what}: {exc.strerror} (NT status 0x{status or 0:08x})")
    if isinstance(exc, (SMBAuthenticationError, SMBConnectionClosed, ConnectionError, TimeoutError)):
        return Retryable(f"{what}: {exc}")
    if isinstance(exc, ValueError) and "Failed to connect" in str(exc):
        return Retryable(f"{what}: {exc}")
    if isinstance(exc, SMBException) and "timeout" in str(exc).lower():
        return Retryable(f"{what}: {exc}")  # no answer within the connect timeout (cut at the deadline)
    if isinstance(exc, SMBResponseException):
        if exc.status == _NT_SHARING_VIOLATION:
            return Retryable(f"{what}: a file is in use; will try again", retry_after=300)
        if exc.status == _NT_ACCESS_DENIED:
            return Permanent(f"{what}: access denied (give the service account rights on the share)")
        return Retryable(f"{what}: {exc}")
    return exc


class SmbTree:
    """A root on an SMB share, through smbprotocol's ``smbclient`` with a connection pool of its own."""

    def __init__(self, name: str, root: FileRoot) -> None:
        from lifecycle.targets.files_actions import split_path

        _, head, parts = split_path(root.path)
        self.server, self.share = head
        self.base = "\\\\" + "\\".join((*head, *parts))
        self.label = self.base
        self._cache: dict[str, Any] = {}
        self._kwargs: dict[str, Any] = {
            "port": root.port,
            "username": root.username or None,
            "password": root.password.get_secret_value() or None,
            "encrypt": root.encrypt,
            "auth_protocol": root.auth_protocol,
            "connection_timeout": root.timeout_seconds,
            "connection_cache": self._cache,
        }
        self._name = name
        self._timeout = root.timeout_seconds

    def _unc(self, parts: Sequence[str]) -> str:
        return "\\".join((self.base, *parts)) if parts else self.base

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        # Every call ends by the invocation's deadline (smb_watchdog), a new connection's connect too.
        self._kwargs["connection_timeout"] = connection_timeout(self._timeout)
        return watched(self._cache, what, lambda: self._translated(what, operation))

    def _translated(self, what: str, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except (Permanent, Retryable, OSError) as exc:
            from smbprotocol.exceptions import SMBOSError

            if isinstance(exc, SMBOSError):
                raise _translate_smb(exc, what) from None
            if isinstance(exc, (ConnectionError, TimeoutError)):
                raise Retryable(f"{what}: {exc}") from None
            raise
        except Exception as exc:
            translated = _translate_smb(exc, what)
            if translated is exc:
                raise
            raise translated from None

    def check_no_links(self, parts: Sequence[str]) -> None:
        """Refuse when the folder or any ancestor below the root is a reparse point (symlink, junction)."""
        for depth in range(1, len(parts) + 1):
            entry = self.lstat(parts[:depth])
            if entry is None:
                return
            if entry.kind == "link":
                raise LinkRefused(f"{self._unc(parts[:depth])} is a link (reparse point), not a folder")

    def lstat(self, parts: Sequence[str]) -> Entry | None:
        smbclient = _smbclient()
        path = self._unc(parts)
        try:
            st = self._call(f"stat {path}", lambda: smbclient.stat(path, follow_symlinks=False, **self._kwargs))
        except FileNotFoundError:
            return None
        return _smb_entry(parts[-1] if parts else "", st.st_file_attributes, st.st_size, st.st_mtime_ns)

    def listdir(self, parts: Sequence[str]) -> list[Entry]:
        smbclient = _smbclient()
        path = self._unc(parts)

        def scan() -> list[Entry]:
            out = []
            for e in smbclient.scandir(path, **self._kwargs):
                info = e.smb_info
                mtime = int(info.last_write_time.timestamp() * 1_000_000_000)
                out.append(_smb_entry(e.name, info.file_attributes, info.end_of_file, mtime))
            return out

        return self._call(f"list {path}", scan)

    def mkdir(self, parts: Sequence[str]) -> None:
        smbclient = _smbclient()
        path = self._unc(parts)
        self._call(f"create {path}", lambda: smbclient.mkdir(path, **self._kwargs))

    @contextlib.contextmanager
    def _closing(self, path: str, handle: Any) -> Iterator[Any]:
        """Close ``handle`` (SMB2 CLOSE) through ``_call``; after a failure, quietly: a connection the deadline
        cut cannot close anything, and the failure that stopped the copy is the one to report."""
        try:
            yield handle
        except BaseException:
            with contextlib.suppress(Exception):
                handle.close()
            raise
        self._call(f"close {path}", handle.close)

    def read_chunks(self, parts: Sequence[str], offset: int = 0) -> Iterator[bytes]:
        smbclient = _smbclient()
        path = self._unc(parts)
        # Others may read while we copy, nobody may write: a file the user is changing is retried later.
        handle = self._call(
            f"open {path}", lambda: smbclient.open_file(path, mode="rb", share_access="r", **self._kwargs)
        )
        with self._closing(path, handle):
            if offset:
                self._call(f"seek {path}", lambda: handle.seek(offset))
            while True:
                chunk = self._call(f"read {path}", lambda: handle.read(CHUNK))
                if not chunk:
                    return
                yield chunk

    def write_file(self, parts: Sequence[str], chunks: Iterator[bytes], append: bool = False) -> int:
        smbclient = _smbclient()
        path = self._unc(parts)
        written = 0
        mode = "ab" if append else "wb"
        handle = self._call(f"create {path}", lambda: smbclient.open_file(path, mode=mode, **self._kwargs))
        with self._closing(path, handle):
            # BufferedWriter.flush sends SMB2 FLUSH: the server commits the data before we rename it into place,
            # or keeps what a copy cut at the deadline wrote for the next attempt to resume from (quietly then:
            # the failure that stopped the copy is the one to report).
            try:
                for chunk in chunks:
                    self._call(f"write {path}", lambda c=chunk: handle.write(c))  # type: ignore[misc]
                    written += len(chunk)
            except BaseException:
                with contextlib.suppress(Exception):
                    self._call(f"flush {path}", handle.flush)
                raise
            self._call(f"flush {path}", handle.flush)
        return written

    def rename(self, source: Sequence[str], destination: Sequence[str]) -> None:
        smbclient = _smbclient()
        src, dst = self._unc(source), self._unc(destination)
        self._call(f"rename {src}", lambda: smbclient.rename(src, dst, **self._kwargs))

    def remove(self, parts: Sequence[str], entry: Entry) -> None:
        smbclient = _smbclient()
        path = self._unc(parts)
        # smbclient opens with FILE_OPEN_REPARSE_POINT: a symlink or junction is removed itself, not followed.
        if entry.kind == "link" and entry.size == -1:
            self._call(f"remove {path}", lambda: smbclient.rmdir(path, **self._kwargs))
        else:
            self._call(f"remove {path}", lambda: smbclient.remove(path, **self._kwargs))

    def rmdir(self, parts: Sequence[str]) -> None:
        smbclient = _smbclient()
        path = self._unc(parts)
        self._call(f"remove {path}", lambda: smbclient.rmdir(path, **self._kwargs))

    def set_mtime(self, parts: Sequence[str], mtime_ns: int) -> None:
        smbclient = _smbclient()
        path = self._unc(parts)
        self._call(
            f"set times of {path}",
            lambda: smbclient.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False, **self._kwargs),
        )

    def readlink(self, parts: Sequence[str]) -> str:
        raise Permanent(f"{self._unc(parts)} is a link (reparse point): move it by hand")

    def symlink(self, target: str, parts: Sequence[str]) -> None:
        raise Permanent(f"{self._unc(parts)}: links are not recreated on SMB shares")

    def grant(self, parts: Sequence[str], account: Account, access: str) -> str | None:
        sid = account.first("objectSid")
        if not isinstance(sid, str) or not sid.startswith("S-1-"):
            raise Permanent(f"the account {account.dn} has no readable objectSid to grant access to")
        path = self._unc(parts)
        return self._call(f"set the access of {path}", lambda: grant_sid(path, sid, ACCESS_MASKS[access], self._kwargs))

    def belongs_to(self, parts: Sequence[str], account: Account) -> bool:
        sid = account.first("objectSid")
        if not isinstance(sid, str) or not sid.startswith("S-1-"):
            return False
        path = self._unc(parts)
        owner, explicit = self._call(f"read the access of {path}", lambda: owner_and_explicit_sids(path, self._kwargs))
        return owner == sid or sid in explicit

    def close(self) -> None:
        smbclient = _smbclient()
        try:
            smbclient.reset_connection_cache(fail_on_error=False, connection_cache=self._cache)
        except Exception:  # noqa: S110 - closing a broken connection must not hide the step's own result
            pass


def _smb_entry(name: str, attributes: int, size: int, mtime_ns: int | None) -> Entry:
    if attributes & FILE_ATTRIBUTE_REPARSE_POINT:
        # size -1 marks a directory reparse point (a junction or directory symlink), removed with rmdir.
        return Entry(name, "link", -1 if attributes & FILE_ATTRIBUTE_DIRECTORY else 0, mtime_ns)
    if attributes & FILE_ATTRIBUTE_DIRECTORY:
        return Entry(name, "dir", 0, mtime_ns)
    return Entry(name, "file", size, mtime_ns)
