"""An example for every command's ``--help``, kept in one table so the CLI reads the same everywhere.

A command that sets its own epilog keeps it; ``tests/unit/test_cli_conventions.py`` fails for a command that has
neither, so a new command cannot ship without one.
"""

from __future__ import annotations

import argparse

EXAMPLES: dict[str, str] = {
    "lifecycle serve": "lifecycle serve --port 7071",
    "lifecycle dev": "lifecycle dev   # what `make run` runs",
    "lifecycle dlq": "lifecycle dlq list --reason 'does not exist'",
    "lifecycle dlq list": "lifecycle dlq list --user 26 --json",
    "lifecycle dlq show": "lifecycle dlq show 12",
    "lifecycle dlq replay": "lifecycle dlq replay --reason 'does not exist' --dry-run",
    "lifecycle audit": "lifecycle audit --user 26 --since 7d",
    "lifecycle pending": "lifecycle pending --user 26",
    "lifecycle worker": "lifecycle worker   # on a machine inside the customer's network",
    "lifecycle doctor": "lifecycle doctor --json",
    "lifecycle held": "lifecycle held list",
    "lifecycle held list": "lifecycle held list --status all --json",
    "lifecycle held show": "lifecycle held show 3f2a9c",
    "lifecycle held approve": "lifecycle held approve --all --note 'planned restructure'",
    "lifecycle held reject": "lifecycle held reject 3f2a9c --note 'import mistake in Halo'",
    "lifecycle reconcile": "lifecycle reconcile --mode report --json",
    "lifecycle halo": "lifecycle halo test",
    "lifecycle halo test": "lifecycle halo test --count 5",
    "lifecycle halo webhook-check": "lifecycle halo webhook-check",
    "lifecycle requests": "lifecycle requests list --status awaiting_approval",
    "lifecycle requests list": "lifecycle requests list --json",
    "lifecycle requests show": "lifecycle requests show 123",
    "lifecycle requests cancel": "lifecycle requests cancel ticket-123",
    "lifecycle sign": "lifecycle sign body.json --kind created",
    "lifecycle journal": "lifecycle journal release WORK_ID 05-run_script --done",
    "lifecycle journal release": "lifecycle journal release WORK_ID 05-run_script",
    "lifecycle link": "lifecycle link list",
    "lifecycle link list": "lifecycle link list --json",
    "lifecycle link approve": "lifecycle link approve 7c1e --note 'same person, checked with HR'",
    "lifecycle link reject": "lifecycle link reject 7c1e",
}


Command = tuple[str, argparse.ArgumentParser, str | None]


def commands(parser: argparse.ArgumentParser, prefix: str = "lifecycle") -> list[Command]:
    """Every command and sub-command as typed (``lifecycle dlq list``), with its parser and its one-line help."""
    found: list[Command] = []
    for action in parser._actions:  # argparse keeps its sub-commands only here
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((f"{prefix} {name}", sub, helps.get(name)))
                found += commands(sub, f"{prefix} {name}")
    return found


def apply(parser: argparse.ArgumentParser) -> None:
    """Give every command its purpose line (its one-line help) and its example, unless it has its own."""
    for name, sub, purpose in commands(parser):
        if sub.description is None and purpose:
            sub.description = purpose[0].upper() + purpose[1:] + "."
        if sub.epilog is None and name in EXAMPLES:
            sub.epilog = f"example: {EXAMPLES[name]}"
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
