"""The mapping language's lookup tables, dates, prefix conditions and per-connection variables."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lifecycle.cli import main
from lifecycle.commands.check_config import EXIT_OK
from lifecycle.errors import ConfigurationError
from lifecycle.mapping.planner import PlanContext, matches, plan
from lifecycle.mapping.schema import Condition, Mapping, Not, Prefix, parse_mapping
from lifecycle.mapping.templates import MissingField, compile_template, render, table_fields
from lifecycle.settings import get_settings
from lifecycle.work import LifecycleEvent
from tests.conftest import BASE_DN, ROOT

EXAMPLE = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
TABLES = table_fields({"departments": {"Sales": "Sales Team", " Human Resources ": "HR"}})


def _event(user: dict[str, Any]) -> LifecycleEvent:
    return LifecycleEvent(
        kind="created", user_id=7, occurred_at=datetime(2026, 11, 30, tzinfo=UTC), source="webhook", user=user
    )


def _mapping(extra: str, *, replace: tuple[str, str] = ("", "")) -> Mapping:
    return parse_mapping(EXAMPLE.replace(*replace) + "\n" + extra, "m.toml")


# map: lookup tables


def test_map_looks_the_value_up_case_insensitively_and_trimmed() -> None:
    assert render("{department|map:departments}", {"department": " sales", **TABLES}) == "Sales Team"
    assert render("{department|map:departments}", {"department": "HUMAN RESOURCES", **TABLES}) == "HR"


def test_map_with_a_key_the_table_lacks_leaves_the_field_absent_or_gives_the_default() -> None:
    with pytest.raises(MissingField):
        render("{department|map:departments}", {"department": "Legal", **TABLES})
    assert render("{department|map:departments:Staff}", {"department": "Legal", **TABLES}) == "Staff"
    assert render("{department|map:departments:a:b}", {"department": "Legal", **TABLES}) == "a:b"


def test_map_never_gives_its_default_where_the_tables_are_not_in_the_context() -> None:
    # A context the planner did not build (no tables): the value is left alone, never replaced by the default.
    with pytest.raises(MissingField):
        render("{department|map:departments:Staff}", {"department": "Legal"})


def test_map_feeds_later_filters_and_a_table_value_is_one_rdn_in_a_dn_template() -> None:
    assert render("{department|map:departments|upper}", {"department": "sales", **TABLES}) == "SALES TEAM"
    from lifecycle.mapping.templates import render_dn

    dn = render_dn(
        "OU={department|map:departments},DC=x",
        {"department": "sales", **table_fields({"departments": {"sales": "A,OU=B"}})},
    )
    assert dn == "OU=A\\,OU\\=B,DC=x"


def test_map_needs_a_table_name() -> None:
    with pytest.raises(ConfigurationError, match="map takes a table name"):
        compile_template("{department|map}")


def test_a_map_naming_a_table_the_mapping_lacks_is_refused_at_load() -> None:
    with pytest.raises(ConfigurationError, match="map names table 'departmens'"):
        _mapping(
            '[tables.departments]\nSales = "S"\n',
            replace=('department = "{department}"', 'department = "{department|map:departmens}"'),
        )


def test_the_planner_maps_department_to_an_attribute() -> None:
    mapping = _mapping(
        '[tables.departments]\nSales = "Sales and Marketing"\n',
        replace=('department = "{department}"', 'department = "{department|map:departments:Other}"'),
    )
    context = PlanContext({"default": BASE_DN})
    attributes = lambda user: plan(_event(user), mapping, work_id="w", context=context).steps[0].params["attributes"]  # noqa: E731
    assert attributes({"id": 7, "name": "A B", "department": "sales"})["department"] == "Sales and Marketing"
    assert attributes({"id": 7, "name": "A B", "department": "Legal"})["department"] == "Other"
    assert "department" not in attributes({"id": 7, "name": "A B"})  # absent stays absent, never the default


# date


@pytest.mark.parametrize(
    "value",
    ["2026-12-31", "2026-12-31T00:00:00", "2026-12-31T00:00:00.000Z", "2026-12-31 00:00:00+00:00"],
)
def test_date_reads_halo_dates(value: str) -> None:
    assert render("{enddate|date:%Y-%m-%d}", {"enddate": value}) == "2026-12-31"


def test_date_format_may_hold_colons_and_defaults_to_iso_date() -> None:
    assert render("{d|date:%H:%M}", {"d": "2026-12-31T17:30:00"}) == "17:30"
    assert render("{d|date}", {"d": "2026-12-31T17:30:00"}) == "2026-12-31"


def test_date_ad_is_100ns_intervals_since_1601_utc() -> None:
    # 1970-01-01T00:00:00Z is 116444736000000000 in Windows FILETIME (the Unix epoch offset, [MS-DTYP] 2.3.3).
    assert render("{d|date:ad}", {"d": "1970-01-01T00:00:00Z"}) == "116444736000000000"
    assert render("{d|date:ad}", {"d": "1970-01-01T01:00:00+01:00"}) == "116444736000000000"
    # ad_end: the end of that day, the next midnight UTC (ADUC's "End of" for the date).
    assert render("{d|date:ad_end}", {"d": "1970-01-01T15:00:00"}) == str(116444736000000000 + 86_400 * 10**7)


def test_halo_empty_date_and_garbage_count_as_absent_or_take_the_default() -> None:
    # 04/03/2026: a locale's display form, day or month first cannot be told; refused, never guessed.
    for value in ("1900-01-01T00:00:00", "0001-01-01T00:00:00", "soon", "04/03/2026"):
        with pytest.raises(MissingField):
            render("{enddate|date:ad}", {"enddate": value})
        # 0: accountExpires "never"; the default is used as written, not fed through date again.
        assert render("{enddate|date:ad|default:0}", {"enddate": value}) == "0"


# prefix conditions


def test_prefix_condition_matches_case_insensitively_and_any_of_a_list() -> None:
    condition: Condition = {"site_name": Prefix(prefix="Lon")}
    assert matches(condition, {"site_name": " london office"})
    assert not matches(condition, {"site_name": "Manchester"})
    assert not matches(condition, {})  # absent matches nothing
    assert matches({"site_name": Prefix(prefix=["Man", "Lon"])}, {"site_name": "Manchester"})
    assert matches({"site_name": Not(**{"not": "London"})}, {"site_name": "Leeds"})


def test_prefix_is_read_from_the_mapping_and_routes_ou_rules() -> None:
    mapping = _mapping(
        "",
        replace=(
            "[[ou.rules]]\n",
            '[[ou.rules]]\nwhen = { title = { prefix = "Contract" } }\nou = "OU=Contractors,{base_dn}"\n'
            "\n[[ou.rules]]\n",
        ),
    )
    item = plan(
        _event({"id": 7, "name": "A B", "title": "contractor (IT)", "site_name": "Main", "department": "x"}),
        mapping,
        work_id="w",
        context=PlanContext({"default": BASE_DN}),
    )
    assert item.steps[0].params["ou"] == f"OU=Contractors,{BASE_DN}"


def test_an_unknown_condition_form_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        _mapping(
            "",
            replace=(
                "[[groups.rules]]                  # everyone",
                '[[groups.rules]]\nwhen = { title = { prefixx = "a" } }',
            ),
        )


# per-connection variables


ROUTED = (
    "# [[routing.rules]]",
    '[[routing.rules]]\nwhen = { client_name = "Contoso" }\nconnection = "contoso"\n#',
)


def test_connection_vars_are_template_fields_for_people_routed_there() -> None:
    text = EXAMPLE.replace(*ROUTED)
    upn = next(line for line in text.splitlines() if line.startswith("userprincipalname"))
    mapping = parse_mapping(
        text.replace(upn, 'userprincipalname = "{samaccountname}@{var.upn_suffix}"')
        + '\n[connections.contoso.vars]\nupn_suffix = "contoso.com"\n'
        + '[connections.default.vars]\nupn_suffix = "corp.test"\n',
        "m.toml",
    )
    context = PlanContext({"default": BASE_DN, "contoso": "DC=contoso,DC=test"})
    user = {"id": 7, "name": "Ann Lee", "firstname": "Ann", "surname": "Lee", "client_name": "Contoso"}
    candidates = lambda u: plan(_event(u), mapping, work_id="w", context=context).steps[0].params["names"]["candidates"]  # noqa: E731
    assert candidates(user)[0]["userprincipalname"].endswith("@contoso.com")
    assert candidates({**user, "client_name": "Fabrikam"})[0]["userprincipalname"].endswith("@corp.test")


def test_a_misspelled_variable_or_an_unrouted_connection_is_refused_at_load() -> None:
    with pytest.raises(ConfigurationError, match=r"var\.upn_sufix is not defined"):
        _mapping(
            '[connections.default.vars]\nupn_suffix = "x"\n',
            replace=('department = "{department}"', 'department = "{var.upn_sufix}"'),
        )
    with pytest.raises(ConfigurationError, match=r"connections\.contosso: no routing rule"):
        _mapping('[connections.contosso.vars]\nupn_suffix = "x"\n', replace=ROUTED)
    with pytest.raises(ConfigurationError, match="variable name"):
        _mapping('[connections.default.vars]\n"upn-suffix" = "x"\n')


def test_check_config_knows_var_fields_tables_and_prefix_conditions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = EXAMPLE.replace('department = "{department}"', 'department = "{department|map:departments:Other}"')
    text = text.replace('description = "Halo user {user_id}"', 'description = "{var.label} user {user_id}"')
    text = text.replace(
        "[[ou.rules]]\n",
        '[[ou.rules]]\nwhen = { site_name = { prefix = "Lon" } }\nou = "OU=L,{base_dn}"\n\n[[ou.rules]]\n',
        1,
    )
    text += '\n[tables.departments]\nSales = "S"\n\n[connections.default.vars]\nlabel = "Corp"\n'
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(text, encoding="utf-8")
    monkeypatch.setenv("LIFECYCLE_MAPPING_FILE", str(mapping))
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LIFECYCLE_AD_BASE_DN", BASE_DN)
    monkeypatch.setenv("LIFECYCLE_WEBHOOK_HMAC_SECRET", "hmac-secret-value")
    get_settings.cache_clear()
    try:
        assert main(["check-config"]) == EXIT_OK, capsys.readouterr().out
    finally:
        get_settings.cache_clear()


def test_ticket_request_templates_refuse_var_and_map_they_cannot_read() -> None:
    # A request's templates are rendered from the ticket, before routing and without the tables.
    requests = (
        '\n[requests]\n[[requests.types]]\nname = "starter"\nkind = "joiner"\nwhen = { tickettype_name = "New" }\n'
        '[requests.types.person]\nfirstname = "{cf.first}"\n'
    )
    tables = '[tables.departments]\nSales = "S"\n[connections.default.vars]\nupn_suffix = "x"\n'
    for template in ("{var.upn_suffix}", "{cf.dept|map:departments}"):
        with pytest.raises(ConfigurationError, match="ticket request"):
            _mapping(tables + requests.replace("{cf.first}", template))
    _mapping(tables + requests)
