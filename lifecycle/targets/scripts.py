"""Custom scripts (system ``script``): allow-listed Python callables and signed HTTPS webhooks.

Exactly once: ``run_script`` is ``once_only``, so the worker's journal runs it at most once per work item and
step, however often the item is delivered or replayed. When a worker dies after claiming the step, nobody can
tell whether the script ran: the next delivery is dead-lettered with that reason instead of running it again,
and an operator decides with ``lifecycle journal release`` (see docs/homefolders-and-scripts.md). A call whose
outcome is unknown (a webhook that timed out after the request was sent, a callable that did not return in
time) is treated the same way (``OutcomeUnknown``).

Failures are classified by the script's result: ``{"status": "retry"}``, HTTP 408/429/5xx (``Retry-After``
honoured), connection failures and ``OSError``/``TimeoutError`` from a callable are retried; ``"fail"``,
other 4xx and other exceptions are permanent. Output goes to the audit with every configured secret redacted.

The webhook request: ``POST`` of a JSON body (script, work id, step, event, args, sent_at) with
``X-Lifecycle-Signature: sha256=<hex HMAC-SHA256 of the raw body>``, ``X-Lifecycle-Timestamp`` (also inside
the signed body as ``sent_at``) and ``Idempotency-Key: <work id>/<step>``. A receiver checks the signature
over the raw bytes in constant time and refuses stale timestamps.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import importlib.util
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from lifecycle import deadline
from lifecycle.errors import OutcomeUnknown, Permanent, PolicyRefused, Retryable, Unfinished
from lifecycle.protection import Policy
from lifecycle.state import Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.script_actions import ScriptEntry

if TYPE_CHECKING:
    import httpx

    from lifecycle.targets import TargetContext

MAX_OUTPUT_CHARS = 4000
SIGNATURE_HEADER = "X-Lifecycle-Signature"
TIMESTAMP_HEADER = "X-Lifecycle-Timestamp"
_SECRET_KEYS = re.compile(r"(passw|secret|token|apikey|api_key|credential|sig)", re.IGNORECASE)
Script = Callable[[dict[str, Any], dict[str, Any]], Any]


def sign(secret: str, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """Constant-time check of a signature header over the raw body (for receivers and tests)."""
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` with every secret string replaced and the values of secret-looking keys hidden."""
    words = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def scrub(item: Any) -> Any:
        if isinstance(item, str):
            for word in words:
                item = item.replace(word, "***")
            return item
        if isinstance(item, Mapping):
            return {str(k): "***" if _SECRET_KEYS.search(str(k)) else scrub(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [scrub(v) for v in item]
        return item

    return scrub(value)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ScriptTarget:
    """Runs allow-listed scripts. One instance per worker thread."""

    def __init__(
        self,
        name: str,
        allow_list: Mapping[str, ScriptEntry],
        *,
        scripts_dir: Path,
        secrets: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        policy: Policy | None = None,
    ) -> None:
        self.name = name
        # The same protection check as AD and home folders (lifecycle.protection), not adminCount alone.
        self.policy = policy or Policy()
        self.allow_list = dict(allow_list)
        self.scripts_dir = scripts_dir
        self._secrets = [*secrets, *(e.secret_value() for e in self.allow_list.values())]
        self._clock = clock
        self._callables: dict[str, Script] = {}
        self._http: httpx.Client | None = None
        self._http_ca: Path | None = None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    # Entry point ------------------------------------------------------------------------------------------
    def run(self, context: StepContext) -> StepResult:
        name = str(context.step.params.get("script", ""))
        entry = self.allow_list.get(name)
        if entry is None:
            raise PolicyRefused(f"script {name!r} is not on the allow-list (LIFECYCLE_SCRIPTS): it was not run")
        account = context.ad_account()
        self.policy.check_account(account, what="scripts are not run for it")
        args = dict(context.step.params.get("args") or {})
        change = Change("script", None, name)
        if context.dry_run:
            return StepResult("dry_run", changes=[change], message=f"would run {entry.kind} script {name}")
        event = {
            "work_id": context.item.work_id,
            "step": context.step.key,
            "lifecycle": context.item.lifecycle,
            "event": context.item.event.model_dump(mode="json"),
            "dn": account.dn if account is not None else None,
        }
        if context.resume is not None and "status_url" in context.resume:
            # An earlier attempt's request was accepted and it stopped polling at its deadline: poll on.
            status, output, retry_after = self._poll_status(
                name, entry, str(context.resume["status_url"]), float(context.resume.get("poll_until", 0))
            )
        elif entry.kind == "python":
            status, output, retry_after = self._run_python(name, entry, event, args)
        else:
            status, output, retry_after = self._run_webhook(name, entry, event, args)
        shown = self._shown(output)
        if status == "retry":
            raise Retryable(f"script {name} asks to be retried: {shown}", retry_after=retry_after)
        if status == "fail":
            raise Permanent(f"script {name} failed: {shown}")
        return StepResult(
            "changed",
            changes=[change],
            message=f"script {name} ran: {shown}" if shown else f"script {name} ran",
            data={"script": name, "output": redact(output, self._secrets)},
        )

    def _shown(self, output: Any) -> str:
        if output is None or output == "":
            return ""
        text = output if isinstance(output, str) else json.dumps(output, default=str, ensure_ascii=False)
        text = str(redact(text, self._secrets))
        if isinstance(output, Mapping):
            text = json.dumps(redact(output, self._secrets), default=str, ensure_ascii=False)
        return text if len(text) <= MAX_OUTPUT_CHARS else text[:MAX_OUTPUT_CHARS] + "... (truncated)"

    # Python callables ---------------------------------------------------------------------------------------
    def _callable(self, target: str) -> Script:
        if target not in self._callables:
            module_name, _, function = target.partition(":")
            module = self._module(module_name)
            found = getattr(module, function, None)
            if not callable(found):
                raise Permanent(f"script target {target}: {module_name} has no function {function}")
            self._callables[target] = found
        return self._callables[target]

    def _module(self, module_name: str) -> ModuleType:
        path = self.scripts_dir / (module_name.replace(".", "/") + ".py")
        if path.is_file():
            # A private module name: a script file never shadows or replaces an installed module.
            qualified = f"lifecycle_scripts.{module_name}"
            if qualified in sys.modules:
                return sys.modules[qualified]
            spec = importlib.util.spec_from_file_location(qualified, path)
            if spec is None or spec.loader is None:
                raise Permanent(f"script module {path} cannot be loaded")
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                raise Permanent(f"script module {path} failed to load: {type(exc).__name__}: {exc}") from None
            sys.modules[qualified] = module
            return module
        try:
            return importlib.import_module(module_name)
        except ImportError as exc:
            raise Permanent(
                f"script module {module_name} is neither in {self.scripts_dir} nor installed ({exc})"
            ) from None

    def _run_python(
        self, name: str, entry: ScriptEntry, event: dict[str, Any], args: dict[str, Any]
    ) -> tuple[str, Any, float | None]:
        function = self._callable(entry.target)
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["value"] = function(event, args)
            except BaseException as exc:  # handed to the worker thread below, classified there
                box["error"] = exc

        # A daemon thread, so that a script that never returns cannot hold the worker (and its message lock)
        # forever; if it does not return in time its outcome is unknown and the step waits for an operator.
        thread = threading.Thread(target=call, name=f"script-{name}", daemon=True)
        thread.start()
        thread.join(entry.timeout_seconds)
        if thread.is_alive():
            raise OutcomeUnknown(
                f"script {name} did not return within {entry.timeout_seconds:g} s and may still be running"
            )
        error = box.get("error")
        if error is not None:
            if isinstance(error, (Retryable, Permanent)):
                raise error
            text = str(redact(f"{type(error).__name__}: {error}", self._secrets))
            if isinstance(error, (TimeoutError, ConnectionError, OSError)):
                raise Retryable(f"script {name} raised {text}")
            raise Permanent(f"script {name} raised {text}")
        return _classify_result(name, box.get("value"))

    # Webhooks -----------------------------------------------------------------------------------------------
    def _client(self, entry: ScriptEntry) -> httpx.Client:
        import ssl

        import httpx

        if self._http is None or self._http_ca != entry.ca_file:
            self.close()
            context = ssl.create_default_context(cafile=str(entry.ca_file) if entry.ca_file else None)
            self._http = httpx.Client(verify=context, follow_redirects=False, trust_env=False)
            self._http_ca = entry.ca_file
        return self._http

    def _run_webhook(
        self, name: str, entry: ScriptEntry, event: dict[str, Any], args: dict[str, Any]
    ) -> tuple[str, Any, float | None]:
        import httpx

        secret = entry.secret_value()
        if not secret:
            raise Permanent(f"script {name}: its signing secret is empty (set secret or {entry.secret_env})")
        now = self._clock()
        key = f"{event['work_id']}/{event['step']}"
        body = json.dumps(
            {**event, "script": name, "args": args, "sent_at": datetime.fromtimestamp(now, UTC).isoformat()},
            separators=(",", ":"),
            sort_keys=True,
            default=str,
        ).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, body),
            TIMESTAMP_HEADER: str(int(now)),
            "Idempotency-Key": key,
            "User-Agent": "halo-lifecycle",
        }
        timeout = httpx.Timeout(entry.timeout_seconds, connect=min(10.0, entry.timeout_seconds))
        client = self._client(entry)
        try:
            response = client.post(entry.target, content=body, headers=headers, timeout=timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise Retryable(f"script {name}: cannot reach the endpoint ({type(exc).__name__})") from None
        except (httpx.WriteError, httpx.WriteTimeout) as exc:
            raise Retryable(f"script {name}: the request could not be sent ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            # Sent, but no answer: the job may have started. Retried only where the endpoint dedupes.
            if entry.retry_on_timeout:
                raise Retryable(
                    f"script {name}: no answer ({type(exc).__name__}); retrying with the same key"
                ) from None
            raise OutcomeUnknown(
                f"script {name}: the request was sent but no answer came ({type(exc).__name__}); it may have run"
            ) from None
        status = response.status_code
        if status in {408, 429} or status >= 500:
            raise Retryable(
                f"script {name}: the endpoint answered {status}",
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        if not 200 <= status < 300:
            detail = str(redact(response.text[:500], self._secrets))
            raise Permanent(f"script {name}: the endpoint answered {status}: {detail}")
        payload = _json_or_text(response)
        if status == 202 and entry.poll:
            return self._poll(name, entry, response, payload)
        return _classify_result(name, payload)

    def _poll(
        self, name: str, entry: ScriptEntry, response: httpx.Response, payload: Any
    ) -> tuple[str, Any, float | None]:
        location = response.headers.get("Location") or (payload.get("poll_url") if isinstance(payload, dict) else None)
        if not location:
            return "ok", {"accepted": True, "confirmed": False, "response": payload}, None
        url = urljoin(entry.target, str(location))
        origin, target = urlsplit(url), urlsplit(entry.target)
        if (origin.scheme, origin.netloc) != (target.scheme, target.netloc):
            raise OutcomeUnknown(f"script {name}: accepted, but its status URL {url} is on another origin; not polled")
        # Wall-clock time: the polling may span several invocations.
        return self._poll_status(name, entry, url, time.time() + entry.poll_timeout_seconds)

    def _poll_status(self, name: str, entry: ScriptEntry, url: str, poll_until: float) -> tuple[str, Any, float | None]:
        """Poll ``url`` until the job ends or ``poll_until`` (epoch seconds) passes, within the invocation's
        deadline: when the next poll would not fit in it, ``Unfinished`` keeps the URL for the next attempt."""
        import httpx

        origin = urlsplit(url)
        secret = entry.secret_value()
        client = self._client(entry)
        while time.time() < poll_until:
            if deadline.remaining() < entry.poll_interval_seconds + entry.timeout_seconds:
                raise Unfinished(
                    f"script {name}: accepted and still running; polling {url} again in the next attempt",
                    progress={"status_url": url, "poll_until": poll_until},
                    retry_after=entry.poll_interval_seconds,
                )
            time.sleep(entry.poll_interval_seconds)
            now = str(int(self._clock()))
            path = (origin.path or "/").encode("utf-8")
            try:
                answer = client.get(
                    url,
                    headers={
                        SIGNATURE_HEADER: sign(secret, path),
                        TIMESTAMP_HEADER: now,
                        "User-Agent": "halo-lifecycle",
                    },
                    timeout=entry.timeout_seconds,
                )
            except httpx.TransportError:
                continue  # the job runs on: a status URL that hiccups is asked again until the deadline
            if answer.status_code in {202, 429} or answer.status_code >= 500:
                continue
            if answer.status_code != 200:
                raise OutcomeUnknown(f"script {name}: accepted, but its status URL answered {answer.status_code}")
            result = _json_or_text(answer)
            if isinstance(result, dict) and result.get("status") in ("running", "queued", "accepted"):
                continue
            # "retry" here means the job itself asks for another go: the step is released and run again.
            return _classify_result(name, result)
        # Accepted but not confirmed: running it again could do it twice, so the step is done; the audit says so.
        return "ok", {"accepted": True, "confirmed": False, "status_url": url}, None


def _json_or_text(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def _classify_result(name: str, value: Any) -> tuple[str, Any, float | None]:
    """(status, output, retry_after) from what a script returned."""
    if value is None:
        return "ok", None, None
    if not isinstance(value, dict) or "status" not in value:
        return "ok", value, None
    status = str(value.get("status", "")).lower()
    if status not in ("ok", "retry", "fail"):
        raise Permanent(f"script {name} returned status {status!r}; expected ok, retry or fail")
    retry_after = value.get("retry_after")
    return status, value.get("output"), float(retry_after) if isinstance(retry_after, (int, float)) else None


def build(name: str, context: TargetContext) -> ScriptTarget:
    """The ``script`` target: the allow-list and scripts folder from settings."""
    settings = context.settings
    return ScriptTarget(
        name,
        settings.scripts,
        scripts_dir=settings.scripts_dir,
        secrets=settings.secret_values(),
        policy=Policy.from_safety(context.mapping.safety, context.plan_context.base_dn(name)),
    )
