"""The command line: ``python -m lifecycle.local.samba up|info|...``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from lifecycle.errors import LifecycleError
from lifecycle.local.samba.base import CONSOLE_LOG, SambaDCError
from lifecycle.local.samba.dc import SambaDC

# --------------------------------------------------------------------------------------------------
# Command line.


class _Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, frame: object) -> NoReturn:
    raise _Interrupted(signal.Signals(signum).name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lifecycle.local.samba", description="A throwaway Samba AD DC on a loopback address."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "provision if needed, start, print the DCInfo as JSON and run until SIGINT/SIGTERM"),
        ("provision", "only provision DIR (printing the DCInfo as JSON)"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("directory", type=Path, metavar="DIR")
        command.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
        command.add_argument("--realm", default="CORP.EXAMPLE.TEST")
        command.add_argument("--domain", default="CORP")
        command.add_argument("--template-cache", type=Path, default=None, help="where the provisioned template lives")
        if name == "up":
            command.add_argument(
                "--max-runtime", type=int, default=4 * 3600, help="samba exits by itself after this many seconds"
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        0 on success (for ``up``: stopped by a signal), 1 on failure, 130 if interrupted early.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    dc: SambaDC | None = None
    try:
        dc = SambaDC(
            args.directory,
            host=args.host,
            realm=args.realm,
            domain=args.domain,
            template_cache=args.template_cache,
            max_runtime_seconds=getattr(args, "max_runtime", 4 * 3600),
        )
        if args.command == "provision":
            dc.ensure_provisioned()
            print(json.dumps(dc.info.as_dict()), flush=True)
            return 0
        info = dc.start()
        # One line, so that a script can read exactly one line and go on.
        print(json.dumps({**info.as_dict(), "pid": str(dc.pid)}), flush=True)
        code = dc.wait()
        print(
            f"samba-dc: error: the DC exited by itself (exit code {code}; log: {dc.directory / CONSOLE_LOG})",
            file=sys.stderr,
        )
        return 1
    except _Interrupted:
        return 0 if dc is not None and dc.pid is not None else 130
    except (LifecycleError, OSError, subprocess.SubprocessError) as exc:
        summary = exc.summary if isinstance(exc, SambaDCError) else str(exc)
        print(f"samba-dc: error: {summary.splitlines()[0] if summary else type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        # Ignore further signals while stopping, so a second Ctrl-C cannot orphan samba half-way.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        if dc is not None:
            dc.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
