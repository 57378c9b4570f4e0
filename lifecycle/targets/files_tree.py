"""A folder tree the home-folder steps work on, whatever holds it, and the resumable moves and deletes over it.

``Tree`` is what the algorithms need of one root; ``files_local`` (a mounted path) and ``files_smb`` (a share)
implement it, and ``homefolders`` (the ``files`` target) runs the algorithms on them. Kept apart because the
algorithms change with what a move promises (resumable, idempotent, never through a link), the trees with how
a file system is reached.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from lifecycle import deadline
from lifecycle.errors import Permanent, Retryable
from lifecycle.targets.files_actions import TEMP_PREFIX

if TYPE_CHECKING:
    from lifecycle.targets.ad_model import Account

CHUNK = 1024 * 1024
# A move or delete stops when less than this is left of the invocation: room for one more large file.
FILE_TIME_MARGIN_SECONDS = 30.0
# A copy stops between two chunks when less than this is left (one more chunk, then flushing what was written).
CHUNK_TIME_MARGIN_SECONDS = 10.0

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


def person_identity(account: Account) -> str | None:
    """The person's SID (else objectGUID) as text: what an ACE or an owner mark names."""
    for name in ("objectSid", "objectGUID"):
        value = account.first(name)
        if isinstance(value, str) and value:
            return value
    return None


def temp_name(name: str) -> str:
    """The temporary name a file is copied to; fixed length, so a 255-character name still fits."""
    return TEMP_PREFIX + hashlib.sha256(name.encode("utf-8")).hexdigest()[:24]


def _digest(tree: Tree, parts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for chunk in tree.read_chunks(parts):
        digest.update(chunk)
    return digest.hexdigest()


def ensure_folders(tree: Tree, parts: Sequence[str]) -> bool:
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
    if ensure_folders(dst, dp):
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
