"""The mapping file is validated at load, and its errors name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.errors import ConfigurationError
from lifecycle.mapping.schema import load_mapping, parse_mapping
from tests.conftest import ROOT

EXAMPLE = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")


def test_the_example_mapping_is_valid() -> None:
    mapping = load_mapping(ROOT / "mapping.example.toml")
    assert mapping.anchor == "employeeID"
    assert mapping.lifecycles.joiner[0].action == "create_user"
    assert len(mapping.digest) == 16


def test_an_unknown_action_names_the_step() -> None:
    text = EXAMPLE.replace('mover = ["modify_properties"', 'mover = ["modify_propertys"')
    with pytest.raises(ConfigurationError) as caught:
        parse_mapping(text, "m.toml")
    assert "m.toml" in str(caught.value)
    assert "lifecycles.mover[0].action" in str(caught.value)


def test_a_step_naming_a_missing_template_is_refused() -> None:
    text = EXAMPLE.replace(
        'template = "leaver" },\n  { action = "remove', 'template = "levaer" },\n  { action = "remove', 1
    )
    with pytest.raises(ConfigurationError, match="levaer"):
        parse_mapping(text, "m.toml")


def test_a_template_with_an_unknown_filter_is_refused_at_load() -> None:
    text = EXAMPLE.replace('givenName = "{firstname}"', 'givenName = "{firstname|shout}"')
    with pytest.raises(ConfigurationError, match="unknown filter 'shout'"):
        parse_mapping(text, "m.toml")


def test_invalid_toml_and_unreadable_files_are_reported_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"m.toml: not valid TOML"):
        parse_mapping("anchor = ", "m.toml")
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_mapping(tmp_path / "absent.toml")


def test_templates_may_not_manage_the_password_or_the_anchor() -> None:
    text = EXAMPLE.replace('givenName = "{firstname}"', 'unicodePwd = "{firstname}"')
    with pytest.raises(ConfigurationError, match="managed by the service"):
        parse_mapping(text, "m.toml")


def test_unknown_keys_are_refused_rather_than_ignored() -> None:
    with pytest.raises(ConfigurationError, match=r"ou\.defualt"):
        parse_mapping(EXAMPLE.replace('default = "OU=Staff', 'defualt = "OU=Staff'), "m.toml")
