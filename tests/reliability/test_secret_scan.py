"""The secret scan itself: it finds a planted secret in a log line and in a file, and it is switched on."""

from __future__ import annotations

import logging
from pathlib import Path

from lifecycle.observability import log
from tests.reliability.secret_scan import HANDLER, SCANNER, CapturingHandler, SecretScanner


def test_a_secret_in_a_log_line_or_a_file_is_found_and_not_repeated_in_the_finding(tmp_path: Path) -> None:
    scanner = SecretScanner()
    scanner.register(["planted-secret-0123", "short"])
    assert scanner.secrets == {"planted-secret-0123"}  # too short to be told from ordinary text
    logger = logging.getLogger("secret-scan-self-test")
    handler = CapturingHandler(scanner)
    logger.addHandler(handler)
    try:
        logger.error("bind failed for %s", "planted-secret-0123")
        logger.error("nothing to see here")
    finally:
        logger.removeHandler(handler)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "store.sqlite3").write_bytes(b"\x00binary planted-secret-0123\x00")
    (tmp_path / "data" / "wide.log").write_bytes("planted-secret-0123".encode("utf-16-le"))
    (tmp_path / "dc" / "private").mkdir(parents=True)
    (tmp_path / "dc" / "private" / "secrets.log").write_text("planted-secret-0123")  # a DC's own: skipped
    (tmp_path / "child-settings.json").write_text("planted-secret-0123")  # a test's harness file: not scanned
    scanner.scan_files(tmp_path)
    assert len(scanner.findings) == 3
    assert not any("planted-secret-0123" in finding for finding in scanner.findings)
    assert sum("store.sqlite3" in f or "wide.log" in f for f in scanner.findings) == 2


def test_the_session_scan_is_on_and_knows_the_suites_secrets() -> None:
    assert HANDLER in log.handlers and log.getEffectiveLevel() <= logging.DEBUG
    assert {"basic-secret-value", "hmac-secret-value"} <= SCANNER.secrets
    lines = SCANNER.lines
    log.debug("the scan sees this line")
    assert SCANNER.lines == lines + 1
