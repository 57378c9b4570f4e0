"""The suite's secret scan: every log line written during the tests, and every file the tests leave in their
temporary directories, is searched for every secret value any test configured. One hit fails the session.

``tests/conftest.py`` registers the secrets of every ``Settings`` it builds (``make_settings``), keeps a
capturing handler on the ``lifecycle`` logger and on the root logger (put back whenever ``configure_logging``
replaced it), with the libraries that talk to the targets (ldap3, msal, httpx, azure) at DEBUG, and scans
the files at the end (a subprocess's output is scanned in the ``.log`` file a test sends it to). The scan
looks at what the code wrote, before the log redaction of the service's own handler: a secret must never
reach a log call, not merely be masked afterwards. That is why the handler goes first: the redaction
rewrites the record it filters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from lifecycle.local.samba import MARKER_FILE
from lifecycle.observability import JsonFormatter, log

# Shorter values would match by accident (and no configured secret is this short).
MIN_SECRET_LENGTH = 8
# Files larger than this are not read (none of the suite's own files comes near it).
MAX_FILE_BYTES = 256 * 1024 * 1024
# What the service writes: its SQLite queue and store (the audit trail, the journal, the queued work items)
# and logs (a test sends a service process's output to a .log file). Test harness files (settings handed to
# a child process, stand-ins' own state) are not the service's writing and may hold test credentials.
SERVICE_FILES = (".log", ".jsonl", ".sqlite3", ".sqlite3-wal", ".sqlite3-journal")


class SecretScanner:
    """Collects configured secrets and reports where one was written. Findings never quote the secret."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.findings: list[str] = []
        self.lines = 0
        self.files = 0

    def register(self, values: Iterable[str]) -> None:
        self.secrets.update(v for v in values if len(v) >= MIN_SECRET_LENGTH)

    def scan_text(self, where: str, text: str) -> None:
        for secret in self.secrets:
            if secret in text:
                self.findings.append(f"{where}: holds a configured secret ({len(secret)} characters)")

    def scan_files(self, base: Path) -> None:
        """Every log and service data file below ``base``, except a Samba server's own."""
        patterns = [(s, s.encode("utf-8"), s.encode("utf-16-le")) for s in self.secrets]
        for folder, directories, names in os.walk(base):
            if {MARKER_FILE, "smb.conf"} & set(names) or Path(folder).name == "private":
                directories[:] = []  # a Samba server's own directory: its secrets are its own
                continue
            for name in names:
                path = Path(folder) / name
                if path.is_symlink() or not path.is_file() or not name.endswith(SERVICE_FILES):
                    continue
                if path.stat().st_size > MAX_FILE_BYTES:
                    continue
                data = path.read_bytes()
                self.files += 1
                for secret, utf8, utf16 in patterns:
                    if utf8 in data or utf16 in data:
                        self.findings.append(f"{path}: holds a configured secret ({len(secret)} characters)")


class CapturingHandler(logging.Handler):
    """Formats each record as the service would (JSON, traceback included) and scans it."""

    def __init__(self, scanner: SecretScanner) -> None:
        super().__init__(logging.DEBUG)
        self.scanner = scanner
        self.setFormatter(JsonFormatter())
        self._last: logging.LogRecord | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record is self._last:
            return  # the same record again: it propagated from a logger the handler is on to the root
        self._last = record
        try:
            text = self.format(record)
        except Exception:  # a broken log call is the caller's bug, not a leak
            return
        self.scanner.lines += 1
        self.scanner.scan_text(f"a log line of {record.name} ({record.levelname})", text)


SCANNER = SecretScanner()
HANDLER = CapturingHandler(SCANNER)


# The libraries that carry credentials to the targets: the DC (ldap3), Entra ID (msal), Graph and Halo
# (httpx), Service Bus, Table storage and Key Vault (azure). Their records reach the root logger's handlers.
LIBRARY_LOGGERS = ("ldap3", "msal", "httpx", "azure")


def attach() -> None:
    """Put the capturing handler first on the ``lifecycle`` and root loggers (again, if ``configure_logging``
    replaced it), and set ``lifecycle`` and the library loggers to DEBUG."""
    for logger in (log, logging.getLogger()):
        if logger.handlers[:1] != [HANDLER]:
            if HANDLER in logger.handlers:
                logger.removeHandler(HANDLER)
            logger.handlers.insert(0, HANDLER)  # before the service's handler, whose redaction rewrites records
    for logger in (log, *(logging.getLogger(name) for name in LIBRARY_LOGGERS)):
        if logger.level == logging.NOTSET or logger.level > logging.DEBUG:
            logger.setLevel(logging.DEBUG)
    # ldap3 logs only at the detail level it is given, at its own activation level: its errors, at DEBUG.
    from ldap3.utils import log as ldap3_log

    ldap3_log.set_library_log_activation_level(logging.DEBUG)
    if ldap3_log.get_library_log_detail_level() < ldap3_log.ERROR:
        ldap3_log.set_library_log_detail_level(ldap3_log.ERROR)
