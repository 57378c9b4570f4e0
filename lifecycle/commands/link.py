"""``lifecycle link``: review and decide the links between Halo users and existing accounts (lifecycle.adoption).

``link list`` shows each proposal: the Halo user, the account found, how it matched and why the work waits;
``link approve ID | --all`` stamps the anchor on the account and sends the waiting work again; ``link reject``
leaves the account alone for good. Every decision is audited with who made it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``link`` command group to the CLI's subparsers."""
    link = subparsers.add_parser(
        "link", help="existing accounts found for Halo users (adoption): list, approve, reject"
    )
    link_sub = link.add_subparsers(dest="link_command", required=True)
    listing = link_sub.add_parser("list", help="proposals waiting for a decision (or --status)")
    listing.add_argument(
        "--status", choices=["held", "approved", "rejected", "all"], default="held", help="which (default: open ones)"
    )
    listing.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    for name, what in (
        ("approve", "stamp the anchor on the account and run the waiting work"),
        ("reject", "leave the account unlinked for good (audited)"),
    ):
        decide = link_sub.add_parser(name, help=what)
        decide.add_argument("id", nargs="?", help="the proposal's id, as link list shows it")
        decide.add_argument("--all", action="store_true", help="every proposal still open")
        decide.add_argument("--by", help="who decides (recorded in the audit trail; default: your user name)")
        decide.add_argument("--note", help="why (recorded in the audit trail)")
    link.set_defaults(func=cmd_link)


def cmd_link(args: argparse.Namespace) -> int:
    from lifecycle.adoption import approve_link, link_details, links, reject_link
    from lifecycle.cli import CliError, _operator, _print_json, _runtime

    runtime = _runtime()
    try:
        if args.link_command == "list":
            status = None if args.status == "all" else args.status
            rows = links(runtime.store, status=status)
            if args.json:
                _print_json([{**h.to_json(), "link": link_details(h)} for h in rows])
                return 0
            if not rows:
                print("no link proposals" if status is None else f"no {status} link proposals")
            for h in rows:
                link = link_details(h)
                print(
                    f"{h.held_id}  user {h.user_id}  {link['dn']}  by {link['attribute']}={link['value']}  "
                    f"{h.status}  {h.held_at:%Y-%m-%d %H:%M}"
                )
            return 0
        if (args.id is None) == (not args.all):
            raise CliError("name one link id (see `lifecycle link list`) or --all, not both")
        ids = [args.id] if args.id is not None else [h.held_id for h in links(runtime.store)]
        by = args.by or _operator()
        for link_id in ids:
            decide = approve_link if args.link_command == "approve" else reject_link
            held = decide(runtime, link_id, by=by, source="cli", note=args.note or "")
            print(f"{held.status} {held.held_id}  user {held.user_id}  {link_details(held)['dn']}", file=sys.stderr)
        verb = "linked" if args.link_command == "approve" else "rejected"
        print(f"{verb} {len(ids)} account(s)")
        return 0
    finally:
        runtime.close()
