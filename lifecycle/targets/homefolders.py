"""Home folders (system ``files``): create, move, archive and delete folders on SMB shares and local paths.

SMB goes through ``smbprotocol`` (pure Python, SMB 2/3, encrypted by default); a locally mounted path through
the ``os`` module with directory file descriptors. Either way:

- **Only below configured roots.** Every path is resolved by ``files_actions.resolve``: strictly below a
  root named in ``LIFECYCLE_FILE_ROOTS``, every component a plain name. Anything else is refused and audited.
- **Never through a link.** Local paths are walked one component at a time with ``O_NOFOLLOW``; a symlink
  anywhere is refused (as the folder or its ancestors) or, inside a folder being deleted, removed itself and
  never descended. On SMB an entry with the reparse-point attribute (a Windows symlink or junction) is treated
  the same way; Samba hides links that leave the share (``wide links = no``, its default) so they can never
  be followed, and a folder still holding such hidden entries is not removed (the step stops and says why).
- **Resumable, idempotent moves.** Each file is copied to a temporary name in the destination, flushed to
  disk, renamed into place, and only then removed from the source. A rerun after a crash finds every file in
  exactly one of three states and finishes it: still only in the source (copied again; a half-written
  temporary copy is overwritten), in both places with the same size and SHA-256 (the source copy is removed),
  or only in the destination (done). A file present in both places with different content is a conflict: the
  step stops (nothing is overwritten or lost) and names it.

One target instance per worker thread; SMB connections are pooled per instance and closed by ``close``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as stat_module
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from lifecycle import deadline
from lifecycle.errors import Permanent, PolicyRefused, Retryable
from lifecycle.protection import Policy
from lifecycle.state import Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.files_actions import (
    TEMP_PREFIX,
    FileRoot,
    HomePath,
    UnsafePath,
    expand_account_placeholders,
    needs_account,
    resolve,
)
from lifecycle.targets.smb_acl import ACCESS_MASKS, grant_sid, owner_and_explicit_sids
from lifecycle.targets.smb_watchdog import connection_timeout, watched

if TYPE_CHECKING:
    from lifecycle.targets import TargetContext
    from lifecycle.targets.ad import Account

CHUNK = 1024 * 1024
# On a local root, the extended attribute naming whose folder it is (set when the service grants access).
OWNER_XATTR = "user.lifecycle.owner"
# A move or delete stops when less than this is left of the invocation: room for one more large file.
FILE_TIME_MARGIN_SECONDS = 30.0
# A copy stops between two chunks when less than this is left (one more chunk, then flushing what was written).
CHUNK_TIME_MARGIN_SECONDS = 10.0
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_REPARSE_POINT = 0x400
_NT_SHARING_VIOLATION = 0xC0000043
_NT_ACCESS_DENIED = 0xC0000022
_NT_DELETE_PENDING = 0xC0000056
_RETRYABLE_ERRNOS = {errno.ENOSPC, errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.EAGAIN, errno.EBUSY}
T = TypeVar("T")

EntryKind = Literal["file", "dir", "link"]


@dataclass(frozen=True)
class Entry:
    """One directory entry, never following links."""

    name: str
    kind: EntryKind
    size: int = 0
    mtime_ns: int | None = None


@dataclass
class Tally:
    """What a move or delete did, for the audit and the step's facts."""

    files: int = 0
    bytes: int = 0
    folders: int = 0
    links: int = 0
    already_moved: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "files": self.files,
            "bytes": self.bytes,
            "folders": self.folders,
            "links": self.links,
            "already_moved": self.already_moved,
        }


class LinkRefused(Exception):
    """A link where the service needs a real folder (the home folder itself or one of its ancestors)."""


class Tree(Protocol):
    """The file operations the algorithms need, on one root. Paths are component tuples below the root."""

    label: str

    def lstat(self, parts: Sequence[str]) -> Entry | None:
        """The entry (not following a link), or None when it does not exist."""
        ...

    def listdir(self, parts: Sequence[str]) -> list[Entry]: ...

    def mkdir(self, parts: Sequence[str]) -> None:
        """Create one folder; FileExistsError if the name is taken."""
        ...

    def read_chunks(self, parts: Sequence[str], offset: int = 0) -> Iterator[bytes]:
        """The file's content from byte ``offset`` on, in chunks."""
        ...

    def write_file(self, parts: Sequence[str], chunks: Iterator[bytes], append: bool = False) -> int:
        """Create or truncate (or append to) a file, write it, flush it to stable storage; returns the bytes
        written. What was written stays when ``chunks`` raises (a copy cut at the deadline resumes from it)."""
        ...

    def rename(self, source: Sequence[str], destination: Sequence[str]) -> None:
        """Rename within this root; FileExistsError if the destination exists."""
        ...

    def remove(self, parts: Sequence[str], entry: Entry) -> None:
        """Remove a file or a link itself (a link is never followed)."""
        ...

    def rmdir(self, parts: Sequence[str]) -> None: ...

    def set_mtime(self, parts: Sequence[str], mtime_ns: int) -> None: ...

    def readlink(self, parts: Sequence[str]) -> str: ...

    def symlink(self, target: str, parts: Sequence[str]) -> None: ...

    def grant(self, parts: Sequence[str], account: Account, access: str) -> str | None:
        """Give the account access; returns what changed (for the audit), None when it already had it."""
        ...

    def belongs_to(self, parts: Sequence[str], account: Account) -> bool:
        """Whether the folder is this person's: its owner, or an explicit (not inherited) ACE, is their SID."""
        ...

    def close(self) -> None: ...


# Local paths --------------------------------------------------------------------------------------------------
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LocalTree:
    """A locally mounted root. Every operation walks from the root with ``O_NOFOLLOW`` directory descriptors,
    so a symlink swapped in anywhere below the root is refused, never followed (no check-then-use race)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.label = str(base)

    @contextmanager
    def _dir(self, parts: Sequence[str]) -> Iterator[int]:
        try:
            fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise Permanent(
                f"the home-folder root {self.base} does not exist (create it or fix the settings)"
            ) from None
        try:
            for index, part in enumerate(parts):
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        where = "/".join(parts[: index + 1])
                        raise LinkRefused(f"{self.base}/{where} is a link or a file, not a folder") from None
                    raise
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def lstat(self, parts: Sequence[str]) -> Entry | None:
        if not parts:
            return Entry("", "dir")
        try:
            with self._dir(parts[:-1]) as fd:
                st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return _local_entry(parts[-1], st)

    def listdir(self, parts: Sequence[str]) -> list[Entry]:
        with self._dir(parts) as fd, os.scandir(fd) as entries:
            return [_local_entry(e.name, e.stat(follow_symlinks=False)) for e in entries]

    def mkdir(self, parts: Sequence[str]) -> None:
        with self._dir(parts[:-1]) as fd:
            os.mkdir(parts[-1], 0o750, dir_fd=fd)
            os.fsync(fd)

    def read_chunks(self, parts: Sequence[str], offset: int = 0) -> Iterator[bytes]:
        with self._dir(parts[:-1]) as dir_fd:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as handle:
            handle.seek(offset)
            while chunk := handle.read(CHUNK):
                yield chunk

    def write_file(self, parts: Sequence[str], chunks: Iterator[bytes], append: bool = False) -> int:
        written = 0
        mode = os.O_APPEND if append else os.O_TRUNC
        with self._dir(parts[:-1]) as dir_fd:
            flags = os.O_WRONLY | os.O_CREAT | mode | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(parts[-1], flags, 0o600, dir_fd=dir_fd)
            with os.fdopen(fd, "ab" if append else "wb") as handle:
                try:
                    for chunk in chunks:
                        handle.write(chunk)
                        written += len(chunk)
                finally:
                    handle.flush()
                    os.fsync(handle.fileno())
        return written

    def rename(self, source: Sequence[str], destination: Sequence[str]) -> None:
        if self.lstat(destination) is not None:
            raise FileExistsError(errno.EEXIST, "exists", "/".join(destination))
        with self._dir(source[:-1]) as src_fd, self._dir(destination[:-1]) as dst_fd:
            os.rename(source[-1], destination[-1], src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            # The rename is durable only once the directory that now holds the name is on disk.
            os.fsync(dst_fd)

    def remove(self, parts: Sequence[str], entry: Entry) -> None:
        with self._dir(parts[:-1]) as fd:
            os.unlink(parts[-1], dir_fd=fd)  # unlink removes a symlink itself, never its target

    def rmdir(self, parts: Sequence[str]) -> None:
        with self._dir(parts[:-1]) as fd:
            os.rmdir(parts[-1], dir_fd=fd)

    def set_mtime(self, parts: Sequence[str], mtime_ns: int) -> None:
        with self._dir(parts[:-1]) as fd:
            os.utime(parts[-1], ns=(mtime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)

    def readlink(self, parts: Sequence[str]) -> str:
        with self._dir(parts[:-1]) as fd:
            return os.readlink(parts[-1], dir_fd=fd)

    def symlink(self, target: str, parts: Sequence[str]) -> None:
        with self._dir(parts[:-1]) as fd:
            os.symlink(target, parts[-1], dir_fd=fd)

    def grant(self, parts: Sequence[str], account: Account, access: str) -> str | None:
        # On a local mount the OS account of the person (resolved by winbind/sssd) owns the folder; if the
        # name does not resolve here, the folder keeps the service's ownership and the audit says so.
        import pwd

        sam = str(account.first("sAMAccountName") or "")
        try:
            uid = pwd.getpwnam(sam).pw_uid if sam else None
        except KeyError:
            uid = None
        with self._dir(parts) as fd:
            st = os.fstat(fd)
            changes = []
            if uid is not None and st.st_uid != uid:
                os.fchown(fd, uid, -1)
                changes.append(f"owner {sam}")
            mode = 0o700 if access == "full_control" else 0o750
            if stat_module.S_IMODE(st.st_mode) != mode:
                os.fchmod(fd, mode)
                changes.append(f"mode {mode:o}")
            identity = person_identity(account)
            if identity and _local_marker(fd) != identity:
                # Whose folder this is, where no OS account maps the person: the counterpart of an SMB ACE.
                os.setxattr(fd, OWNER_XATTR, identity.encode())
                changes.append(f"owner mark {identity}")
        return ", ".join(changes) or None

    def belongs_to(self, parts: Sequence[str], account: Account) -> bool:
        import pwd

        sam = str(account.first("sAMAccountName") or "")
        try:
            uid = pwd.getpwnam(sam).pw_uid if sam else None
        except KeyError:
            uid = None
        identity = person_identity(account)
        with self._dir(parts) as fd:
            if uid is not None and os.fstat(fd).st_uid == uid:
                return True
            return identity is not None and _local_marker(fd) == identity

    def close(self) -> None:
        pass


def person_identity(account: Account) -> str | None:
    """The person's SID (else objectGUID) as text: what an ACE or an owner mark names."""
    for name in ("objectSid", "objectGUID"):
        value = account.first(name)
        if isinstance(value, str) and value:
            return value
    return None


def _local_marker(fd: int) -> str | None:
    try:
        return os.getxattr(fd, OWNER_XATTR).decode("utf-8", "replace")
    except OSError:
        return None  # no mark (or a file system without user extended attributes)


def _local_entry(name: str, st: os.stat_result) -> Entry:
    if stat_module.S_ISLNK(st.st_mode):
        kind: EntryKind = "link"
    elif stat_module.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat_module.S_ISREG(st.st_mode):
        kind = "file"
    else:
        kind = "link"  # a device, socket or FIFO is nothing to copy or descend into: treat it like a link
    return Entry(name, kind, st.st_size if kind == "file" else 0, st.st_mtime_ns)


# SMB shares ---------------------------------------------------------------------------------------------------
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

    def read_chunks(self, parts: Sequence[str], offset: int = 0) -> Iterator[bytes]:
        smbclient = _smbclient()
        path = self._unc(parts)
        # Others may read while we copy, nobody may write: a file the user is changing is retried later.
        handle = self._call(
            f"open {path}", lambda: smbclient.open_file(path, mode="rb", share_access="r", **self._kwargs)
        )
        with handle:
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
        with handle:
            try:
                for chunk in chunks:
                    self._call(f"write {path}", lambda c=chunk: handle.write(c))  # type: ignore[misc]
                    written += len(chunk)
            finally:
                # BufferedWriter.flush sends SMB2 FLUSH: the server commits the data before we rename it into
                # place, or keeps what a copy cut at the deadline wrote for the next attempt to resume from.
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


# The algorithms -------------------------------------------------------------------------------------------------
def temp_name(name: str) -> str:
    """The temporary name a file is copied to; fixed length, so a 255-character name still fits."""
    return TEMP_PREFIX + hashlib.sha256(name.encode("utf-8")).hexdigest()[:24]


def _digest(tree: Tree, parts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for chunk in tree.read_chunks(parts):
        digest.update(chunk)
    return digest.hexdigest()


def _ensure_folders(tree: Tree, parts: Sequence[str]) -> bool:
    """Create ``parts`` and any missing parent below the root; True if something was created."""
    created = False
    for depth in range(1, len(parts) + 1):
        entry = tree.lstat(parts[:depth])
        if entry is None:
            try:
                tree.mkdir(parts[:depth])
                created = True
            except FileExistsError:
                entry = tree.lstat(parts[:depth])
        if entry is not None and entry.kind != "dir":
            raise LinkRefused(f"{tree.label}: {'/'.join(parts[:depth])} is not a folder")
    return created


def move_file(src: Tree, sp: Sequence[str], dst: Tree, dp: Sequence[str], entry: Entry, tally: Tally) -> None:
    """Move one file so that, whenever this stops, the file exists whole in at least one place."""
    final = dst.lstat(dp)
    if final is not None:
        if final.kind == "file" and final.size == entry.size and _digest(dst, dp) == _digest(src, sp):
            # Renamed into place by an interrupted run that did not get to remove the source.
            src.remove(sp, entry)
            tally.already_moved += 1
            return
        raise Permanent(
            f"conflict: {dst.label}/{'/'.join(dp)} already exists and differs from {src.label}/{'/'.join(sp)}; "
            "nothing was overwritten: keep one of them, then replay"
        )
    temporary = [*dp[:-1], temp_name(dp[-1])]
    # A copy cut at an earlier invocation's deadline resumes where it stopped (its temporary file is the cursor).
    partial = dst.lstat(temporary)
    offset = partial.size if partial is not None and partial.kind == "file" and partial.size <= entry.size else 0
    what = f"copying {src.label}/{'/'.join(sp)}"
    chunks = _until_deadline(src.read_chunks(sp, offset), what)
    written = offset + dst.write_file(temporary, chunks, append=offset > 0)
    if written != entry.size or (offset and _digest(dst, temporary) != _digest(src, sp)):
        dst.remove(temporary, Entry(temporary[-1], "file", written, None))
        raise Retryable(f"{src.label}/{'/'.join(sp)} changed while it was copied; will copy it again")
    dst.rename(temporary, dp)
    if entry.mtime_ns is not None:
        dst.set_mtime(dp, entry.mtime_ns)
    src.remove(sp, entry)
    tally.files += 1
    tally.bytes += written


def _until_deadline(chunks: Iterator[bytes], what: str) -> Iterator[bytes]:
    """The chunks, cut when the invocation's deadline is near: what was copied stays for the next attempt."""
    copied = 0
    for chunk in chunks:
        yield chunk
        copied += len(chunk)
        if deadline.remaining() < CHUNK_TIME_MARGIN_SECONDS:
            raise Retryable(
                f"{what}: {copied} byte(s) copied in this invocation's time; the copy resumes next attempt",
                retry_after=1.0,
            )


def _clean_temporaries(tree: Tree, parts: Sequence[str]) -> None:
    for entry in tree.listdir(parts):
        if entry.kind == "file" and entry.name.startswith(TEMP_PREFIX):
            tree.remove([*parts, entry.name], entry)


def _within_deadline(tally: Tally, what: str) -> None:
    """Stop a long move or delete before the invocation's deadline (lifecycle.deadline). The tree is the
    cursor: what was moved or deleted is gone from the source, so the next attempt carries on from there."""
    if deadline.remaining() < FILE_TIME_MARGIN_SECONDS:
        raise Retryable(
            f"{what}: {tally.files} file(s) done in this invocation's time; the rest continues in the next attempt",
            retry_after=1.0,
        )


def merge_tree(src: Tree, sp: Sequence[str], dst: Tree, dp: Sequence[str], tally: Tally) -> None:
    """Move everything in folder ``sp`` into folder ``dp`` (created if missing), then remove ``sp``."""
    if _ensure_folders(dst, dp):
        tally.folders += 1
    for entry in sorted(src.listdir(sp), key=lambda e: e.name):
        _within_deadline(tally, f"moving {src.label}/{'/'.join(sp)}")
        source, destination = [*sp, entry.name], [*dp, entry.name]
        if entry.name.startswith(TEMP_PREFIX) and entry.kind == "file":
            src.remove(source, entry)  # a partial copy left by an earlier interrupted move into this folder
        elif entry.kind == "dir":
            merge_tree(src, source, dst, destination, tally)
        elif entry.kind == "link":
            existing = dst.lstat(destination)
            target = src.readlink(source)
            if existing is None:
                dst.symlink(target, destination)
            elif existing.kind != "link" or dst.readlink(destination) != target:
                raise Permanent(f"conflict: {dst.label}/{'/'.join(destination)} exists and is not the same link")
            src.remove(source, entry)
            tally.links += 1
        else:
            move_file(src, source, dst, destination, entry, tally)
    _clean_temporaries(dst, dp)
    try:
        src.rmdir(sp)
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY:
            raise Permanent(
                f"{src.label}/{'/'.join(sp)} still holds entries the service cannot see or move (links that "
                "leave the share?); everything else was moved: check the folder, then replay"
            ) from None
        raise


def delete_tree(tree: Tree, parts: Sequence[str], tally: Tally) -> None:
    """Delete folder ``parts`` and everything in it; links are removed themselves, never descended into."""
    for entry in tree.listdir(parts):
        _within_deadline(tally, f"deleting {tree.label}/{'/'.join(parts)}")
        child = [*parts, entry.name]
        if entry.kind == "dir":
            delete_tree(tree, child, tally)
        else:
            tree.remove(child, entry)
            if entry.kind == "link":
                tally.links += 1
            else:
                tally.files += 1
                tally.bytes += entry.size
    try:
        tree.rmdir(parts)
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY:
            raise Permanent(
                f"{tree.label}/{'/'.join(parts)} still holds entries the service cannot see (links that leave "
                "the share?); they were not followed: remove them by hand, then replay"
            ) from None
        raise
    tally.folders += 1


def survey(tree: Tree, parts: Sequence[str], tally: Tally) -> None:
    """Count what a move or delete would touch (dry-run), reading only."""
    tally.folders += 1
    for entry in tree.listdir(parts):
        if entry.kind == "dir":
            survey(tree, [*parts, entry.name], tally)
        elif entry.kind == "link":
            tally.links += 1
        elif not entry.name.startswith(TEMP_PREFIX):
            tally.files += 1
            tally.bytes += entry.size


# The target -----------------------------------------------------------------------------------------------------
class HomeFolderTarget:
    """Ensure-operations on home folders under the configured roots."""

    def __init__(self, name: str, roots: Mapping[str, FileRoot], *, policy: Policy | None = None) -> None:
        self.name = name
        self.roots = dict(roots)
        self.policy = policy or Policy()
        self._trees: dict[str, Tree] = {}

    def _tree(self, root: str) -> Tree:
        if root not in self._trees:
            config = self.roots[root]
            self._trees[root] = SmbTree(root, config) if config.kind == "smb" else LocalTree(Path(config.path))
        return self._trees[root]

    def close(self) -> None:
        for tree in self._trees.values():
            tree.close()
        self._trees.clear()

    # Entry point ----------------------------------------------------------------------------------------------
    def run(self, context: StepContext) -> StepResult:
        handler = {
            "create_home_folder": self.create,
            "move_home_folder": self.move,
            "archive_home_folder": self.archive,
            "delete_home_folder": self.delete,
        }.get(context.step.action)
        if handler is None:
            raise Permanent(f"files: {context.step.action} is not a home-folder action")
        try:
            return handler(context)
        except UnsafePath as exc:
            raise PolicyRefused(f"home folder refused: {exc}") from None
        except LinkRefused as exc:
            raise PolicyRefused(f"home folder refused: {exc}; links are never followed") from None
        except OSError as exc:
            what = f"home folder: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
            if exc.errno in _RETRYABLE_ERRNOS:
                raise Retryable(what) from None
            raise Permanent(what) from None

    # Helpers ----------------------------------------------------------------------------------------------------
    def _account(self, context: StepContext) -> Account | None:
        account = context.ad_account()
        if account is not None:
            self._check_protected(account)
        return account

    def _check_protected(self, account: Account) -> None:
        self.policy.check_account(account, what="its home folder is never touched")

    def _resolve(self, context: StepContext, text: str | None) -> HomePath | None:
        """The step's path (or the account's homeDirectory when ``text`` is None), checked; None if there is none."""
        if text is None:
            account = self._account(context)
            home = account.first("homeDirectory") if account is not None else None
            if not home:
                return None
            text = str(home)
        elif needs_account(text):
            account = self._account(context)
            text = expand_account_placeholders(text, account.attributes if account is not None else None)
        else:
            self._account(context)
            text = expand_account_placeholders(text, None)  # the second stage: doubled braces become text
        return resolve(text, self.roots)

    def _folder(self, path: HomePath) -> tuple[Tree, Entry | None]:
        tree = self._tree(path.root)
        if isinstance(tree, SmbTree):
            tree.check_no_links(path.parts)
        entry = tree.lstat(path.parts)
        if entry is not None and entry.kind == "link":
            raise LinkRefused(f"{path.display} is a link")
        if entry is not None and entry.kind != "dir":
            raise Permanent(f"{path.display} is a file, not a folder")
        return tree, entry

    def _check_owner(self, tree: Tree, path: HomePath, account: Account | None, what: str) -> None:
        """Refuse a folder holding files unless its owner or an explicit ACE is this person's SID.

        A reused name (a joiner called like a predecessor) or a ``homeDirectory`` pointing elsewhere must never
        hand over, move or delete someone else's files. An empty folder holds nothing of anyone's.
        """
        if not [e for e in tree.listdir(path.parts) if not (e.kind == "file" and e.name.startswith(TEMP_PREFIX))]:
            return
        if account is None:
            raise PolicyRefused(
                f"home folder refused: {path.display} holds files and no AD account proves they are this person's"
            )
        if not tree.belongs_to(path.parts, account):
            raise PolicyRefused(
                f"home folder refused: {path.display} holds files, and neither its owner nor an explicit ACE is "
                f"{account.dn} "
                f"({person_identity(account) or 'no SID'}): a predecessor's folder? Not {what}; check it, then replay"
            )

    # Actions ----------------------------------------------------------------------------------------------------
    def create(self, context: StepContext) -> StepResult:
        params = context.step.params
        path = self._resolve(context, params.get("path"))
        if path is None:
            return StepResult("unchanged", message="no home folder path (no homeDirectory and no path)")
        tree, entry = self._folder(path)
        access = str(params.get("grant", "full_control"))
        changes = [] if entry is not None else [Change("homeFolder", None, path.display)]
        account = self._account(context) if access != "none" else None
        if entry is not None and account is not None:
            self._check_owner(tree, path, account, "granted")
        if context.dry_run:
            if access != "none" and account is not None:
                changes.append(Change("homeFolderAccess", None, f"{access} for {account.first('sAMAccountName')}"))
            return StepResult(
                "dry_run" if changes else "unchanged", changes=changes, data={"home_directory": path.display}
            )
        if entry is None:
            _ensure_folders(tree, path.parts)
        if account is not None:
            granted = tree.grant(path.parts, account, access)
            if granted:
                changes.append(Change("homeFolderAccess", None, granted))
        return StepResult("changed" if changes else "unchanged", changes=changes, data={"home_directory": path.display})

    def move(self, context: StepContext) -> StepResult:
        params = context.step.params
        return self._relocate(context, params.get("source"), params.get("destination"), create_missing=True)

    def archive(self, context: StepContext) -> StepResult:
        params = context.step.params
        return self._relocate(context, params.get("source"), params.get("destination"), create_missing=False)

    def _relocate(
        self, context: StepContext, source_text: str | None, destination_text: str | None, *, create_missing: bool
    ) -> StepResult:
        if destination_text is None:
            return StepResult("unchanged", message="no destination (the path template's fields are absent)")
        destination = self._resolve(context, destination_text)
        assert destination is not None
        source = self._resolve(context, source_text)
        data: dict[str, Any] = {"home_directory": destination.display}
        same = source is not None and _same_place(source, destination, self.roots)
        dst_tree, dst_entry = self._folder(destination)
        if source is None or same:
            src_entry = None
            src_tree = dst_tree
        else:
            src_tree, src_entry = self._folder(source)
        if src_entry is None:
            if dst_entry is not None or not create_missing:
                message = "already in place" if dst_entry is not None else "no home folder to move"
                return StepResult("unchanged", message=message, data=data)
            if context.dry_run:
                return StepResult("dry_run", changes=[Change("homeFolder", None, destination.display)], data=data)
            _ensure_folders(dst_tree, destination.parts)
            return StepResult(
                "changed",
                changes=[Change("homeFolder", None, destination.display)],
                message="created (nothing to move)",
                data=data,
            )
        assert source is not None
        account = self._account(context)
        self._check_owner(src_tree, source, account, "moved")
        if dst_entry is not None:
            self._check_owner(dst_tree, destination, account, "merged into")
        change = Change("homeFolder", source.display, destination.display)
        tally = Tally()
        if context.dry_run:
            survey(src_tree, source.parts, tally)
            return StepResult(
                "dry_run", changes=[change], message=_summary("would move", tally), data={**data, **tally.as_dict()}
            )
        if source.root == destination.root and dst_entry is None:
            # Same share or mount: one rename, atomic (it either happened or not; a rerun sees which).
            _ensure_folders(dst_tree, destination.parts[:-1])
            dst_tree.rename(source.parts, destination.parts)
            return StepResult("changed", changes=[change], message="renamed in place", data=data)
        if account is not None:
            # Marked as this person's before anything is copied (again on a rerun: an ensure), so a resumed move
            # and a later delete of an archive find the person's own folder, never a stranger's.
            _ensure_folders(dst_tree, destination.parts)
            dst_tree.grant(destination.parts, account, "full_control")
        merge_tree(src_tree, source.parts, dst_tree, destination.parts, tally)
        return StepResult(
            "changed", changes=[change], message=_summary("moved", tally), data={**data, **tally.as_dict()}
        )

    def delete(self, context: StepContext) -> StepResult:
        path = self._resolve(context, context.step.params.get("path"))
        if path is None:
            return StepResult("unchanged", message="no home folder to delete")
        if not self.roots[path.root].allow_delete:
            raise PolicyRefused(f"home folder refused: deleting below the root {path.root!r} is not allowed")
        tree, entry = self._folder(path)
        if entry is None:
            return StepResult("unchanged", message=f"{path.display} does not exist")
        self._check_owner(tree, path, self._account(context), "deleted")
        tally = Tally()
        change = Change("homeFolder", path.display, None)
        if context.dry_run:
            survey(tree, path.parts, tally)
            return StepResult(
                "dry_run", changes=[change], message=_summary("would delete", tally), data=tally.as_dict()
            )
        delete_tree(tree, path.parts, tally)
        return StepResult("changed", changes=[change], message=_summary("deleted", tally), data=tally.as_dict())


def _same_place(a: HomePath, b: HomePath, roots: Mapping[str, FileRoot]) -> bool:
    if a.root != b.root:
        return False
    if roots[a.root].kind == "smb":
        return tuple(p.casefold() for p in a.parts) == tuple(p.casefold() for p in b.parts)
    return a.parts == b.parts


def _summary(verb: str, tally: Tally) -> str:
    text = f"{verb} {tally.files} files ({tally.bytes} bytes) in {tally.folders} folders"
    if tally.links:
        text += f", {tally.links} links (not followed)"
    if tally.already_moved:
        text += f"; {tally.already_moved} were already in place from an interrupted run"
    return text


def build(name: str, context: TargetContext) -> HomeFolderTarget:
    """The ``files`` target for a connection name (the roots are shared by every connection)."""
    settings = context.settings
    if not settings.file_roots:
        raise Permanent("a home-folder step is planned, but no roots are configured (set LIFECYCLE_FILE_ROOTS)")
    policy = Policy.from_safety(context.mapping.safety, context.plan_context.base_dn(name))
    return HomeFolderTarget(name, settings.file_roots, policy=policy)
