"""A home-folder root on a locally mounted path: the ``os`` module with directory file descriptors, walked one
component at a time with ``O_NOFOLLOW`` (a link anywhere is refused, never followed)."""

from __future__ import annotations

import errno
import os
import stat as stat_module
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle.errors import Permanent
from lifecycle.targets.files_tree import CHUNK, Entry, EntryKind, LinkRefused, person_identity

if TYPE_CHECKING:
    from lifecycle.targets.ad_model import Account

# On a local root, the extended attribute naming whose folder it is (set when the service grants access).
OWNER_XATTR = "user.lifecycle.owner"

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
