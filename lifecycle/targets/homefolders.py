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

One target instance per worker thread; SMB connections are pooled per instance and closed by ``close``. The trees
(``files_local``, ``files_smb``) and the moves and deletes over them (``files_tree``) are modules of their own.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from lifecycle.targets.files_local import LocalTree
from lifecycle.targets.files_smb import SmbTree
from lifecycle.targets.files_tree import (
    Entry,
    LinkRefused,
    Tally,
    Tree,
    delete_tree,
    ensure_folders,
    merge_tree,
    person_identity,
    survey,
)

if TYPE_CHECKING:
    from lifecycle.targets import TargetContext
    from lifecycle.targets.ad_model import Account

_RETRYABLE_ERRNOS = {errno.ENOSPC, errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.EAGAIN, errno.EBUSY}


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
            ensure_folders(tree, path.parts)
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
            ensure_folders(dst_tree, destination.parts)
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
            ensure_folders(dst_tree, destination.parts[:-1])
            dst_tree.rename(source.parts, destination.parts)
            return StepResult("changed", changes=[change], message="renamed in place", data=data)
        if account is not None:
            # Marked as this person's before anything is copied (again on a rerun: an ensure), so a resumed move
            # and a later delete of an archive find the person's own folder, never a stranger's.
            ensure_folders(dst_tree, destination.parts)
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
