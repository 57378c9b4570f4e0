"""docs/mapping.md and docs/mapping.schema.json are what the schema renders now, and the schema fits real mappings."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from lifecycle.actions import registry
from lifecycle.mapping.reference import (
    DOC,
    EXAMPLE_MAPPINGS,
    JSON_SCHEMA,
    SECTION_EXAMPLES,
    render_json_schema,
    render_markdown,
    step_examples,
)
from lifecycle.mapping.schema import Mapping, StepSpec
from tests.conftest import ROOT

FIX = "run: python -m lifecycle.mapping.reference"


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    document = json.loads(JSON_SCHEMA.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(document)
    return Draft202012Validator(document)


def _example() -> dict[str, Any]:
    return tomllib.loads((ROOT / "mapping.example.toml").read_text(encoding="utf-8"))


def _errors(validator: Draft202012Validator, data: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(data)]


def test_the_mapping_reference_is_what_the_schema_renders() -> None:
    assert DOC.read_text(encoding="utf-8") == render_markdown(), FIX


def test_the_json_schema_is_what_the_schema_renders() -> None:
    assert JSON_SCHEMA.read_text(encoding="utf-8") == render_json_schema(), FIX


def test_the_example_mappings_are_covered() -> None:
    assert ROOT / "mapping.example.toml" in EXAMPLE_MAPPINGS
    assert len([p for p in EXAMPLE_MAPPINGS if p.parent == ROOT / "tests" / "events"]) >= 2


@pytest.mark.parametrize("path", EXAMPLE_MAPPINGS, ids=lambda p: p.name)
def test_each_example_mapping_validates_against_the_json_schema(validator: Draft202012Validator, path: Path) -> None:
    assert _errors(validator, tomllib.loads(path.read_text(encoding="utf-8"))) == []


@pytest.mark.parametrize("action", sorted(registry()))
def test_each_action_example_validates_against_the_json_schema(validator: Draft202012Validator, action: str) -> None:
    data = _example()
    data["lifecycles"]["joiner"] = [step_examples()[action][1]]
    assert _errors(validator, data) == []


@pytest.mark.parametrize("section", sorted(SECTION_EXAMPLES))
def test_each_section_example_validates_against_the_json_schema(validator: Draft202012Validator, section: str) -> None:
    data = {**_example(), **tomllib.loads(SECTION_EXAMPLES[section])}
    assert _errors(validator, data) == []


def test_every_section_has_an_example() -> None:
    assert set(Mapping.model_fields) - {"digest"} == set(SECTION_EXAMPLES)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d.update(atributes={"sn": "{surname}"}), ""),
        (lambda d: d["lifecycles"]["joiner"].append({"action": "create_users"}), "lifecycles/joiner/4"),
        (lambda d: d["lifecycles"]["joiner"].append({"action": "assign_licenses", "sku": "E3"}), "lifecycles/joiner/4"),
        (lambda d: d["lifecycles"]["joiner"].append({"action": "apply_template"}), "lifecycles/joiner/4"),
        (lambda d: d["ou"]["rules"][0].update(when={"site_name": {"prefixx": "Lon"}}), "ou/rules/0/when/site_name"),
        (
            lambda d: d.update(connections={"default": {"vars": {"upn_suffix": 1}}}),
            "connections/default/vars/upn_suffix",
        ),
    ],
    ids=["misspelled section", "unknown action", "unknown parameter", "missing parameter", "condition", "var type"],
)
def test_the_json_schema_refuses_mistakes(validator: Draft202012Validator, change: Any, where: str) -> None:
    data = _example()
    change(data)
    errors = _errors(validator, data)
    assert errors and any(e.startswith(f"{where}:") for e in errors), errors


def test_the_reference_names_every_filter_condition_form_and_action() -> None:
    text = DOC.read_text(encoding="utf-8")
    from lifecycle.mapping.templates import CONTEXT_FILTERS, FILTERS

    for name in [*FILTERS, *CONTEXT_FILTERS, "default"]:
        assert f"| `{name}` |" in text
    for form in ("{ not = ", "{ prefix = "):
        assert form in text
    for action in registry():
        assert f"#### `{action}`" in text


@pytest.mark.parametrize("path", [*EXAMPLE_MAPPINGS, ROOT / "docs" / "halo-setup.md"], ids=lambda p: p.name)
def test_conditions_shown_in_examples_and_docs_are_valid(path: Path) -> None:
    # `cf.employee_type = ...` unquoted is a nested TOML table, which no condition accepts.
    lines = [line.strip().removeprefix("#").strip() for line in path.read_text(encoding="utf-8").splitlines()]
    shown = [line for line in lines if line.startswith("when = {")]
    for line in shown:
        StepSpec.model_validate({"action": "sync_groups", **tomllib.loads(line.split("  #")[0])})
