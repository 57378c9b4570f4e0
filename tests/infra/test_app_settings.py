"""The template sets every app setting the code reads, and nothing else; secrets only by reference.

The expected names come from the code at test time (``lifecycle.settings.app_setting_names()``
and ``HOST_SETTING_NAMES``), so a setting added to ``settings.py`` fails here until its one line is
added to the ``appSettings`` variable of ``infra/main.bicep``.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from lifecycle.settings import DEFAULT_HALO_EVENT_MAP, ENV_PREFIX, HOST_SETTING_NAMES, Settings, app_setting_names
from tests.infra import bicep_model as bicep
from tests.infra.bicep_model import Expr, Interp, Ref, Value, merged_object, source
from tests.infra.conftest import INFRA, bicep_files, mutate

# Settings the code reads that Azure must NOT set: they only make sense on a developer's machine.
LOCAL_ONLY = {
    "LIFECYCLE_HOST",  # the local HTTP host of `serve`; in Azure the Functions host listens
    "LIFECYCLE_PORT",  # likewise
    "LIFECYCLE_DATA_DIR",  # SQLite files of the embedded queue and store; Azure uses Service Bus and Tables
    # Development connection strings: Azure connects with the managed identity, and a connection
    # string, if set, would take precedence over it.
    "LIFECYCLE_SERVICEBUS_CONNECTION_STRING",
    "LIFECYCLE_TABLE_CONNECTION_STRING",
}

# Names that look like secrets but are not.
NOT_SECRET = {
    # The component accepts only Entra-authenticated telemetry (DisableLocalAuth), so the
    # instrumentation key in it authorises nothing.
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
}
SECRET_PATTERN = re.compile(r"(_PASSWORD|_SECRET|_CONNECTION_STRING)$")

# Settings Flex Consumption rejects or that belong to other plans.
FLEX_FORBIDDEN = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_TIME_ZONE",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_NODE_DEFAULT_VERSION",
    "AzureWebJobsStorage",  # the connection-string form; the identity form is AzureWebJobsStorage__*
}

KEY_VAULT_REFERENCE = re.compile(r"@Microsoft\.KeyVault\(VaultName=\$\{vaultName\};SecretName=([a-z0-9-]+)\)")


def template_settings(main: bicep.BicepFile) -> dict[str, Value]:
    """Every setting the template may set (both branches of conditional additions)."""
    return merged_object(main.variables["appSettings"].value)


def expected_settings() -> set[str]:
    return set(app_setting_names() | HOST_SETTING_NAMES)


def _carries_secret(annotation: object) -> bool:
    """Whether a pydantic field type holds a SecretStr anywhere (directly, in a model, a dict...)."""
    if annotation is SecretStr:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return any(_carries_secret(f.annotation) for f in annotation.model_fields.values())
    return any(_carries_secret(arg) for arg in typing.get_args(annotation) if arg is not types.NoneType)


def secret_settings() -> set[str]:
    fields = Settings.model_fields.items()
    from_types = {ENV_PREFIX + name.upper() for name, f in fields if _carries_secret(f.annotation)}
    from_names = {name for name in expected_settings() if SECRET_PATTERN.search(name)} - NOT_SECRET
    return from_types | from_names


def coverage_problems(settings: dict[str, Value], expected: set[str]) -> list[str]:
    problems = [f"{name} is read by the code but not set by the template"
                for name in sorted(expected - LOCAL_ONLY - set(settings))]
    problems += [f"{name} is set by the template but the code does not read it"
                 for name in sorted(set(settings) - expected)]
    problems += [f"{name} is local-only and must not be set in Azure" for name in sorted(LOCAL_ONLY & set(settings))]
    return problems


def secret_problems(main: bicep.BicepFile, vault: bicep.BicepFile) -> list[str]:
    vault_secrets = {
        r.body["name"] for r in vault.resources_of_type("Microsoft.KeyVault/vaults/secrets") if not r.existing
    }
    problems = []
    settings = template_settings(main)
    for name in sorted(secret_settings() & set(settings)):
        value = settings[name]
        match = KEY_VAULT_REFERENCE.fullmatch(value.template) if isinstance(value, Interp) else None
        if match is None:
            problems.append(f"{name} must be a Key Vault reference, not {value!r}")
        elif match.group(1) not in vault_secrets:
            problems.append(f"{name} refers to secret {match.group(1)!r}, which modules/keyvault.bicep does not create")
    return problems


# ---------------------------------------------------------------------------------------------


def test_the_local_only_list_names_settings_the_code_still_reads() -> None:
    assert expected_settings() >= LOCAL_ONLY, LOCAL_ONLY - expected_settings()


def test_every_setting_the_code_reads_is_set_by_the_template_and_nothing_else(main: bicep.BicepFile) -> None:
    assert coverage_problems(template_settings(main), expected_settings()) == []


def test_a_setting_added_to_the_code_but_not_to_the_template_fails_the_check(main: bicep.BicepFile) -> None:
    expected = expected_settings() | {"LIFECYCLE_SOME_NEW_SETTING"}
    assert coverage_problems(template_settings(main), expected) == [
        "LIFECYCLE_SOME_NEW_SETTING is read by the code but not set by the template"
    ]


def test_a_setting_removed_from_the_template_or_unknown_to_the_code_fails_the_check(
    parser_ready: None, infra_copy: Path
) -> None:
    path = infra_copy / "main.bicep"
    mutate(path, "  LIFECYCLE_LOG_LEVEL: logLevel\n", "  LIFECYCLE_LOGLEVEL: logLevel\n")
    problems = coverage_problems(template_settings(bicep.parse_file(path)), expected_settings())
    assert problems == [
        "LIFECYCLE_LOG_LEVEL is read by the code but not set by the template",
        "LIFECYCLE_LOGLEVEL is set by the template but the code does not read it",
    ]


def test_app_settings_are_listed_in_one_place_only(templates: dict[str, bicep.BicepFile]) -> None:
    known = expected_settings() | FLEX_FORBIDDEN
    for name, model in templates.items():
        if name != "main.bicep":
            assert bicep.object_keys(model) & known == set(), f"{name} sets app settings: keep them all in main.bicep"
    site = templates["modules/functionapp.bicep"].resources["site"]
    app_settings = bicep.dig(site.body, "properties", "siteConfig", "appSettings")
    assert isinstance(app_settings, Expr) and "items(appSettings)" in app_settings.source
    assert templates["main.bicep"].modules["functionApp"].params["appSettings"] == Ref("appSettings")


def test_every_secret_setting_is_a_key_vault_reference_to_a_secret_the_template_creates(
    templates: dict[str, bicep.BicepFile],
) -> None:
    main = templates["main.bicep"]
    assert secret_settings() & set(template_settings(main)), "no secret settings found: the check is vacuous"
    assert secret_problems(main, templates["modules/keyvault.bicep"]) == []
    assert source(main.variables["vaultName"].value) == "keyVault.outputs.name"


def test_settings_that_hold_secrets_inside_json_count_as_secrets() -> None:
    # LIFECYCLE_AD_CONNECTIONS is a dict of ADConnection, whose password is a SecretStr.
    assert "LIFECYCLE_AD_CONNECTIONS" in secret_settings()
    assert "LIFECYCLE_AD_USER" not in secret_settings()


def test_a_secret_set_as_a_plain_value_fails_the_check(parser_ready: None, infra_copy: Path) -> None:
    main = infra_copy / "main.bicep"
    mutate(main, "  LIFECYCLE_AD_PASSWORD: '@Microsoft.KeyVault(VaultName=${vaultName};SecretName=ad-bind-password)'\n",
           "  LIFECYCLE_AD_PASSWORD: adUser\n")
    problems = secret_problems(bicep.parse_file(main), bicep.parse_file(infra_copy / "modules" / "keyvault.bicep"))
    assert problems == ["LIFECYCLE_AD_PASSWORD must be a Key Vault reference, not Ref(name='adUser')"]


def test_a_reference_to_a_secret_the_vault_does_not_hold_fails_the_check(parser_ready: None, infra_copy: Path) -> None:
    main = infra_copy / "main.bicep"
    mutate(main, "SecretName=webhook-hmac-secret)", "SecretName=webhook-hmac)")
    problems = secret_problems(bicep.parse_file(main), bicep.parse_file(infra_copy / "modules" / "keyvault.bicep"))
    assert problems == [
        "LIFECYCLE_WEBHOOK_HMAC_SECRET refers to secret 'webhook-hmac', which modules/keyvault.bicep does not create"
    ]


def test_no_setting_flex_consumption_rejects_is_set(main: bicep.BicepFile) -> None:
    assert FLEX_FORBIDDEN & set(template_settings(main)) == set()


def test_host_connections_use_the_user_assigned_identity(main: bicep.BicepFile) -> None:
    settings = template_settings(main)
    assert source(main.variables["identityClientId"].value) == "identity.outputs.clientId"
    for prefix in ("AzureWebJobsStorage", "ServiceBusConnection"):
        assert settings[f"{prefix}__credential"] == "managedidentity"
        assert settings[f"{prefix}__clientId"] == Ref("identityClientId")
    assert settings["AZURE_CLIENT_ID"] == Ref("identityClientId")
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == Interp(
        "ClientId=${identityClientId};Authorization=AAD", ("identityClientId",)
    )
    assert source(settings["ServiceBusConnection__fullyQualifiedNamespace"]) == (
        "serviceBus.outputs.fullyQualifiedNamespace"
    )
    assert settings["LIFECYCLE_SERVICEBUS_NAMESPACE"] == settings["ServiceBusConnection__fullyQualifiedNamespace"]


def test_azure_runs_on_service_bus_and_tables_and_never_on_plaintext_ldap(main: bicep.BicepFile) -> None:
    settings = template_settings(main)
    assert settings["LIFECYCLE_QUEUE_BACKEND"] == "servicebus"
    assert settings["LIFECYCLE_STORE_BACKEND"] == "table"
    assert settings["LIFECYCLE_AD_ALLOW_PLAINTEXT"] == "false"  # a literal, not a parameter
    assert main.params["webhookAuth"].decorators["allowed"] == [["any", "all"]]  # never "none"


def test_the_apps_max_deliveries_and_the_queues_max_delivery_count_are_one_parameter(main: bicep.BicepFile) -> None:
    assert source(template_settings(main)["LIFECYCLE_MAX_DELIVERIES"]) == "string(maxDeliveryCount)"
    assert main.modules["serviceBus"].params["maxDeliveryCount"] == Ref("maxDeliveryCount")
    assert main.params["maxDeliveryCount"].default == Settings.model_fields["max_deliveries"].default


def test_the_default_halo_event_map_is_the_codes(main: bicep.BicepFile) -> None:
    assert main.params["haloEventMap"].default == DEFAULT_HALO_EVENT_MAP


# ---------------------------------------------------------------------------------------------
# The values the template would set, with its defaults and main.parameters.json, are valid settings.
# ---------------------------------------------------------------------------------------------


def _as_setting(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def evaluate(main: bicep.BicepFile, value: Value, parameters: dict[str, object]) -> str | None:
    """The string a setting gets from literals and parameters; None when it needs a deployment."""
    if isinstance(value, str):
        return value
    if isinstance(value, Ref) and value.name in parameters:
        return _as_setting(parameters[value.name])
    if isinstance(value, Expr) and value.call_name == "string":
        argument = value.arguments[0]
        if isinstance(argument, Ref) and argument.name in parameters:
            return _as_setting(parameters[argument.name])
    if isinstance(value, Expr) and value.kind == "ternary_expression":
        condition, when_true, when_false = value.operands()
        if isinstance(condition, Ref) and condition.name in parameters:
            return evaluate(main, when_true if parameters[condition.name] else when_false, parameters)
    return None


def included_settings(main: bicep.BicepFile, parameters: Mapping[str, object]) -> dict[str, Value]:
    """The settings of ``union({...}, empty(p) ? {} : {...}, ...)`` for these parameter values."""
    value = main.variables["appSettings"].value
    assert isinstance(value, Expr) and value.call_name == "union"
    included: dict[str, Value] = {}
    for part in value.arguments:
        if isinstance(part, dict):
            included.update(part)
            continue
        assert isinstance(part, Expr) and part.kind == "ternary_expression", part
        condition, when_empty, otherwise = part.operands()
        assert isinstance(condition, Expr) and condition.call_name == "empty", condition
        (argument,) = condition.arguments
        assert isinstance(argument, Ref) and isinstance(when_empty, dict) and isinstance(otherwise, dict)
        included.update(when_empty if not parameters[argument.name] else otherwise)
    return included


def deployed_values(main: bicep.BicepFile) -> dict[str, str]:
    """The LIFECYCLE_* values a deployment with the defaults and main.parameters.json would set."""
    document = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    parameters: dict[str, object] = {
        name: p.default for name, p in main.params.items() if isinstance(p.default, (str, int, bool, list, dict))
    }
    parameters.update({name: entry["value"] for name, entry in document["parameters"].items()})
    values = {}
    for name, value in included_settings(main, parameters).items():
        if name.startswith(ENV_PREFIX):
            evaluated = evaluate(main, value, parameters)
            if evaluated is not None:
                values[name] = evaluated
    return values


def test_the_values_the_template_sets_are_valid_settings_for_the_code(
    main: bicep.BicepFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = deployed_values(main)
    for name in list(app_setting_names()):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.queue_backend == "servicebus"
    assert settings.store_backend == "table"
    assert settings.ad_allow_plaintext is False
    assert settings.max_deliveries == 10
    assert settings.halo_event_map == DEFAULT_HALO_EVENT_MAP
    assert settings.ad_url.startswith("ldaps://")
    assert str(settings.mapping_file) == "mapping.toml"
    # Everything not needing a deployment output or a secret was evaluated.
    unevaluated = {n for n in template_settings(main) if n.startswith(ENV_PREFIX)} - set(values)
    assert unevaluated == {
        # Deployment outputs.
        "LIFECYCLE_SERVICEBUS_NAMESPACE",
        # Computed at deployment: the cloud's sign-in host and tenant; the app's unique host name.
        "LIFECYCLE_CONSOLE_ENTRA_AUTHORITY",
        "LIFECYCLE_CONSOLE_REDIRECT_URI",
        "LIFECYCLE_SERVICEBUS_QUEUE",
        "LIFECYCLE_TABLE_ENDPOINT",
        # Left out while their parameters are empty (an empty CA file would read as the path ".").
        "LIFECYCLE_AD_CA_FILE",
        "LIFECYCLE_AD_TLS_SERVER_NAME",
    } | (secret_settings() & set(template_settings(main)))


def test_optional_ad_settings_are_set_only_when_their_parameters_are_given(main: bicep.BicepFile) -> None:
    given = {"adCaFile": "certs/corp-ca.pem", "adTlsServerName": "dc01.corp.example.com"}
    assert included_settings(main, given)["LIFECYCLE_AD_CA_FILE"] == Ref("adCaFile")
    assert "LIFECYCLE_AD_CA_FILE" not in included_settings(main, {"adCaFile": "", "adTlsServerName": ""})


@pytest.mark.parametrize("name", [p.relative_to(INFRA).as_posix() for p in bicep_files()])
def test_no_template_contains_a_literal_key_vault_secret_value(
    templates: dict[str, bicep.BicepFile], name: str
) -> None:
    for resource in templates[name].resources_of_type("Microsoft.KeyVault/vaults/secrets"):
        value = bicep.dig(resource.body, "properties", "value")
        assert isinstance(value, Ref), f"{name}: {resource.symbol} must take its value from a parameter"
