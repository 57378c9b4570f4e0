"""Provisioned directories: the marker, relocating a copied template, copying and installing."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Final

from lifecycle.local.samba.base import _MAX_SOCKET_PATH, FORMAT_VERSION, MARKER_FILE, SambaDCError, _write_private

logger = logging.getLogger("lifecycle.local.samba")  # one logger name for the whole harness, as before

# --------------------------------------------------------------------------------------------------
# Provisioned directories: marker, relocation, copying.

_PARTIAL_PREFIX: Final = ".samba-build-"


def _read_marker(directory: Path) -> dict[str, Any] | None:
    """Returns the marker of a completely provisioned directory, or None."""
    try:
        data = json.loads((directory / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        return None
    return data


def _write_marker(directory: Path, marker: dict[str, Any]) -> None:
    _write_private(directory / MARKER_FILE, json.dumps(marker, indent=2, sort_keys=True) + "\n")


def _make_partial(parent: Path) -> Path:
    # Short on purpose: a template is started inside its partial directory, and Samba's unix sockets
    # live under it (sun_path is limited to 107 characters).
    return Path(tempfile.mkdtemp(dir=parent, prefix=f"{_PARTIAL_PREFIX}{os.getpid()}-"))


def _remove_stale_partials(parent: Path) -> None:
    """Removes half-built directories left in ``parent`` by processes that no longer exist."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            if not entry.name.startswith(_PARTIAL_PREFIX):
                continue
            pid_text = entry.name[len(_PARTIAL_PREFIX) :].split("-", 1)[0]
            if not pid_text.isdigit() or int(pid_text) == os.getpid():
                continue
            try:
                os.kill(int(pid_text), 0)
            except ProcessLookupError:
                logger.info("removing %s, left half-built by process %s", entry, pid_text)
                shutil.rmtree(entry, ignore_errors=True)
            except PermissionError:
                pass  # alive, owned by someone else


def _check_socket_paths(directory: Path) -> None:
    longest = max(
        len(str(directory / "private" / "ldap_priv" / "ldapi")),
        len(str(directory / "msg.sock" / "4194304")),  # largest possible pid
    )
    if longest > _MAX_SOCKET_PATH:
        raise SambaDCError(
            f"{directory} is too long for Samba's unix sockets ({longest} > {_MAX_SOCKET_PATH} characters); "
            "use a shorter directory"
        )


def _rewrite_smb_conf(directory: Path, old_root: str, host: str) -> None:
    """Points ``etc/smb.conf`` at ``directory`` (it was written for ``old_root``) and at ``host``.

    smb.conf is the only file of a provisioned directory that holds absolute paths (checked by
    grepping a provisioned and started copy), so relocating a directory means rewriting it.
    """
    conf = directory / "etc" / "smb.conf"
    new_root = str(directory)
    lines = []
    for original in conf.read_text().splitlines(keepends=True):
        key, sep, value = original.partition("=")
        name, value = key.strip().lower(), value.strip()
        line = original
        if sep and name == "interfaces":
            # "address/8": Samba only binds a bare address if an interface carries it, and lo
            # carries just 127.0.0.1, while the whole 127/8 is local to it.
            line = f"{key}= {host}/8\n"
        elif sep and (value == old_root or value.startswith(old_root + "/")):
            line = f"{key}= {new_root}{value[len(old_root) :]}\n"
        lines.append(line)
    fd, tmp = tempfile.mkstemp(dir=conf.parent, prefix=".smb.conf.")
    with os.fdopen(fd, "w") as handle:
        handle.writelines(lines)
    os.chmod(tmp, 0o644)
    os.replace(tmp, conf)


def _copy_provisioned(source: Path, destination: Path) -> None:
    """Copies a stopped provisioned directory, leaving out the runtime state of its last run."""
    runtime_top = {"msg.sock", "msg.lock", "log", "run"}

    def ignore(directory: str, names: list[str]) -> set[str]:
        ignored = set(names) & runtime_top if Path(directory) == source else set()
        for name in names:
            mode = os.lstat(os.path.join(directory, name)).st_mode
            if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
                ignored.add(name)  # ldapi sockets: recreated by samba, and not copyable anyway
        return ignored

    # copy2 keeps the xattrs (sysvol's NT ACLs) and modes (private/ is 0700, key.pem 0600).
    shutil.copytree(source, destination, symlinks=True, ignore=ignore, dirs_exist_ok=True)
    for name in ("log", "run"):
        (destination / name).mkdir(exist_ok=True)


def _install(partial: Path, directory: Path) -> None:
    """Renames a finished ``partial`` into place, so that ``directory`` is never half-provisioned."""
    try:
        # rename(2) also replaces an empty directory (such as one a test framework made for us).
        os.rename(partial, directory)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or _read_marker(directory) is None:
            raise SambaDCError(f"cannot move the provisioned directory into place at {directory}: {exc}") from exc
        # Another process provisioned the same directory first; theirs is as good as ours.
        logger.info("%s was provisioned concurrently by another process; using that", directory)


def _pid_file_holder(directory: Path) -> int | None:
    """Returns the pid of a samba running from ``directory`` (it holds a lock on its pid file)."""
    pid_file = directory / "run" / "samba.pid"
    try:
        fd = os.open(pid_file, os.O_RDWR)
    except OSError:
        return None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
