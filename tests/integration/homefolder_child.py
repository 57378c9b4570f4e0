"""A worker process for the kill-mid-move test: processes one message, optionally stopping mid-move to be killed.

Run as ``python -m tests.integration.homefolder_child`` with the config as JSON on standard input (not in a
file: it holds the test's secrets, and the suite's secret scan fails on any file that does). The config names
the settings, the file server's address (for the mapping), a clock offset (a rerun must find the killed
worker's message lock and journal lease expired, as it would minutes later), and where to stop: the N-th call
of an SMB operation writes a marker file and then blocks until the test kills the process with SIGKILL.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lifecycle.mapping.schema import load_mapping
from lifecycle.queue.embedded import EmbeddedQueue
from lifecycle.runtime import Runtime
from lifecycle.settings import Settings
from lifecycle.state.embedded import EmbeddedStore
from lifecycle.targets.files_smb import SmbTree
from lifecycle.worker import Worker
from tests.integration.test_homefolders_smb import build_mapping

ROOT = Path(__file__).resolve().parents[2]


def _stop_here(marker: Path) -> None:
    marker.write_text("stopped")
    threading.Event().wait()  # until SIGKILL


def _install_stop(method: str, after: int, marker: Path) -> None:
    original = getattr(SmbTree, method)
    calls = [0]

    def wrapper(self: SmbTree, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] < after:
            return original(self, *args, **kwargs)
        if method == "write_file":
            parts, chunks = args
            first = next(iter(chunks), b"")

            def then_stop() -> Iterator[bytes]:
                yield first[: len(first) // 2]
                _stop_here(marker)

            return original(self, parts, then_stop())
        _stop_here(marker)
        return None

    setattr(SmbTree, method, wrapper)


def main() -> int:
    config = json.loads(sys.stdin.read())
    settings = Settings(**config["settings"])
    offset = float(config.get("clock_offset", 0))

    def clock() -> float:
        return time.time() + offset

    runtime = Runtime(settings, mapping=build_mapping(load_mapping(ROOT / "mapping.example.toml"), config["host"]))
    runtime.__dict__["queue"] = EmbeddedQueue(
        settings.data_dir / "queue.sqlite3", max_deliveries=settings.max_deliveries, clock=clock
    )
    runtime.__dict__["store"] = EmbeddedStore(settings.data_dir / "store.sqlite3", clock=clock)
    stop = config.get("stop")
    if stop:
        _install_stop(stop["method"], int(stop["after"]), Path(stop["marker"]))
    worker = Worker(runtime, clock=clock)
    message = runtime.queue.receive(timeout=10)
    if message is None:
        print(json.dumps({"outcome": "no message"}))
        return 1
    result = worker.process_message(message)
    worker.close()
    runtime.close()
    print(json.dumps({"outcome": result.outcome, "reason": result.reason}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
