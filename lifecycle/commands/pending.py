"""``lifecycle pending``: staged and future-dated work, what is due now, and what the timer released."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``pending`` command."""
    pending = subparsers.add_parser(
        "pending", help="staged work (deletions after N days): what waits, what is due, what was released"
    )
    pending.add_argument("--user", type=int, help="only this Halo user's staged work (a Halo id)")
    pending.add_argument(
        "--released",
        metavar="SPAN",
        nargs="?",
        const="7d",
        help="also list what the timer released in this span (default 7d; ISO time or 30m, 12h, 7d)",
    )
    pending.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    pending.add_argument("--cancel", metavar="KEY", help="drop this staged step of --user for good (audited)")
    pending.add_argument("--run-now", metavar="KEY", help="release this staged step of --user now (confirmed)")
    pending.add_argument("--yes", action="store_true", help="with --run-now: do not ask to confirm")
    pending.set_defaults(func=cmd_pending)


def cmd_pending(args: argparse.Namespace) -> int:
    """Print staged work (``due`` marks what the next timer run releases) and, with ``--released``, releases."""
    from lifecycle import cli

    if args.cancel or args.run_now:
        return _pending_action(args)
    store = cli._runtime().store
    now = datetime.now(UTC)
    rows = store.pending(user_id=args.user)
    released = []
    if args.released is not None:
        since = cli._parse_since(args.released)
        entries = store.audit(user_id=args.user, since=since, limit=100_000)
        released = [e for e in entries if e.action == "release_pending"]
    if args.json:
        view: dict[str, Any] | list[dict[str, Any]] = [
            {
                "user_id": p.user_id,
                "key": p.key,
                "due_at": p.due_at.isoformat(),
                "due": p.due_at <= now,
                "description": p.description,
            }
            for p in rows
        ]
        if args.released is not None:
            view = {
                "pending": view,
                "released": [
                    {
                        "user_id": e.user_id,
                        "key": e.step,
                        "work_id": e.work_id,
                        "at": e.at.isoformat(),
                        "message": e.message,
                    }
                    for e in released
                ],
            }
        cli._print_json(view)
        return 0
    if not rows:
        print("no staged work")
    for p in rows:
        mark = "due now " if p.due_at <= now else "        "
        print(f"{mark}{p.due_at.isoformat(timespec='minutes')}  user {p.user_id}  {p.key}  {p.description}")
    if args.released is not None:
        print(f"released since {args.released}: {len(released)}")
        for e in released:
            print(f"  {e.at.isoformat(timespec='seconds')}  user {e.user_id}  {e.step}  {e.message}")
    return 0


def _pending_action(args: argparse.Namespace) -> int:
    """``--cancel KEY`` / ``--run-now KEY`` of one person's staged work, audited with the OS user's name."""
    import sys

    from lifecycle import cli, operations

    if args.user is None:
        raise cli.CliError("name the person: --user ID (see `lifecycle pending`)")
    if args.cancel and args.run_now:
        raise cli.CliError("give --cancel or --run-now, not both")
    runtime = cli._runtime()
    if args.cancel:
        done = operations.cancel_staged(runtime, args.user, args.cancel, by=cli._operator(), source="cli")
        print(f"cancelled {done.key} of user {done.user_id} (was due {done.due_at.isoformat(timespec='minutes')})")
        return 0
    if not args.yes:
        # The console asks the same: the person's Halo id, typed, before staged work runs early.
        if not sys.stdin.isatty():
            raise cli.CliError("running staged work now cannot be undone: add --yes, or run it on a terminal")
        typed = input(f"run {args.run_now} of user {args.user} now? type the Halo id ({args.user}) to confirm: ")
        if typed.strip() != str(args.user):
            raise cli.CliError("not confirmed; nothing was changed")
    done = operations.run_staged_now(runtime, args.user, args.run_now, by=cli._operator(), source="cli")
    print(f"released {done.key} of user {done.user_id} to run now")
    return 0
