"""The secret scan itself: it finds a planted secret in a log line and in a file, and it is switched on."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from ldap3.utils import log as ldap3_log

from lifecycle import observability
from lifecycle.observability import configure_logging, log
from tests.reliability import secret_scan
from tests.reliability.secret_scan import HANDLER, LIBRARY_LOGGERS, SCANNER, CapturingHandler, SecretScanner


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
    assert logging.getLogger().handlers[0] is HANDLER
    assert all(logging.getLogger(name).getEffectiveLevel() <= logging.DEBUG for name in LIBRARY_LOGGERS)
    assert {"basic-secret-value", "hmac-secret-value"} <= SCANNER.secrets
    lines = SCANNER.lines
    log.debug("the scan sees this line")
    assert SCANNER.lines == lines + 1


# Loggers a secret could travel through, as the code under test names them: the service's own, and the
# libraries' (their records reach the root logger's handlers); ldap3 also through its own log function.
THROUGH = ("lifecycle", "lifecycle.graph", "ldap3", "msal.application", "httpx", "azure.servicebus", "azure.identity")


def test_a_secret_logged_at_debug_through_any_logger_is_seen_by_the_scan_and_redacted_by_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configured, missed = "through-every-logger-0123", "a-secret-the-service-missed-4567"
    scanner = SecretScanner()
    scanner.register([configured, missed])
    monkeypatch.setattr(HANDLER, "scanner", scanner)  # this test's findings must not fail the session
    monkeypatch.setattr(log, "handlers", list(log.handlers))  # configure_logging rewrites these in place
    monkeypatch.setattr(log, "propagate", log.propagate)
    monkeypatch.setattr(observability, "_redactors", list(observability._redactors))
    level = log.level
    service_log = io.StringIO()
    try:
        # As a service process starts: its logging configured with the secrets it knows...
        configure_logging("DEBUG", [configured], stream=service_log)
        secret_scan.attach()  # ...and the scan attached again, as before every test
        for secret in (configured, missed):
            for name in THROUGH:
                logging.getLogger(name).debug("connecting with %s", secret)
            ldap3_log.log(ldap3_log.ERROR, "bind failed with %s", secret)  # ldap3's own way, at its DEBUG level
            logging.getLogger("another.library").warning("retrying with %s", secret)  # any logger, at the root
    finally:
        log.setLevel(level)
    # A secret it does not know (a redaction bug) is seen by the scan on every logger, each line once; the one it
    # knows is masked on every logger, the libraries' included (the Functions host exports what reaches the root
    # logger), so it adds no finding: the count below holds only the missed secret's lines.
    for name in (*THROUGH, "another.library"):
        assert any(f"a log line of {name} (" in finding for finding in scanner.findings), (name, scanner.findings)
    assert sum("a log line of ldap3 (DEBUG)" in finding for finding in scanner.findings) == 2
    assert len(scanner.findings) == len(THROUGH) + 2  # each line once, though it reached two of its handlers
    written = service_log.getvalue()
    assert configured not in written
    assert written.count("connecting with ***") == 2
