"""``lifecycle held``: work held by the mass-change guard: list, show, approve, reject."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``held`` command."""
    held = subparsers.add_parser("held", help="work held by the mass-change guard: list, show, approve, reject")
    held_sub = held.add_subparsers(dest="held_command", required=True)
    held_list = held_sub.add_parser("list", help="the guard's window and limit, and what it holds")
    held_list.add_argument(
        "--status", choices=["held", "approved", "rejected", "all"], default="held", help="which items (default held)"
    )
    held_list.add_argument("--limit", type=int, default=1000, help="show at most this many (default 1000)")
    held_list.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    held_show = held_sub.add_parser("show", help="one held item with its work item")
    held_show.add_argument("id", help="the held id, as held list shows it")
    held_show.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    for name, what in (("approve", "release for processing"), ("reject", "drop for good (audited)")):
        decide = held_sub.add_parser(name, help=what)
        decide.add_argument("id", nargs="?", help="the held id, as held list shows it")
        decide.add_argument("--all", action="store_true", help="every item still held")
        decide.add_argument("--by", help="who decides (recorded in the audit trail; default: your user name)")
        decide.add_argument("--note", help="why (recorded in the audit trail)")
    held.set_defaults(func=cmd_held)


def cmd_held(args: argparse.Namespace) -> int:
    """List, show, approve or reject what the mass-change guard holds (``args.held_command``)."""
    from lifecycle import cli
    from lifecycle.guard import MassChangeGuard

    runtime = cli._runtime()
    guard = MassChangeGuard(runtime.settings, runtime.store)
    if args.held_command == "list":
        status = None if args.status == "all" else args.status
        rows = runtime.store.held(status=status, limit=args.limit)
        if args.json:
            cli._print_json({"guard": guard.status(), "held": [h.to_json() for h in rows]})
            return 0
        window = guard.status()
        if window["enabled"]:
            destructive = (
                f"{window['count']} destructive item(s), limit {window['limit_from']}" if "limit" in window else ""
            )
            joiners = f"{window['joiners']} joiner(s), limit {window['joiner_limit']}" if "joiners" in window else ""
            counts = "; ".join(part for part in (destructive, joiners) if part)
            print(f"mass-change guard, last {window['window_seconds']:g} s: {counts}; {window['held']} held")
            for name, numbers in window.get("connections", {}).items():
                # Each customer's windows (the limits above apply to each of them).
                parts = [f"{numbers[k]} {label}" for k, label in (("count", "destructive"), ("joiners", "joiner(s)"))
                         if k in numbers]  # fmt: skip
                print(f"  connection {name}: {', '.join(parts)}")
        else:
            print("mass-change guard: off (LIFECYCLE_GUARD_MAX_COUNT, _MAX_PERCENT and _MAX_JOINERS are 0)")
        if not rows:
            print(f"no {'' if status is None else status + ' '}work items")
        for h in rows:
            decided = f"  {h.status} by {h.decided_by} at {h.decided_at:%Y-%m-%d %H:%M}" if h.decided_at else ""
            print(f"{h.held_id}  {h.held_at:%Y-%m-%d %H:%M:%S}  user {h.user_id}  {h.lifecycle}  {h.work_id}{decided}")
        return 0
    if args.held_command == "show":
        found = runtime.store.get_held(args.id)
        if found is None:
            raise cli.CliError(f"no held work item {args.id!r} (see `lifecycle held list`)")
        view = found.to_json()
        view["work_item"] = json.loads(found.work_item)
        cli.print_data(view, as_json=args.json)
        return 0
    by = args.by or cli._operator()
    if args.id is None and not args.all:
        raise cli.CliError(f"name what to {args.held_command}: a held id (see `lifecycle held list`) or --all")
    if args.id is not None and args.all:
        raise cli.CliError("give a held id or --all, not both")
    held_now = runtime.store.held(status="held", limit=100_000)
    # Link proposals wait in the same table; `lifecycle link` decides them.
    ids = [args.id] if args.id is not None else [h.held_id for h in held_now if h.lifecycle != "link"]
    for held_id in ids:
        if args.held_command == "approve":
            item = guard.approve(held_id, runtime.queue, by=by, source="cli", note=args.note or "")
        else:
            item = guard.reject(held_id, by=by, source="cli", note=args.note or "")
        print(f"{item.status} {item.held_id}  user {item.user_id}  {item.lifecycle}  {item.work_id}", file=sys.stderr)
    verb = "approved and released" if args.held_command == "approve" else "rejected"
    print(f"{verb} {len(ids)} held work item(s)")
    return 0
