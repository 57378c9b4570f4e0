"""The reliability figures file holds one run's figures: a later run replaces it, never merges into it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.reliability.conftest import write_figures


def test_a_run_replaces_the_figures_of_the_run_before_instead_of_merging_them(tmp_path: Path) -> None:
    path = tmp_path / "reliability" / "figures.json"
    write_figures(path, {"crash_recovery": {"sigkills": 12}, "dc_outage": {"backoffs": 2122}})
    write_figures(path, {"crash_recovery": {"sigkills": 11}})
    # The outage test did not run the second time: its old figure must not pass for one this run measured.
    assert json.loads(path.read_text(encoding="utf-8")) == {"crash_recovery": {"sigkills": 11}}
    assert [p.name for p in path.parent.iterdir()] == ["figures.json"]
