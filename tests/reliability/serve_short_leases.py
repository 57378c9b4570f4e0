"""``lifecycle serve`` with short message locks and step leases, for the crash-recovery test.

Usage: ``python -m tests.reliability.serve_short_leases LOCK_SECONDS LEASE_SECONDS [serve arguments]``.

A killed worker's messages come back when their lock expires and its in-progress steps are taken over when
their lease runs out. The shipped values (60 s and 120 s) exercise exactly the same code paths, only minutes
more slowly; the test shortens them so that a dozen kills fit in a CI run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    lock_seconds, lease_seconds, *serve_args = argv
    import lifecycle.steps
    from lifecycle.queue import embedded

    lifecycle.steps.STEP_LEASE_SECONDS = float(lease_seconds)
    original = embedded.EmbeddedQueue.__init__

    def init(self: embedded.EmbeddedQueue, path: Path, **options: Any) -> None:
        options["lock_seconds"] = float(lock_seconds)
        original(self, path, **options)

    embedded.EmbeddedQueue.__init__ = init  # type: ignore[method-assign]
    from lifecycle.cli import main as cli

    return cli(["serve", *serve_args])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
