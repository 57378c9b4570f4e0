"""``lifecycle check-config``: validate the settings and the mapping, then look for the mistakes that validate.

Exit codes, so a deployment pipeline can tell them apart: 0 nothing found; 1 findings (the configuration loads but
something in it is wrong); 3 the configuration does not load at all (a setting or the mapping is invalid); 4 with
``--online``, a check of the real environment failed (``lifecycle doctor`` runs them: AD bind and rights, the OUs
and groups the mapping names, each token, the queue and the store).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from lifecycle.errors import ConfigurationError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_INVALID = 3
EXIT_UNREACHABLE = 4


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate settings and the mapping file, and find the mistakes that validate",
        description=(
            "Validates the settings (LIFECYCLE_* variables) and the mapping file, then looks for mistakes that "
            "load without an error: misspelled variables, undefined routing targets, missing CA files, ldap:// "
            "without StartTLS, Graph without a tenant, a base DN that is not a DN, template or condition fields "
            "no Halo user has. Exit 0: nothing found; 1: findings; 3: the configuration does not load."
        ),
        epilog="example: lifecycle check-config --json",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON (for a pipeline)")
    parser.add_argument(
        "--online",
        action="store_true",
        help="also check the real environment (lifecycle doctor: bind to AD, the OUs and groups, each token)",
    )
    parser.set_defaults(func=cmd_check_config)


def _invalid(message: str) -> int:
    print(f"lifecycle: error: invalid configuration: {message}", file=sys.stderr)
    return EXIT_INVALID


def _first_error(exc: Any, prefix: str) -> str:
    first = exc.errors()[0]
    location = ".".join(str(p) for p in first["loc"])
    return f"{prefix}{location.upper()}: {str(first['msg']).removeprefix('Value error, ')}"


def cmd_check_config(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from lifecycle.config_check import check_all
    from lifecycle.halo.auth import check_configured
    from lifecycle.mapping.schema import load_mapping
    from lifecycle.settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        return _invalid(_first_error(exc, "LIFECYCLE_"))
    try:
        settings.ad_connection("default")  # built from the LIFECYCLE_AD_* variables when first asked for
    except ValidationError as exc:
        return _invalid(_first_error(exc, "LIFECYCLE_AD_"))
    try:
        mapping = load_mapping(settings.mapping_file)
        check_configured(settings)
    except ConfigurationError as exc:
        return _invalid(str(exc))
    findings = check_all(settings, mapping, os.environ)
    if args.json:
        print(json.dumps({"mapping": str(settings.mapping_file), "digest": mapping.digest,
                          "findings": [f.as_dict() for f in findings]}, indent=2))  # fmt: skip
    else:
        for finding in findings:
            print(finding)
        if not findings:
            print(
                f"ok: mapping {settings.mapping_file} (digest {mapping.digest}), "
                f"queue {settings.queue_backend}, store {settings.store_backend}"
            )
    if findings:
        return EXIT_FINDINGS
    if args.online:
        from lifecycle.commands.doctor import run_checks
        from lifecycle.runtime import Runtime

        runtime = Runtime(settings, mapping=mapping)
        try:
            checks = list(run_checks(runtime, environ=dict(os.environ)))
        finally:
            runtime.close()
        failed = [c for c in checks if c.status == "failed"]
        for check in checks if not args.json else []:
            print(check.line())
        if args.json:
            print(json.dumps({"online": [c.__dict__ for c in checks]}, indent=2, default=str))
        return EXIT_UNREACHABLE if failed else EXIT_OK
    return EXIT_OK
