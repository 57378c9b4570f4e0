"""Fixtures of the infrastructure tests: the parsed templates and the offline tools.

The tools are tree-sitter + tree-sitter-bicep (imported in the main venv, pinned in
requirements-dev.txt) and checkov (run from its own venv, ``.venv-infra``, built from
requirements-infra.txt, because it pins many packages of its own). When one is missing the tests
skip with the reason, except in CI (``CI`` set), where a missing tool is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.infra import bicep_model as bicep

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
INFRA_VENV = Path(os.environ.get("INFRA_VENV", str(REPO / ".venv-infra")))
CHECKOV = INFRA_VENV / "bin" / "checkov"
SETUP_HINT = "run `make setup` (or see requirements-infra.txt)"


def missing_tool(reason: str) -> None:
    """Skip the test, or fail it in CI, where every tool must be present."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(f"{reason}; {SETUP_HINT}")


@pytest.fixture(scope="session")
def parser_ready() -> None:
    reason = bicep.tools_missing()
    if reason:
        missing_tool(reason)


def bicep_files(root: Path = INFRA) -> list[Path]:
    return sorted(root.rglob("*.bicep"))


@pytest.fixture(scope="session")
def templates(parser_ready: None) -> dict[str, bicep.BicepFile]:
    """Every template under infra/, keyed by its path relative to infra/ (``modules/storage.bicep``)."""
    return {path.relative_to(INFRA).as_posix(): bicep.parse_file(path) for path in bicep_files()}


@pytest.fixture(scope="session")
def main(templates: dict[str, bicep.BicepFile]) -> bicep.BicepFile:
    return templates["main.bicep"]


@pytest.fixture
def infra_copy(tmp_path: Path) -> Path:
    """A scratch copy of infra/ for tests that break a template on purpose."""
    target = tmp_path / "infra"
    shutil.copytree(INFRA, target)
    return target


def mutate(path: Path, old: str, new: str) -> None:
    """Replace exactly one occurrence of ``old`` in a template copy (so the mutation cannot miss)."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def checkov_report(directory: Path) -> dict[str, Any]:
    """Run checkov on ``directory`` offline and return its JSON report for the bicep framework."""
    if not CHECKOV.exists():
        missing_tool(f"checkov is not installed at {CHECKOV}")
    result = subprocess.run(
        [str(CHECKOV), "--framework", "bicep", "--directory", str(directory), "--output", "json",
         "--skip-download", "--compact"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        # Offline: no update check, no platform calls.
        env={**os.environ, "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false", "BC_SKIP_MAPPING": "TRUE"},
    )
    # 0: no failures, 1: failures found; anything else is checkov itself failing.
    assert result.returncode in (0, 1), f"checkov exited {result.returncode}:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    if isinstance(report, list):
        report = next(r for r in report if r.get("check_type") == "bicep")
    assert isinstance(report, dict)
    return report


@pytest.fixture(scope="session")
def checkov() -> dict[str, Any]:
    """The checkov report of the real templates (run once per session)."""
    return checkov_report(INFRA)
