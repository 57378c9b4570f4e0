"""Files that hold personal data or secrets (the embedded SQLite queue and store, ``.local/dev.env``) are
readable by their owner only: created 0600 in a folder created 0700, and tightened if an older version or a
hand left them wider. SQLite creates its ``-wal`` and ``-shm`` files with the mode of the database file.

Depends on nothing of ours.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

FILE_MODE = 0o600
FOLDER_MODE = 0o700


def private_folder(path: Path) -> Path:
    """Create ``path`` (and missing parents) 0700; an existing folder keeps its mode (it may be shared)."""
    path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    return path


def private_file(path: Path) -> Path:
    """Make sure ``path`` exists with mode 0600 (created so, or tightened), without changing its content."""
    private_folder(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists() and not sidecar.is_symlink() and stat.S_IMODE(sidecar.stat().st_mode) != FILE_MODE:
            os.chmod(sidecar, FILE_MODE)
    return path
