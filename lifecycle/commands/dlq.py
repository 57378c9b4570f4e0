"""``lifecycle dlq``: dead-lettered work (embedded queue or Service Bus): list, show, replay."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``dlq`` command."""
    dlq = subparsers.add_parser("dlq", help="dead-lettered work: list, show, replay (embedded queue or Service Bus)")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", help="reason, description, deliveries and age of each")
    dlq_list.add_argument("--limit", type=int, default=100, help="show at most this many (default 100)")
    dlq_list.add_argument("--reason", help="only messages whose reason or description contains this text")
    dlq_list.add_argument("--user", type=int, help="only this Halo user's messages")
    dlq_list.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    dlq_show = dlq_sub.add_parser("show", help="one message with its body")
    dlq_show.add_argument("sequence", type=int, help="its sequence number, as dlq list shows it")
    dlq_show.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    dlq_replay = dlq_sub.add_parser("replay", help="send again under a new message id, then remove the entry")
    dlq_replay.add_argument("sequence", type=int, nargs="?", help="one message's sequence number")
    dlq_replay.add_argument("--all", action="store_true", help="every dead-lettered message")
    dlq_replay.add_argument("--reason", help="only messages whose reason or description contains this text")
    dlq_replay.add_argument("--user", type=int, help="only this Halo user's messages")
    dlq_replay.add_argument("--limit", type=int, default=100000, help="look at no more than this many")
    dlq_replay.add_argument("--dry-run", action="store_true", help="list what would be replayed, change nothing")
    dlq_replay.add_argument("--json", action="store_true", help="one JSON line per message (progress), then a summary")
    dlq.set_defaults(func=cmd_dlq)


def _dead_letter_filter(args: argparse.Namespace, rows: list[Any]) -> list[Any]:
    if getattr(args, "reason", None) is not None:
        rows = [m for m in rows if args.reason.lower() in f"{m.reason} {m.description}".lower()]
    if getattr(args, "user", None) is not None:
        rows = [m for m in rows if m.session_id == str(args.user)]
    return rows


def cmd_dlq(args: argparse.Namespace) -> int:
    """List, show or replay dead-lettered work (``args.dlq_command``)."""
    from lifecycle import cli, operations

    runtime = cli._runtime()
    queue = runtime.queue
    if args.dlq_command == "list":
        rows = _dead_letter_filter(args, queue.dead_letters(limit=args.limit))
        if args.json:
            cli._print_json([_dead_letter_view(m) for m in rows])
            return 0
        if not rows:
            print("no dead-lettered work")
        now = datetime.now(UTC)
        for m in rows:
            age = now - m.dead_lettered_at
            print(
                f"{m.sequence_number:>6}  {m.message_id}  user {m.session_id}  connection "
                f"{_dead_letter_connection(m)}  deliveries {m.delivery_count}  "
                f"age {age.total_seconds() / 3600:.1f}h  {m.reason}: {m.description}"
            )
        return 0
    if args.dlq_command == "show":
        found = operations.dead_letter(runtime, args.sequence)
        if found is None:
            raise cli.CliError(f"no dead-lettered message with sequence number {args.sequence}")
        view = _dead_letter_view(found)
        try:
            view["body"] = json.loads(found.body)
        except ValueError:
            view["body"] = found.body.decode("utf-8", "replace")
        cli.print_data(view, as_json=args.json)
        return 0
    # replay
    if args.sequence is None and not args.all and args.reason is None and args.user is None:
        raise cli.CliError("name what to replay: a sequence number, --reason TEXT, --user ID or --all")
    if args.sequence is not None:
        one = operations.dead_letter(runtime, args.sequence)
        rows = [] if one is None else [one]
        if not rows:
            raise cli.CliError(f"no dead-lettered message with sequence number {args.sequence}")
    else:
        rows = queue.dead_letters(limit=args.limit)
    rows = _dead_letter_filter(args, rows)
    total = len(rows)
    if args.dry_run:
        for m in rows:
            if args.json:
                print(json.dumps({"would_replay": m.sequence_number, "message_id": m.message_id, "reason": m.reason}))
            else:
                print(f"would replay {m.sequence_number} {m.message_id} ({m.reason})")
        print(json.dumps({"would_replay": total}) if args.json else f"would replay {total} message(s)")
        return 0
    done = 0

    def progress(sequence_number: int, message_id: str, new_id: str) -> None:
        nonlocal done
        done += 1
        if args.json:
            line = {"replayed": sequence_number, "message_id": message_id, "new_message_id": new_id}
            print(json.dumps({**line, "done": done, "total": total}), flush=True)
        else:
            print(f"[{done}/{total}] replayed {sequence_number} {message_id} as {new_id}", file=sys.stderr, flush=True)

    # Audited with who replayed, as the console's replays are.
    operations.replay_dead_letters(runtime, rows, by=cli._operator(), source="cli", progress=progress)
    missing = total - done
    if args.json:
        print(json.dumps({"replayed": done, "not_found": missing}))
    else:
        suffix = f"; {missing} no longer dead-lettered (replayed meanwhile?)" if missing else ""
        print(f"replayed {done} message(s){suffix}")
    return 0


def _dead_letter_connection(m: Any) -> str:
    """The connection (customer: AD domain, tenant) the dead-lettered item routed its person to, "-" if none."""
    from lifecycle.tenancy import connection_of
    from lifecycle.work import WorkItem

    try:
        return connection_of(WorkItem.from_bytes(m.body)) or "-"
    except ValueError:  # not a work item (an unreadable webhook element)
        return "-"


def _dead_letter_view(m: Any) -> dict[str, Any]:
    return {
        "sequence_number": m.sequence_number,
        "message_id": m.message_id,
        "user_id": m.session_id,
        "connection": _dead_letter_connection(m),
        "reason": m.reason,
        "description": m.description,
        "delivery_count": m.delivery_count,
        "enqueued_at": m.enqueued_at.isoformat(),
        "dead_lettered_at": m.dead_lettered_at.isoformat(),
        "properties": m.properties,
    }
