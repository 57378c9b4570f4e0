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
from typing import Any

from lifecycle.errors import LifecycleError

EXIT_ERROR = 2


class CliError(Exception):
    """A one-line error for the operator."""


def _runtime() -> Any:
    from lifecycle.runtime import Runtime

    return Runtime()


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


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
        f"halo-lifecycle listening on {host.url} (POST /api/halo/events, GET /api/health); Ctrl-C stops",
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


def _load_user(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("users"), list) and data["users"]:
        data = data["users"][0]  # the shape GET /api/Users returns
    if not isinstance(data, dict):
        raise CliError(f"{path}: expected a Halo user object")
    return data


def cmd_plan(args: argparse.Namespace) -> int:
    from lifecycle.ingress import Ingress, Request

    user = _load_user(args.user)
    runtime = _runtime()
    body = json.dumps({"event": args.event, "user_id": user.get("id"), "user": user}).encode()
    settings = runtime.settings.model_copy(update={"webhook_auth": "none"})
    runtime.settings = settings
    response = Ingress(runtime).events(Request("POST", body, {"content-type": "application/json"}, {"dry_run": "true"}))
    if response.status != 200:
        raise CliError(response.json().get("detail", "the event was rejected"))
    _print_json(response.json())
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    queue = _runtime().queue
    if args.dlq_command == "list":
        rows = queue.dead_letters(limit=args.limit)
        if args.json:
            _print_json([_dead_letter_view(m) for m in rows])
            return 0
        if not rows:
            print("no dead-lettered work")
        now = datetime.now(UTC)
        for m in rows:
            age = now - m.dead_lettered_at
            print(
                f"{m.sequence_number:>6}  {m.message_id}  user {m.session_id}  deliveries {m.delivery_count}  "
                f"age {age.total_seconds() / 3600:.1f}h  {m.reason}: {m.description}"
            )
        return 0
    if args.dlq_command == "show":
        found = [m for m in queue.dead_letters(limit=100000) if m.sequence_number == args.sequence]
        if not found:
            raise CliError(f"no dead-lettered message with sequence number {args.sequence}")
        view = _dead_letter_view(found[0])
        view["body"] = json.loads(found[0].body)
        _print_json(view)
        return 0
    # replay
    rows = queue.dead_letters(limit=100000)
    if args.sequence is not None:
        rows = [m for m in rows if m.sequence_number == args.sequence]
        if not rows:
            raise CliError(f"no dead-lettered message with sequence number {args.sequence}")
    elif not args.all and args.reason is None and args.user is None:
        raise CliError("name what to replay: a sequence number, --reason TEXT, --user ID or --all")
    if args.reason is not None:
        rows = [m for m in rows if args.reason.lower() in f"{m.reason} {m.description}".lower()]
    if args.user is not None:
        rows = [m for m in rows if m.session_id == str(args.user)]
    for index, m in enumerate(rows, 1):
        if args.dry_run:
            print(f"would replay {m.sequence_number} {m.message_id} ({m.reason})")
            continue
        new_id = queue.replay(m.sequence_number)
        print(f"[{index}/{len(rows)}] replayed {m.sequence_number} {m.message_id} as {new_id}", file=sys.stderr)
    print(f"{'would replay' if args.dry_run else 'replayed'} {len(rows)} message(s)")
    return 0


def _dead_letter_view(m: Any) -> dict[str, Any]:
    return {
        "sequence_number": m.sequence_number,
        "message_id": m.message_id,
        "user_id": m.session_id,
        "reason": m.reason,
        "description": m.description,
        "delivery_count": m.delivery_count,
        "enqueued_at": m.enqueued_at.isoformat(),
        "dead_lettered_at": m.dead_lettered_at.isoformat(),
        "properties": m.properties,
    }


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


def cmd_pending(args: argparse.Namespace) -> int:
    store = _runtime().store
    rows = store.pending(user_id=args.user)
    if args.json:
        _print_json(
            [
                {"user_id": p.user_id, "key": p.key, "due_at": p.due_at.isoformat(), "description": p.description}
                for p in rows
            ]
        )
        return 0
    if not rows:
        print("no staged work")
    for p in rows:
        print(f"{p.due_at.isoformat(timespec='minutes')}  user {p.user_id}  {p.key}  {p.description}")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from lifecycle.halo.auth import check_configured

    runtime = _runtime()
    settings = runtime.settings
    mapping = runtime.mapping
    check_configured(settings)
    for name in ("default", *settings.ad_connections):
        connection = settings.ad_connection(name)
        if not connection.base_dn:
            raise CliError(f"AD connection {name!r} has no base DN (LIFECYCLE_AD_BASE_DN)")
    print(
        f"ok: mapping {settings.mapping_file} (digest {mapping.digest}), "
        f"queue {settings.queue_backend}, store {settings.store_backend}"
    )
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from lifecycle.halo.auth import sign_body
    from lifecycle.settings import get_settings

    secret = get_settings().webhook_hmac_secret.get_secret_value()
    if not secret:
        raise CliError("LIFECYCLE_WEBHOOK_HMAC_SECRET is not set")
    try:
        body = Path(args.file).read_bytes()
    except OSError as exc:
        raise CliError(f"{args.file}: {exc.strerror}") from None
    print(sign_body(secret, body))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifecycle", description="HaloITSM user events to Active Directory.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the ingress and the worker locally (embedded queue and store)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)

    dev = sub.add_parser("dev", help="start a throwaway Samba AD DC, write .local/dev.env and serve (make run)")
    dev.add_argument("--dir", default=".local")
    dev.add_argument("--dc-host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=7071)
    dev.set_defaults(func=cmd_dev)

    plan = sub.add_parser("plan", help="print the plan for an event without enqueuing (dry-run)")
    plan.add_argument("--event", required=True, choices=["created", "updated", "deleted"])
    plan.add_argument("--user", required=True, help="a Halo user JSON file (as GET /api/Users returns it)")
    plan.set_defaults(func=cmd_plan)

    dlq = sub.add_parser("dlq", help="dead-lettered work: list, show, replay")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list")
    dlq_list.add_argument("--limit", type=int, default=100)
    dlq_list.add_argument("--json", action="store_true")
    dlq_show = dlq_sub.add_parser("show")
    dlq_show.add_argument("sequence", type=int)
    dlq_replay = dlq_sub.add_parser("replay")
    dlq_replay.add_argument("sequence", type=int, nargs="?")
    dlq_replay.add_argument("--all", action="store_true")
    dlq_replay.add_argument("--reason", help="only messages whose reason or description contains this text")
    dlq_replay.add_argument("--user", type=int, help="only this Halo user's messages")
    dlq_replay.add_argument("--dry-run", action="store_true")
    dlq.set_defaults(func=cmd_dlq)

    audit = sub.add_parser("audit", help="what was done, to whom, by whose request")
    audit.add_argument("--user", type=int)
    audit.add_argument("--work-id")
    audit.add_argument("--since", help="ISO time or a span: 30m, 12h, 7d")
    audit.add_argument("--limit", type=int, default=1000)
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=cmd_audit)

    pending = sub.add_parser("pending", help="staged work (deletions after N days) and when it is due")
    pending.add_argument("--user", type=int)
    pending.add_argument("--json", action="store_true")
    pending.set_defaults(func=cmd_pending)

    check = sub.add_parser("check-config", help="validate settings and the mapping file")
    check.set_defaults(func=cmd_check_config)

    sign = sub.add_parser("sign", help="print the Token header Halo would send for a body file")
    sign.add_argument("file")
    sign.set_defaults(func=cmd_sign)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (CliError, LifecycleError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"lifecycle: error: {message}", file=sys.stderr)
        return EXIT_ERROR
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
