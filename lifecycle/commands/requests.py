"""``lifecycle requests list|show|cancel``: ticket requests (New Starter, Leaver) and where each stands.

``cancel`` drops the request's pending phases (its dated steps), marks it cancelled and says so on the ticket;
what already ran stays (a cancelled joiner created early keeps its disabled account until a leaver runs).
"""

from __future__ import annotations

import argparse
import getpass
import json
from typing import Any

from lifecycle.errors import LifecycleError


def register(subparsers: Any) -> None:
    """Add the ``requests`` command group."""
    requests = subparsers.add_parser("requests", help="ticket requests: list, show, cancel")
    sub = requests.add_subparsers(dest="requests_command", required=True)
    listing = sub.add_parser("list", help="every request, or those with --status")
    listing.add_argument("--status", action="append", help="only requests with this status (repeatable)")
    listing.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    listing.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="one request with its plan phases (request id ticket-<id>, or the ticket id)")
    show.add_argument("request_id", help="ticket-<id>, or the ticket's id")
    show.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    show.set_defaults(func=cmd_show)
    cancel = sub.add_parser("cancel", help="drop a request's pending phases and note it on the ticket")
    cancel.add_argument("request_id", help="ticket-<id>, or the ticket's id")
    cancel.add_argument("--by", help="who cancels (default: the operator's user name)")
    cancel.set_defaults(func=cmd_cancel)


def _request_id(text: str) -> str:
    return f"ticket-{int(text)}" if text.strip().isdigit() else text.strip()


def _runtime() -> Any:
    from lifecycle.runtime import Runtime

    return Runtime()


def cmd_list(args: argparse.Namespace) -> int:
    runtime = _runtime()
    try:
        rows = runtime.requests.list(statuses=frozenset(args.status) if args.status else None)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps([r.answer() for r in rows], indent=2))
        return 0
    if not rows:
        print("no ticket requests")
    for r in rows:
        print(f"{r.request_id}  {r.status:<17} {r.type_name or '-':<14} user {r.halo_user_id or '-'}  {r.message}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    runtime = _runtime()
    try:
        record = runtime.requests.get(_request_id(args.request_id))
    finally:
        runtime.close()
    if record is None:
        raise LifecycleError(f"no request {_request_id(args.request_id)} (see lifecycle requests list)")
    view: dict[str, Any] = record.answer()
    view["posted_at"] = record.posted_at
    view["plan"] = [
        {"phase": p["name"], "when": p["label"], "due_at": p["due_at"], "work_id": p["item"]["work_id"]}
        for p in record.plan
    ]
    view["phase_results"] = record.phases
    from lifecycle.cli import print_data

    print_data(view, as_json=args.json)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from lifecycle.requests.service import TicketRequests

    runtime = _runtime()
    try:
        by = args.by or _operator()
        try:
            record = TicketRequests(runtime).cancel(_request_id(args.request_id), by=by)
        except LookupError as exc:
            raise LifecycleError(f"{exc.args[0]} (see lifecycle requests list)") from None
    finally:
        runtime.close()
    print(f"{record.request_id}: {record.status} ({record.message})")
    return 0


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"
