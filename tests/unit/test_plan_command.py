"""``lifecycle plan`` previews every sample body and every lifecycle, warns about empty values, writes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle.cli import main
from lifecycle.settings import get_settings
from tests.conftest import BASE_DN, EVENTS, ROOT


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LIFECYCLE_MAPPING_FILE", str(ROOT / "mapping.example.toml"))
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LIFECYCLE_AD_BASE_DN", BASE_DN)
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()
    assert not (tmp_path / "data").exists(), "a preview wrote files"


@pytest.fixture
def staff_file(tmp_path: Path) -> Path:
    """The sample user as an ordinary member of staff (the sample is linked to an agent: out of scope)."""
    sample = json.loads((EVENTS / "halo-user-sample.json").read_text())
    sample["users"][0].pop("linked_agent_id")
    path = tmp_path / "staff.json"
    path.write_text(json.dumps(sample))
    return path


SAMPLES = sorted(p.name for p in EVENTS.glob("*.json"))


@pytest.mark.parametrize("sample", SAMPLES)
def test_every_sample_body_is_previewed_in_readable_form(
    data_dir: Path, capsys: pytest.CaptureFixture[str], sample: str
) -> None:
    assert main(["plan", "--file", str(EVENTS / sample)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("user ") and "->" in out.out.splitlines()[0]
    assert "nothing was queued, stored or written" in out.err


@pytest.mark.parametrize("sample", SAMPLES)
def test_every_sample_body_is_previewed_as_json(
    data_dir: Path, capsys: pytest.CaptureFixture[str], sample: str
) -> None:
    assert main(["plan", "--file", str(EVENTS / sample), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["dry_run"] is True and answer["plans"] and answer["warnings"] == []


@pytest.mark.parametrize("role", ["joiner", "mover", "leaver", "rehire"])
def test_each_lifecycle_can_be_previewed_on_a_machine_that_never_ran_the_service(
    data_dir: Path, staff_file: Path, capsys: pytest.CaptureFixture[str], role: str
) -> None:
    assert main(["plan", "--file", str(staff_file), "--as", role, "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)["plans"][0]
    assert planned["lifecycle"] == role
    assert planned["steps"], f"the {role} plan has no step"


def test_an_unset_base_dn_is_a_warning_not_a_silent_comma(
    data_dir: Path, staff_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LIFECYCLE_AD_BASE_DN")
    get_settings.cache_clear()
    assert main(["plan", "--file", str(staff_file)]) == 1
    err = capsys.readouterr().err
    assert "ends in a comma" in err and "LIFECYCLE_AD_BASE_DN" in err


def test_a_missing_naming_field_is_a_warning(
    data_dir: Path, staff_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = json.loads(staff_file.read_text())
    for field in ("firstname", "surname", "name", "emailaddress", "login"):
        sample["users"][0].pop(field, None)
    nameless = tmp_path / "nameless.json"
    nameless.write_text(json.dumps(sample))
    assert main(["plan", "--file", str(nameless)]) == 1
    assert "no name candidate" in capsys.readouterr().err
