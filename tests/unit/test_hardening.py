"""Issue 14 hardening: log redaction reaches tracebacks and ``extra`` fields, and the files holding personal
data or secrets are owner-only. Each test failed on the code before (the traceback and the extra field printed
the secret; SQLite files were created with the process umask, 0644 here; a stale ``dev.env.tmp`` kept 0644).
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle.local.dev import write_env_file
from lifecycle.observability import configure_logging, log
from lifecycle.queue.embedded import EmbeddedQueue
from lifecycle.state.embedded import EmbeddedStore

SECRET = "hunter2-but-longer"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("DEBUG", secrets=[SECRET], stream=stream)
    yield stream
    configure_logging("INFO", secrets=[])


def test_a_secret_in_a_traceback_or_an_extra_field_is_redacted(lines: io.StringIO) -> None:
    def connect(password: str) -> None:
        raise ConnectionError(f"cannot bind with {password}")

    try:
        connect(SECRET)
    except ConnectionError:
        log.exception("bind failed", extra={"url": f"ldaps://u:{SECRET}@dc", "nested": {"k": [SECRET, 3]}})
    log.info("stack", stack_info=True, extra={"error": ValueError(SECRET)})
    output = lines.getvalue()
    assert SECRET not in output
    first, second = (json.loads(line) for line in output.splitlines())
    assert "cannot bind with ***" in first["exception"] and "Traceback" in first["exception"]
    assert first["url"] == "ldaps://u:***@dc" and first["nested"] == {"k": ["***", 3]}
    assert second["error"] == "***" and "stack" in second


def test_a_record_seen_by_another_handler_after_ours_carries_no_raw_exception(lines: io.StringIO) -> None:
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    collector = Collect()
    log.addHandler(collector)  # after ours, as OpenTelemetry's is
    try:
        try:
            raise RuntimeError(SECRET)
        except RuntimeError:
            log.exception("boom")
    finally:
        log.removeHandler(collector)
    (record,) = seen
    assert record.exc_info is None and SECRET not in (record.exc_text or "")
    assert SECRET not in logging.Formatter().format(record)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_sqlite_files_are_owner_only_even_when_they_existed_wider(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        wide = tmp_path / "old" / "store.sqlite3"
        wide.parent.mkdir()
        wide.touch(mode=0o644)
        os.chmod(wide, 0o644)
        store = EmbeddedStore(wide)
        fresh = EmbeddedStore(tmp_path / "new" / "store.sqlite3")
        queue = EmbeddedQueue(tmp_path / "q" / "queue.sqlite3")
        try:
            for path in (wide, tmp_path / "new" / "store.sqlite3", tmp_path / "q" / "queue.sqlite3"):
                assert _mode(path) == 0o600, path
                for sidecar in path.parent.glob(path.name + "-*"):
                    assert _mode(sidecar) == 0o600, sidecar
            assert _mode(tmp_path / "new") == 0o700
        finally:
            store.close()
            fresh.close()
            queue.close()
    finally:
        os.umask(old_umask)


def test_dev_env_is_owner_only_even_over_a_stale_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / ".local" / "dev.env"
    target.parent.mkdir()
    stale = target.with_suffix(".tmp")
    stale.write_text("old")
    os.chmod(stale, 0o644)
    write_env_file(target, {"LIFECYCLE_AD_PASSWORD": SECRET})
    assert _mode(target) == 0o600 and SECRET in target.read_text()
