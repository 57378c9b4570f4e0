"""The settings' reader of the environment: ``LIFECYCLE_<FIELD>`` in any case, empty means unset, JSON where the
field is a dict or a list, and arguments over the environment (as pydantic-settings read them before)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from lifecycle.settings import Settings, environment_values


def test_a_variable_is_read_in_any_case_and_an_empty_one_is_not_set() -> None:
    values = environment_values({"lifecycle_ad_base_dn": "DC=corp", "LIFECYCLE_AD_CA_FILE": "", "OTHER": "x"})
    assert values == {"ad_base_dn": "DC=corp"}
    assert Settings.model_validate(values).ad_ca_file is None


def test_dict_and_list_variables_are_json_and_others_are_text() -> None:
    values = environment_values(
        {"LIFECYCLE_GUARD_ACTIONS": '["disable_user"]', "LIFECYCLE_HALO_TICKET_STATUSES": '{"completed": 9}',
         "LIFECYCLE_PORT": "8080", "LIFECYCLE_WEBHOOK_HMAC_HEADER": '["not", "json", "here"]'}
    )  # fmt: skip
    assert values == {
        "guard_actions": ["disable_user"],
        "halo_ticket_statuses": {"completed": 9},
        "port": "8080",
        "webhook_hmac_header": '["not", "json", "here"]',
    }


def test_a_json_variable_that_does_not_parse_is_a_validation_error_naming_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        environment_values({"LIFECYCLE_FILE_ROOTS": "home=/srv/home"})
    (error,) = caught.value.errors()
    assert error["loc"] == ("file_roots",) and error["type"] == "json_invalid"


def test_arguments_override_the_environment_and_extend_its_dicts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFECYCLE_PORT", "8080")
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", "/var/lib/lifecycle")
    monkeypatch.setenv("LIFECYCLE_HALO_TICKET_STATUSES", '{"completed": 9, "failed": 10}')
    settings = Settings(port=9090, halo_ticket_statuses={"failed": 11})
    assert settings.port == 9090
    assert settings.data_dir == Path("/var/lib/lifecycle")
    assert settings.halo_ticket_statuses == {"completed": 9, "failed": 11}


def test_an_invalid_variable_fails_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFECYCLE_WORKER_CONCURRENCY", "0")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert caught.value.errors()[0]["loc"] == ("worker_concurrency",)
