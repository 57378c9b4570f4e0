"""checkov (offline, ``--framework bicep``) finds no failed check that the templates do not justify.

checkov parses Bicep with pycep-parser and silently leaves out a file it cannot parse, so these
tests also assert that checkov parsed every file and checked every file that declares resources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.infra import bicep_model as bicep
from tests.infra.conftest import checkov_report, mutate


def _results(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = report.get("results", {}).get(kind, [])
    return results


def _describe(check: dict[str, Any]) -> str:
    return f"{check['check_id']} {check['file_path']} {check['resource']}: {check['check_name']}"


def test_checkov_reports_no_failed_check(checkov: dict[str, Any]) -> None:
    failed = _results(checkov, "failed_checks")
    assert failed == [], "checkov failed checks (fix them or justify a skip):\n" + "\n".join(map(_describe, failed))
    assert checkov["summary"]["failed"] == 0


def test_checkov_parses_every_template(checkov: dict[str, Any], templates: dict[str, bicep.BicepFile]) -> None:
    assert checkov["summary"]["parsing_errors"] == 0
    checked = {c["file_path"].lstrip("/") for kind in ("passed_checks", "skipped_checks", "failed_checks")
               for c in _results(checkov, kind)}
    # checkov has no Bicep checks for identities, role assignments, Service Bus or Application Insights;
    # the files with resources it does check must all show up.
    assert {"main.bicep", "modules/functionapp.bicep", "modules/keyvault.bicep", "modules/network.bicep",
            "modules/storage.bicep"} <= checked
    assert checked <= set(templates)
    assert checkov["summary"]["passed"] >= 30


def test_every_skip_comment_is_justified_and_suppresses_a_real_finding(
    checkov: dict[str, Any], templates: dict[str, bicep.BicepFile]
) -> None:
    skipped = {(c["file_path"].lstrip("/"), c["check_id"]) for c in _results(checkov, "skipped_checks")}
    comments = [(name, line, check, why) for name, model in templates.items()
                for line, check, why in bicep.skip_comments(model)]
    assert comments, "no skip comments found: the check is vacuous"
    for name, line, check, why in comments:
        assert len(why) >= 40, f"{name}:{line}: skip of {check} needs a real justification, not {why!r}"
        assert (name, check) in skipped, f"{name}:{line}: skip of {check} suppresses nothing; remove it"
    assert len(skipped) == len(comments)


def test_checkov_catches_a_weakened_template_and_reports_a_file_it_cannot_parse(
    parser_ready: None, infra_copy: Path
) -> None:
    # A storage account accepting TLS 1.0 must fail: checkov really evaluates these files.
    mutate(infra_copy / "modules" / "storage.bicep", "minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'")
    # pycep-parser 0.5.1 (checkov's parser) rejects five comment lines after a property, which
    # Bicep accepts: checkov would then skip the file silently, and only parsing_errors tells.
    mutate(infra_copy / "modules" / "servicebus.bicep", "  location: location\n  tags: tags\n  sku: {\n",
           "  location: location\n" + "  // note\n" * 5 + "  tags: tags\n  sku: {\n")
    report = checkov_report(infra_copy)
    failed = {(c["file_path"].lstrip("/"), c["check_id"]) for c in _results(report, "failed_checks")}
    assert ("modules/storage.bicep", "CKV_AZURE_44") in failed
    assert report["summary"]["parsing_errors"] == 1
