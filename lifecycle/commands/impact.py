"""``lifecycle impact --mapping NEW.toml``: what a mapping change would do, before it does anything.

Reads the Halo users (from a JSON file with ``--users``, else through the Halo API) and what the service knows
of each (active, left, unknown) from the store, plans every one under the mapping in force and under NEW with
the pure planner (``lifecycle.impact``), and reports how many would be created, re-enabled (people recorded as
left, replayed as they last were), moved, change groups, lose licences or leave the scope, with the first
examples of each. It changes nothing: no directory is read, nothing
is queued or stored. Exit 0: nothing would change; 1: something would (review the examples).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

EXIT_NO_CHANGE = 0
EXIT_CHANGES = 1


def register(subparsers: Any) -> None:
    """Add ``impact`` to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "impact",
        help="what a new mapping would change for every known person (changes nothing)",
        description=(
            "Plans every Halo user under the mapping in force and under NEW and reports how many would be "
            "created, moved, change groups, lose licences or leave the scope, with examples. Exit 0: no change; "
            "1: changes (review them)."
        ),
        epilog="example: lifecycle impact --mapping mapping.new.toml --users halo-users.json",
    )
    parser.add_argument("--mapping", required=True, type=Path, help="the proposed mapping file")
    parser.add_argument(
        "--users", type=Path, help='a JSON file of Halo users (an array, or {"users": [...]}); default: the Halo API'
    )
    parser.add_argument("--examples", type=int, default=5, help="examples per kind of change (default 5)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=cmd_impact)


def _users_from_file(path: Path) -> list[dict[str, Any]]:
    from lifecycle.cli import CliError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CliError(f"{path}: not JSON: {exc}") from None
    users = data.get("users") if isinstance(data, dict) else data
    if not isinstance(users, list) or not all(isinstance(u, dict) for u in users):
        raise CliError(f'{path}: expected an array of Halo users (or an object with "users")')
    return users


def _users_from_halo(runtime: Any) -> list[dict[str, Any]]:
    from lifecycle.cli import CliError
    from lifecycle.halo.client import HaloClient

    halo = runtime.halo
    if not isinstance(halo, HaloClient):
        raise CliError(
            "no users to compare: give --users FILE, or configure the Halo API (LIFECYCLE_HALO_API_URL, "
            "_CLIENT_ID, _CLIENT_SECRET)"
        )
    return [dict(user) for user in halo.list_users()]


def cmd_impact(args: argparse.Namespace) -> int:
    from lifecycle.cli import CliError, _print_json, _runtime
    from lifecycle.impact import compare
    from lifecycle.mapping.planner import PersonStatus
    from lifecycle.mapping.schema import load_mapping

    if args.examples < 0:
        raise CliError("--examples must be 0 or more")
    new = load_mapping(args.mapping)  # a ConfigurationError names the file and the field
    runtime = _runtime()
    try:
        users = _users_from_file(args.users) if args.users else _users_from_halo(runtime)
        people: list[tuple[dict[str, Any], PersonStatus]] = []
        for user in users:
            try:
                record = runtime.store.get_person(int(user["id"]))
            except (KeyError, TypeError, ValueError):
                record = None
            people.append((user, record.status if record is not None else "unknown"))
        report = compare(people, runtime.mapping, new, context=runtime.plan_context, examples=args.examples)
    finally:
        runtime.close()
    if args.json:
        _print_json(report.to_json())
    else:
        print(report.summary())
    return EXIT_CHANGES if report.people - report.unchanged else EXIT_NO_CHANGE
