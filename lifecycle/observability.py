"""Structured logs that carry the work id, Halo user id and step on every line, and never a secret.

The context lives in ``contextvars`` so every log line inside ``log_context(...)`` carries it without being
passed around. A filter replaces every configured secret value with ``***`` as a last line of defence:
secrets are never logged on purpose, and this catches the accidents (an exception text quoting a URL).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("lifecycle_log_context", default={})  # noqa: B039

log = logging.getLogger("lifecycle")


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (work_id, user_id, step, ...) to every log line written inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class _Redactor(logging.Filter):
    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context fields, and extras."""

    _standard = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_context.get(),
        }
        for key, value in vars(record).items():
            if key not in self._standard and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            # Tracebacks go to the operator's log only, never to an HTTP caller.
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", secrets: Sequence[str] = (), stream: Any = None) -> None:
    """Send the package's logs as JSON lines to ``stream`` (stderr by default), secrets redacted."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_Redactor(secrets))
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False
