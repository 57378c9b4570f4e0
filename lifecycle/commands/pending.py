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
    pending.add_argument("--user", type=int)
    pending.add_argument(
        "--released",
        metavar="SPAN",
        nargs="?",
        const="7d",
        help="also list what the timer released in this span (default 7d; ISO time or 30m, 12h, 7d)",
    )
    pending.add_argument("--json", action="store_true")
    pending.set_defaults(func=cmd_pending)


def cmd_pending(args: argparse.Namespace) -> int:
    """Print staged work (``due`` marks what the next timer run releases) and, with ``--released``, releases."""
    from lifecycle import cli

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
