"""Structured logs that carry the work id, Halo user id and step on every line, never a secret; and telemetry.

The context lives in ``contextvars`` so every log line inside ``log_context(...)`` carries it without being
passed around. A filter replaces every configured secret value with ``***`` as a last line of defence:
secrets are never logged on purpose, and this catches the accidents (an exception text quoting a URL).

Telemetry (OpenTelemetry traces and metrics, exported to Application Insights by ``azure-monitor-opentelemetry``)
is on only when ``configure_telemetry`` finds ``APPLICATIONINSIGHTS_CONNECTION_STRING``; otherwise nothing is
imported and nothing is exported. When it is on:

- ``log_context(work_id=...)`` is a span ``lifecycle.work_item`` and ``log_context(step=...)`` a span
  ``lifecycle.step`` (the worker opens both), and every step's duration is recorded in the histogram
  ``lifecycle.step.duration`` (seconds);
- counters ``lifecycle.items.accepted``, ``lifecycle.items.processed`` (by ``outcome``),
  ``lifecycle.items.retried``, ``lifecycle.items.dead_lettered`` (parked or dead-lettered: the alert in
  ``infra/modules/alerts.bicep`` watches it) and ``lifecycle.items.stale_skipped`` (by ``lifecycle``);
- log records of the ``lifecycle`` logger go to Application Insights as traces with the context fields as
  custom dimensions.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("lifecycle_log_context", default={})  # noqa: B039

log = logging.getLogger("lifecycle")


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (work_id, user_id, step, ...) to every log line written inside the block.

    With telemetry on, a block that names a ``step`` (or else a ``work_id``) is also a trace span.
    """
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        telemetry = _telemetry
        if telemetry is None or not ({"step", "work_id"} & fields.keys()):
            yield
        else:
            with telemetry.span(fields, _context.get()):
                yield
    finally:
        _context.reset(token)


class _ContextFields(logging.Filter):
    """Copies the context fields onto each record, where handlers other than ours (OpenTelemetry's) see them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


_STANDARD_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _Redactor(logging.Filter):
    """Replaces configured secrets in the message, the traceback, the stack and every ``extra`` field.

    The traceback is formatted and redacted here, once, and the exception itself dropped from the record, so
    no handler (ours, OpenTelemetry's) can format it again from the raw exception and its secret.
    """

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def _scrub(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return self._clean(value)
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        if depth < 8 and isinstance(value, dict):
            return {self._scrub(k, depth + 1): self._scrub(v, depth + 1) for k, v in value.items()}
        if depth < 8 and isinstance(value, (list, tuple, set)):
            return [self._scrub(v, depth + 1) for v in value]
        text = str(value)
        return self._clean(text) if any(secret in text for secret in self.secrets) else value

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg, record.args = self._clean(record.getMessage()), None
        if record.exc_info:
            record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self._clean(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_RECORD_FIELDS and not key.startswith("_"):
                setattr(record, key, self._scrub(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context fields, and extras."""

    _standard = _STANDARD_RECORD_FIELDS

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
        elif record.exc_text:
            line["exception"] = record.exc_text  # already formatted (and redacted) by the redactor
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", secrets: Sequence[str] = (), stream: Any = None) -> None:
    """Send the package's logs as JSON lines to ``stream`` (stderr by default), secrets redacted."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_Redactor(secrets))
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False
    _redactors[:] = [_Redactor(secrets)]
    _redact_every_record()


_redactors: list[_Redactor] = []
_base_record_factory: Any = None


def _redact_every_record() -> None:
    """Redact each log record as it is made, whichever logger makes it.

    The handler's filter covers the service's own logger. The libraries' records (ldap3, msal, httpx, azure) go to
    the root logger's handlers instead, and in Azure Functions the host puts its own handler there, which would
    export a library line carrying a secret unmasked. A record factory runs for every logger before any handler
    sees the record, so nothing downstream can see the secret. Installed once; the secrets are the latest
    configured ones.
    """
    global _base_record_factory  # noqa: PLW0603 - the process-wide factory is wrapped once
    if _base_record_factory is not None:
        return
    _base_record_factory = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = _base_record_factory(*args, **kwargs)
        for redactor in _redactors:
            redactor.filter(record)
        return record

    logging.setLogRecordFactory(factory)


# Telemetry ---------------------------------------------------------------------------------------------------
CONNECTION_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
AUTHENTICATION_SETTING = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
SERVICE_NAME = "halo-lifecycle"
_SCOPE = "lifecycle"


@dataclass
class _Telemetry:
    """The tracer and the instruments, bound to whichever providers were configured."""

    tracer: Any
    accepted: Any
    processed: Any
    retried: Any
    dead_lettered: Any
    stale_skipped: Any
    step_duration: Any

    @contextmanager
    def span(self, fields: dict[str, Any], context: dict[str, Any]) -> Iterator[None]:
        from opentelemetry.trace import SpanKind

        is_step = "step" in fields
        attributes = {f"lifecycle.{k}": str(v) for k, v in context.items() if v is not None}
        started = time.perf_counter()
        outcome = "error"
        with self.tracer.start_as_current_span(
            "lifecycle.step" if is_step else "lifecycle.work_item", kind=SpanKind.INTERNAL, attributes=attributes
        ):
            try:
                yield
                outcome = "ok"
            finally:
                if is_step:
                    self.step_duration.record(
                        time.perf_counter() - started, {"step": str(fields["step"]), "result": outcome}
                    )


_telemetry: _Telemetry | None = None


def enable_telemetry(tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Start recording spans and metrics on the given providers (the global ones when None)."""
    global _telemetry  # noqa: PLW0603 - one process-wide switch, set once at start-up
    from opentelemetry import metrics, trace

    meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
    _telemetry = _Telemetry(
        tracer=trace.get_tracer(_SCOPE, tracer_provider=tracer_provider),
        accepted=meter.create_counter("lifecycle.items.accepted", unit="{item}", description="work items enqueued"),
        processed=meter.create_counter(
            "lifecycle.items.processed", unit="{item}", description="work items the worker finished, by outcome"
        ),
        retried=meter.create_counter(
            "lifecycle.items.retried", unit="{item}", description="work items backed off after a transient failure"
        ),
        dead_lettered=meter.create_counter(
            "lifecycle.items.dead_lettered", unit="{item}", description="work items dead-lettered with a reason"
        ),
        stale_skipped=meter.create_counter(
            "lifecycle.items.stale_skipped",
            unit="{item}",
            description="work items skipped because a newer event of the person was applied, by lifecycle",
        ),
        step_duration=meter.create_histogram(
            "lifecycle.step.duration", unit="s", description="time one step of a work item took"
        ),
    )


def disable_telemetry() -> None:
    """Stop recording (tests; nothing is exported after this)."""
    global _telemetry  # noqa: PLW0603
    _telemetry = None


def telemetry_enabled() -> bool:
    return _telemetry is not None


def _credential(authentication: str) -> Any:
    """The Entra credential that ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` names.

    The setting reads ``ClientId=<user-assigned identity>;Authorization=AAD``; None when it asks for no Entra auth.
    """
    parts = dict(p.split("=", 1) for p in authentication.split(";") if "=" in p)
    if parts.get("Authorization", "").upper() != "AAD":
        return None
    from azure.identity import ManagedIdentityCredential

    client_id = parts.get("ClientId") or None
    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()


def configure_telemetry(environ: dict[str, str] | None = None) -> bool:
    """Export traces, metrics and the ``lifecycle`` logs to Application Insights, if it is configured.

    Reads ``APPLICATIONINSIGHTS_CONNECTION_STRING`` (and ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` for
    Entra authentication with the managed identity). Without a connection string nothing is imported,
    nothing is exported, and False is returned. Call it once per process, after ``configure_logging``.
    """
    env = os.environ if environ is None else environ
    connection_string = env.get(CONNECTION_SETTING, "").strip()
    if not connection_string:
        return False
    if _telemetry is not None:
        return True
    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry.sdk.resources import Resource

    options: dict[str, Any] = {
        "connection_string": connection_string,
        "logger_name": log.name,
        "resource": Resource.create({"service.name": SERVICE_NAME}),
        # Nothing here serves web frameworks or databases; the HTTP clients (Graph, Halo) stay instrumented.
        "instrumentation_options": {name: {"enabled": False} for name in ("django", "fastapi", "flask", "psycopg2")},
    }
    credential = _credential(env.get(AUTHENTICATION_SETTING, ""))
    if credential is not None:
        options["credential"] = credential
    configure_azure_monitor(**options)
    for handler in log.handlers:
        handler.addFilter(_ContextFields())
        for redactor in _redactors:
            handler.addFilter(redactor)
    enable_telemetry()
    log.info("telemetry is exported to Application Insights")
    return True


def record_accepted(count: int) -> None:
    """Work items the ingress enqueued."""
    if _telemetry is not None and count:
        _telemetry.accepted.add(count)


def record_outcome(outcome: str) -> None:
    """One work item the worker finished: ``completed``, ``skipped``, ``refused``, ``retry``, ``dead_lettered``..."""
    telemetry = _telemetry
    if telemetry is None:
        return
    telemetry.processed.add(1, {"outcome": outcome})
    if outcome == "retry":
        telemetry.retried.add(1)
    elif outcome == "dead_lettered":
        telemetry.dead_lettered.add(1)


def record_stale_skip(lifecycle: str) -> None:
    """One work item skipped as a stale snapshot of its person (also audited)."""
    if _telemetry is not None:
        _telemetry.stale_skipped.add(1, {"lifecycle": lifecycle})
