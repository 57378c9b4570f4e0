"""``lifecycle plan``: what the service would do for a Halo user or a body Halo sends, without doing any of it.

The planner is pure, so this runs it directly on the mapping and the settings: no queue, no store, no file written
(a preview must not leave a ``.local/data`` behind, nor need one). What the store would have said about the person
(never seen, active, left) is what ``--as`` says instead, so a mover, a leaver or a rehire can be previewed on a
machine that has never run the service.

Exit codes: 0 the plan is complete; 1 the plan has warnings (an empty rendered value, no name candidate, a DN that
ends in a comma because the base DN is unset); 2 the input cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

EXIT_WARNINGS = 1

Role = Literal["joiner", "mover", "leaver", "rehire"]
ROLES: tuple[Role, ...] = ("joiner", "mover", "leaver", "rehire")
# --as: what the store would know of the person, and how the event must look, for each lifecycle.
_STATUS: dict[Role, Literal["unknown", "active", "left"]] = {
    "joiner": "unknown",
    "mover": "active",
    "leaver": "active",
    "rehire": "left",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="show what an event would do, changing and writing nothing (a dry run)",
        description=(
            "Plans a Halo user, a webhook delivery (single or batched) or a runbook body under the mapping and "
            "prints each step. Nothing is queued, stored or written. --as previews a lifecycle whatever this "
            "machine's store knows of the person. Exit 0: complete; 1: warnings (empty values); 2: bad input."
        ),
        epilog=(
            "examples: lifecycle plan --file tests/events/halo-user-sample.json --as leaver\n"
            "          lifecycle plan --file tests/events/webhook-user-created.json --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--file", "-f", required=True, help="a Halo user (as GET /api/Users returns it), a webhook or runbook body"
    )
    parser.add_argument(
        "--event", choices=["created", "updated", "deleted"], help="the event kind (default: the body's, or --as's)"
    )
    parser.add_argument(
        "--as", dest="role", choices=ROLES, help="preview as this lifecycle (default: joiner for a bare user)"
    )
    parser.add_argument("--json", action="store_true", help="print the plans as JSON, as ?dry_run=true answers")
    parser.set_defaults(func=cmd_plan)


def _read(path: str) -> Any:
    # The input is not configuration: a file that cannot be read is an ordinary error (exit 2), not exit 3.
    from lifecycle.errors import LifecycleError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LifecycleError(f"{path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LifecycleError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _is_body(data: Any) -> bool:
    from lifecycle.errors import InvalidEvent
    from lifecycle.halo.events import elements

    if isinstance(data, list):
        return True
    if not isinstance(data, dict) or isinstance(data.get("users"), list):
        return False
    try:
        elements(data)
    except InvalidEvent:  # neither a delivery nor a runbook body: then it is a user object
        return False
    return True


def _body_for(data: Any, role: Role | None, event: str | None) -> Any:
    """A body the ingress's parser reads: the file's own, or a runbook body around a bare user."""
    if _is_body(data):
        return data
    user = data["users"][0] if isinstance(data, dict) and isinstance(data.get("users"), list) else data
    if not isinstance(user, dict) or "id" not in user:
        raise ValueError("expected a Halo user object (with its id), a webhook delivery or a runbook body")
    role = role or "joiner"
    user = dict(user)
    if role in ("leaver", "rehire", "mover"):
        user["inactive"] = role == "leaver"
    kind = event or ("created" if role == "joiner" else "updated")
    return {"event": kind, "user_id": user["id"], "user": user}


def _empty_values(value: Any, where: str) -> Iterator[str]:
    """Warnings for rendered values that are empty or end in a separator (a field or base DN was missing)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "candidates" and inner == []:
                yield f"{where}.candidates: no name candidate (a naming field is missing from the user)"
            yield from _empty_values(inner, f"{where}.{key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _empty_values(inner, f"{where}[{i}]")
    elif isinstance(value, str):
        if value == "":
            yield f"{where}: renders empty"
        elif value.rstrip().endswith(","):
            yield f"{where}: {value!r} ends in a comma (is LIFECYCLE_AD_BASE_DN set?)"


def cmd_plan(args: argparse.Namespace) -> int:
    from lifecycle.errors import LifecycleError
    from lifecycle.halo.events import Accepted, parse_items
    from lifecycle.mapping.planner import PlanContext, plan
    from lifecycle.mapping.schema import load_mapping
    from lifecycle.operations import describe_step
    from lifecycle.settings import get_settings

    settings = get_settings()
    mapping = load_mapping(settings.mapping_file)
    context = PlanContext(
        {name: settings.ad_connection(name).base_dn for name in ("default", *settings.ad_connections)}
    )
    data = _read(args.file)
    try:
        body = _body_for(data, args.role, args.event)
    except ValueError as exc:
        raise LifecycleError(f"{args.file}: {exc}") from None
    kind_override = args.event if _is_body(data) else None
    parsed = parse_items(body, kind_override=kind_override, event_map=settings.halo_event_map)
    status = _STATUS[args.role] if args.role else "unknown"
    plans, warnings, rejected = [], [], []
    for outcome in parsed.items:
        if not isinstance(outcome, Accepted):
            rejected.append({"index": outcome.index, "user_id": outcome.user_id, "problem": outcome.problem})
            continue
        item = plan(outcome.event, mapping, work_id=outcome.work_id, context=context, status=status)
        plans.append(item)
        for step in item.steps:
            warnings += [f"user {item.event.user_id} {w}" for w in _empty_values(step.params, step.key)]
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": True,
                    "plans": [p.model_dump(mode="json") for p in plans],
                    "rejected": rejected,
                    "warnings": warnings,
                },
                indent=2,
                ensure_ascii=False,
                default=str,
            )
        )
    else:
        assumed = f" (as {args.role})" if args.role else ""
        for item in plans:
            name = (item.event.user or {}).get("name") or ""
            print(f"user {item.event.user_id} {name}: {item.event.kind} -> {item.lifecycle}{assumed}".rstrip())
            if item.lifecycle == "fetch":
                print("  (a thin delivery: the user's fields are fetched from Halo when the work runs)")
            for step in item.steps:
                print(f"  {step.key} {describe_step(step)}")
        for entry in rejected:
            print(f"rejected element {entry['index']} (user {entry['user_id']}): {entry['problem']}")
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        print(f"dry run at {stamp}: nothing was queued, stored or written", file=sys.stderr)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if rejected and not plans:
        raise LifecycleError(f"{args.file}: {rejected[0]['problem']}")
    return EXIT_WARNINGS if warnings or rejected else 0
