"""The ``lifecycle`` command: serve locally, plan (dry-run), dead letters, audit, staged work, config checks.

Every error is one line on stderr and a non-zero exit; no traceback reaches the operator.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from lifecycle.commands import check_config, doctor, examples, halo_webhook, impact, link, pending, requests, worker
from lifecycle.commands import dlq as dlq_command
from lifecycle.commands import held as held_command
from lifecycle.commands import plan as plan_command
from lifecycle.errors import ConfigurationError, LifecycleError, Retryable

EXIT_FINDINGS = 1
EXIT_ERROR = 2
EXIT_INVALID_CONFIG = 3
EXIT_UNREACHABLE = 4


class CliError(Exception):
    """A one-line error for the operator."""


def _runtime() -> Any:
    from lifecycle.runtime import Runtime

    return Runtime()


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def print_data(value: dict[str, Any], *, as_json: bool) -> None:
    """One record: JSON for scripts, or ``key: value`` lines for a person (nested values as indented JSON)."""
    if as_json:
        _print_json(value)
        return
    for key, item in value.items():
        if isinstance(item, dict | list):
            nested = json.dumps(item, indent=2, default=str, ensure_ascii=False).replace("\n", "\n  ")
            print(f"{key}:\n  {nested}")
        else:
            print(f"{key}: {'' if item is None else item}")


def _parse_since(text: str | None) -> datetime | None:
    if text is None:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[:-1].isdigit() and text[-1] in units:
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--since {text!r}: give an ISO date/time or a span like 30m, 12h, 7d") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# Commands -----------------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from lifecycle.halo.auth import check_configured
    from lifecycle.local.server import LocalHost
    from lifecycle.observability import configure_logging

    runtime = _runtime()
    settings = runtime.settings
    configure_logging(settings.log_level, settings.secret_values())
    check_configured(settings)
    host = LocalHost(runtime, host=args.host, port=args.port, workers=args.workers)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    host.start()
    print(
        f"halo-lifecycle listening on {host.url} (POST /api/halo/events, GET /api/health); Ctrl-C stops\n"
        f"console: {host.url}/api/console/  sign in once with: {host.console_sign_in_link()}",
        file=sys.stderr,
    )
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        host.stop()
        runtime.close()
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from lifecycle.local.dev import run_dev

    return run_dev(Path(args.dir), host=args.dc_host, port=args.port)


def cmd_audit(args: argparse.Namespace) -> int:
    store = _runtime().store
    entries = store.audit(user_id=args.user, work_id=args.work_id, since=_parse_since(args.since), limit=args.limit)
    if args.json:
        _print_json([e.to_json() for e in entries])
        return 0
    if not entries:
        print("no audit entries match")
    for e in entries:
        changes = "; ".join(f"{c.attribute}: {c.before!r} -> {c.after!r}" for c in e.changes)
        who = e.requested_by.get("source", "?")
        print(
            f"{e.at.isoformat(timespec='seconds')}  user {e.user_id}  {e.step} {e.action}  {e.outcome}  "
            f"[{who}]  {e.dn or ''}  {changes}  {e.message}".rstrip()
        )
    return 0


def _operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a container: say where the decision came from
        return "cli"


def cmd_journal(args: argparse.Namespace) -> int:
    """Release (or mark done) a once-only step left in progress, after an operator checked its effect."""
    from lifecycle.state import AuditEntry

    store = _runtime().store
    previous = store.resolve_step(args.work_id, args.step, done=args.done)
    if previous is None:
        raise CliError(f"the journal has no step {args.step!r} of work item {args.work_id!r}")
    if previous == "done":
        raise CliError(f"step {args.step} of {args.work_id} is done; a finished step is never released")
    verdict = "marked done (it will not run again)" if args.done else "released (the next delivery runs it)"
    earlier = store.audit(work_id=args.work_id, limit=1)
    store.append_audit(
        AuditEntry(
            at=datetime.now(UTC),
            work_id=args.work_id,
            user_id=earlier[0].user_id if earlier else 0,
            step=args.step,
            action="journal_release",
            target="-",
            outcome="changed",
            requested_by={"source": "cli"},
            message=f"operator: step {verdict}",
        )
    )
    print(f"step {args.step} of {args.work_id} {verdict}; replay the dead-lettered item to continue")
    return 0


class _ProgressBar:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, a line per tenth otherwise."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = False
        self._last_tenth = -1

    def __call__(self, listing: Any) -> None:
        total = listing.record_count or 0
        done = min(listing.received, total) if total else listing.received
        fraction = done / total if total else 1.0
        if self.tty:
            filled = int(fraction * 30)
            bar = "#" * filled + "." * (30 - filled)
            print(f"\rreconcile [{bar}] {done}/{total} users {fraction:4.0%}", end="", file=self.stream, flush=True)
            self.shown = True
        elif int(fraction * 10) != self._last_tenth:
            self._last_tenth = int(fraction * 10)
            print(f"reconcile: {done}/{total} users ({fraction:.0%})", file=self.stream, flush=True)

    def clear(self) -> None:
        if self.tty and self.shown:
            print("\r" + " " * 70 + "\r", end="", file=self.stream, flush=True)
            self.shown = False


def cmd_reconcile(args: argparse.Namespace) -> int:
    from lifecycle.reconcile import run_reconcile
    from lifecycle.reconcile_report import Outcome

    runtime = _runtime()
    bar = _ProgressBar()
    mode = args.mode or runtime.settings.reconcile_mode
    verb = "would send" if args.dry_run or runtime.settings.dry_run or mode == "report" else "sent"

    def show(outcome: Outcome) -> None:
        if outcome.decision in ("unchanged", "skipped_inactive") or args.json:
            return
        bar.clear()
        if outcome.decision in ("matched", "link_proposed", "conflict", "vanished", "error", "out_of_scope", "missing"):
            print(f"user {outcome.user_id}: {outcome.decision}: {outcome.detail}")
        else:
            duplicate = " (already queued)" if outcome.new is False else ""
            print(f"user {outcome.user_id}: {verb} {outcome.decision}{duplicate}: {outcome.detail}")

    try:
        report = run_reconcile(runtime, dry_run=args.dry_run, mode=mode, on_progress=bar, on_outcome=show)
    finally:
        bar.clear()
        runtime.close()
    if args.json:
        _print_json(report.to_json())
    else:
        for note in report.notes:
            print(f"note: {note}", file=sys.stderr)
        print(report.summary())
    # A scheduled job alerts on the exit code: a conflict or an error needs a person even when the run finished.
    troubled = report.decisions.get("conflict", 0) + report.decisions.get("error", 0) + len(report.errors)
    return EXIT_FINDINGS if troubled else 0


def cmd_halo(args: argparse.Namespace) -> int:
    """``lifecycle halo test``: authenticate, read the first page, and show how its first users would map."""
    from lifecycle.halo.client import HaloClient
    from lifecycle.mapping.planner import plan
    from lifecycle.operations import describe_step
    from lifecycle.people import normalise_user
    from lifecycle.work import LifecycleEvent

    runtime = _runtime()
    client = runtime.halo
    if not isinstance(client, HaloClient):
        raise CliError("the Halo API is not configured: set LIFECYCLE_HALO_API_URL, _CLIENT_ID and _CLIENT_SECRET")
    info = client.authenticate()
    how = "discovered through /api/authinfo" if info.discovered else "configured"
    print(f"ok: token from {info.token_url} ({how}), scope {info.scope}, valid {info.expires_in:.0f} s")
    page = client.users_page(1)
    print(f"ok: Halo lists {page.record_count} user(s), active and inactive; page 1 holds {len(page.users)}")
    plans = []
    for listed in page.users[: args.count]:
        user_id = listed.get("id")
        if not isinstance(user_id, int):
            continue
        user = normalise_user(client.fetch_user(user_id) or listed)
        person = runtime.store.get_person(user_id)
        status: Literal["active", "left", "unknown"] = person.status if person is not None else "unknown"
        event = LifecycleEvent(
            kind="created" if person is None else "updated",
            user_id=user_id,
            occurred_at=datetime.now(UTC),
            source="cli",
            user=user,
        )
        item = plan(event, runtime.mapping, work_id="halo-test", context=runtime.plan_context, status=status)
        plans.append(item.model_dump(mode="json"))
        if not args.json:
            print(f"\nuser {user_id} {user.get('name', '')!s} ({status}): {item.lifecycle} (dry-run)")
            for step in item.steps:
                print(f"  {step.key} {describe_step(step)}")
    if args.json:
        _print_json(plans)
    runtime.close()
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from lifecycle.halo.auth import sign_for
    from lifecycle.settings import get_settings

    settings = get_settings()
    if args.kind:
        entry = settings.webhook_hmac_secrets.get(args.kind)
        secret = entry.get_secret_value() if entry is not None else ""
        if not secret:
            raise CliError(f"LIFECYCLE_WEBHOOK_HMAC_SECRETS has no secret for {args.kind!r}")
    else:
        secret = settings.webhook_hmac_secret.get_secret_value()
        if not secret:
            raise CliError("LIFECYCLE_WEBHOOK_HMAC_SECRET is not set")
    try:
        body = Path(args.file).read_bytes()
    except OSError as exc:
        raise CliError(f"{args.file}: {exc.strerror}") from None
    print(sign_for(settings, secret, body))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lifecycle",
        description="Halo's people to Active Directory and Microsoft 365: operate, inspect and test the service.",
        epilog=(
            "exit codes: 0 ok; 1 findings (check-config, plan warnings, reconcile conflicts or errors, impact); "
            "2 an error (bad arguments, nothing found); 3 invalid configuration; 4 a service unreachable\n"
            "example: lifecycle --env-file .local/dev.env audit --user 26"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # Own dests: a sub-command may have a --mapping of its own (impact's is the *new* mapping).
    parser.add_argument(
        "--env-file", dest="global_env_file", help="read LIFECYCLE_* settings from this file first (KEY=VALUE lines)"
    )
    parser.add_argument(
        "--mapping", dest="global_mapping", help="use this mapping file (overrides LIFECYCLE_MAPPING_FILE)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the ingress and the worker locally (embedded queue and store)")
    serve.add_argument("--host", help="the address to listen on (default: LIFECYCLE_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="the port to listen on (default: LIFECYCLE_PORT, 7071)")
    serve.add_argument("--workers", type=int, help="worker threads (default: LIFECYCLE_WORKER_CONCURRENCY)")
    serve.set_defaults(func=cmd_serve)

    dev = sub.add_parser("dev", help="start a throwaway Samba AD DC, write .local/dev.env and serve (make run)")
    dev.add_argument("--dir", default=".local", help="where the DC, the data and dev.env live (default .local)")
    dev.add_argument("--dc-host", default="127.0.0.1", help="the loopback address the DC listens on")
    dev.add_argument("--port", type=int, default=7071, help="the service's port (default 7071)")
    dev.set_defaults(func=cmd_dev)

    plan_command.register(sub)

    dlq_command.register(sub)

    audit = sub.add_parser("audit", help="what was done, to whom, by whose request")
    audit.add_argument("--user", type=int, help="only this Halo user's entries (a Halo id)")
    audit.add_argument("--work-id", help="only this work item's entries")
    audit.add_argument("--since", help="ISO time or a span: 30m, 12h, 7d")
    audit.add_argument("--limit", type=int, default=1000, help="show at most this many (default 1000)")
    audit.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    audit.set_defaults(func=cmd_audit)

    pending.register(sub)
    worker.register(sub)
    doctor.register(sub)

    held_command.register(sub)

    check_config.register(sub)

    reconcile = sub.add_parser("reconcile", help="compare Halo's users with what was applied and send the drift")
    reconcile.add_argument("--dry-run", action="store_true", help="report what would be sent; change nothing")
    reconcile.add_argument(
        "--mode",
        choices=["report", "apply"],
        help="report: audit and list the drift, send nothing; apply: send it (default: LIFECYCLE_RECONCILE_MODE)",
    )
    reconcile.add_argument("--json", action="store_true", help="print the report as JSON")
    reconcile.set_defaults(func=cmd_reconcile)

    halo = sub.add_parser("halo", help="the Halo API connection")
    halo_sub = halo.add_subparsers(dest="halo_command", required=True)
    halo_test = halo_sub.add_parser("test", help="authenticate, read the first page, show how users would map")
    halo_test.add_argument("--count", type=int, default=3, help="how many users to show (default 3)")
    halo_test.add_argument("--json", action="store_true", help="print the plans as JSON")
    halo.set_defaults(func=cmd_halo)
    halo_webhook.register(halo_sub)

    requests.register(sub)

    sign = sub.add_parser("sign", help="print the signature header value Halo would send for a body file")
    sign.add_argument("file", help="the body file to sign, exactly as it will be sent")
    sign.add_argument("--kind", choices=["created", "updated", "deleted"], help="sign with this kind's own secret")
    sign.set_defaults(func=cmd_sign)

    journal = sub.add_parser("journal", help="the step journal: release a once-only step left in progress")
    journal_sub = journal.add_subparsers(dest="journal_command", required=True)
    release = journal_sub.add_parser("release", help="let the step run again, or (--done) record that it ran")
    release.add_argument("work_id", help="the work item's id, as the dead letter or the audit names it")
    release.add_argument("step", help="the step key, as the dead-letter reason names it (e.g. 05-run_script)")
    release.add_argument("--done", action="store_true", help="it did run: mark it done instead of running it again")
    journal.set_defaults(func=cmd_journal)
    link.register(sub)
    impact.register(sub)
    examples.apply(parser)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("halo-lifecycle")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _read_env_file(path: str) -> None:
    """``KEY=VALUE`` lines (``.local/dev.env``, a systemd EnvironmentFile) into the environment; the file wins."""
    import os

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CliError(f"--env-file {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.removeprefix("export ").partition("=")
        if not sep or not key.strip().isidentifier():
            raise CliError(f"--env-file {path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        os.environ[key.strip()] = value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.global_env_file or args.global_mapping:
            import os

            from lifecycle.settings import get_settings

            if args.global_env_file:
                _read_env_file(args.global_env_file)
            if args.global_mapping:
                os.environ["LIFECYCLE_MAPPING_FILE"] = args.global_mapping
            get_settings.cache_clear()
        return int(args.func(args))
    except ConfigurationError as exc:
        print(f"lifecycle: error: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    except Retryable as exc:
        print(f"lifecycle: error: unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (CliError, LifecycleError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"lifecycle: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # a socket refused or timed out below a client that did not wrap it
        print(f"lifecycle: error: unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Exception as exc:  # the operator gets one line; the details are for a bug report
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            location = ".".join(str(p) for p in first["loc"])
            message = str(first["msg"]).removeprefix("Value error, ")
            where = f"LIFECYCLE_{location.upper()}: " if location else ""
            print(f"lifecycle: error: {where}{message}", file=sys.stderr)
        else:
            print(f"lifecycle: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
