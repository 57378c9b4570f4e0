"""The security-relevant properties of the templates, read from the parsed Bicep.

Each check is a function that returns the problems it finds, so the same check runs against the
real templates (no problems) and against a copy broken on purpose (the problem is reported).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.infra import bicep_model as bicep
from tests.infra.bicep_model import MISSING, Expr, Ref, Value, dig, source
from tests.infra.conftest import INFRA, bicep_files, mutate

Templates = dict[str, bicep.BicepFile]

# Role definition ids (reference/azure-functions.md) and the resource type each is assigned on.
SERVICE_BUS_DATA_SENDER = "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"
SERVICE_BUS_DATA_RECEIVER = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"

EXPECTED_ROLES = {
    (SERVICE_BUS_DATA_SENDER, "Microsoft.ServiceBus/namespaces/queues"),
    (SERVICE_BUS_DATA_RECEIVER, "Microsoft.ServiceBus/namespaces/queues"),
    (STORAGE_BLOB_DATA_OWNER, "Microsoft.Storage/storageAccounts"),
    (STORAGE_TABLE_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts"),
    (KEY_VAULT_SECRETS_USER, "Microsoft.KeyVault/vaults"),
    (MONITORING_METRICS_PUBLISHER, "Microsoft.Insights/components"),
}


def load(root: Path) -> Templates:
    return {p.relative_to(root).as_posix(): bicep.parse_file(p) for p in bicep_files(root)}


def only(model: bicep.BicepFile, resource_type: str) -> bicep.Resource:
    found = [r for r in model.resources_of_type(resource_type) if not r.existing]
    assert len(found) == 1, f"{model.path}: expected one {resource_type}, found {len(found)}"
    return found[0]


def properties(resource: bicep.Resource) -> dict[str, Value]:
    props = resource.body.get("properties", {})
    assert isinstance(props, dict), f"{resource.symbol}.properties is not an object literal"
    return props


def resolve(model: bicep.BicepFile, value: Value) -> Value:
    """Follow a variable reference, or a member of an object variable (``roleIds.x``)."""
    if isinstance(value, Ref) and value.name in model.variables:
        return resolve(model, model.variables[value.name].value)
    if isinstance(value, Expr) and value.kind == "member_expression":
        head, _, rest = value.source.partition(".")
        if head in model.variables and rest:
            found = dig(model.variables[head].value, *rest.split("."))
            return value if found is MISSING else resolve(model, found)  # type: ignore[arg-type]
    return value


def expect(problems: list[str], condition: bool, message: str) -> None:
    if not condition:
        problems.append(message)


def param_of(model: bicep.BicepFile, value: Value) -> bicep.Param | None:
    return model.params.get(value.name) if isinstance(value, Ref) else None


# ---------------------------------------------------------------------------------------------
# Service Bus
# ---------------------------------------------------------------------------------------------


def queue_problems(templates: Templates) -> list[str]:
    module = templates["modules/servicebus.bicep"]
    queue = properties(only(module, "Microsoft.ServiceBus/namespaces/queues"))
    problems: list[str] = []
    expect(problems, queue.get("requiresSession") is True, "the queue must require sessions (order per person)")
    expect(problems, queue.get("requiresDuplicateDetection") is True, "the queue must detect duplicates")
    window = param_of(module, queue.get("duplicateDetectionHistoryTimeWindow"))
    expect(problems, window is not None, "the duplicate detection window must be a parameter")
    deliveries = param_of(module, queue.get("maxDeliveryCount"))
    expect(problems, deliveries is not None and deliveries.type == "int",
           "maxDeliveryCount must be an int parameter")
    expect(problems, param_of(module, queue.get("lockDuration")) is not None, "lockDuration must be a parameter")
    expect(problems, queue.get("deadLetteringOnMessageExpiration") is True,
           "expired messages must be dead-lettered, not dropped")
    return problems


def test_the_work_queue_requires_sessions_duplicate_detection_and_a_max_delivery_count(templates: Templates) -> None:
    assert queue_problems(templates) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("    requiresSession: true\n", "", "sessions"),
        ("    requiresDuplicateDetection: true\n", "    requiresDuplicateDetection: false\n", "duplicates"),
        ("    maxDeliveryCount: maxDeliveryCount\n", "    maxDeliveryCount: 10\n", "maxDeliveryCount"),
        ("    deadLetteringOnMessageExpiration: true\n", "", "dead-lettered"),
    ],
)
def test_a_queue_without_one_of_them_fails_the_check(
    parser_ready: None, infra_copy: Path, old: str, new: str, problem: str
) -> None:
    mutate(infra_copy / "modules" / "servicebus.bicep", old, new)
    problems = queue_problems(load(infra_copy))
    assert len(problems) == 1 and problem in problems[0], problems


def test_the_storage_account_declares_every_table_the_app_uses(main: bicep.BicepFile) -> None:
    from lifecycle.state.table import TABLES

    declared = main.params["tableNames"].default
    assert isinstance(declared, list)
    assert sorted(str(name) for name in declared) == sorted(TABLES)


def test_the_queue_defaults_match_the_app(main: bicep.BicepFile) -> None:
    assert main.params["queueName"].default == "lifecycle-work"
    assert main.params["maxDeliveryCount"].default == 10
    assert main.params["serviceBusSku"].default == "Standard"
    module = main.modules["serviceBus"]
    for name in ("queueName", "maxDeliveryCount", "duplicateDetectionWindow", "lockDuration"):
        assert module.params[name] == Ref(name), f"main.bicep must pass its {name} parameter to the queue"


def test_service_bus_disables_local_auth_and_offers_no_basic_tier(templates: Templates, main: bicep.BicepFile) -> None:
    module = templates["modules/servicebus.bicep"]
    namespace = only(module, "Microsoft.ServiceBus/namespaces")
    assert properties(namespace)["disableLocalAuth"] is True
    assert properties(namespace)["minimumTlsVersion"] == "1.2"
    sku = param_of(module, dig(namespace.body, "sku", "name"))  # type: ignore[arg-type]
    assert sku is not None and sku.decorators["allowed"] == [["Standard", "Premium"]]
    assert main.params["serviceBusSku"].decorators["allowed"] == [["Standard", "Premium"]]
    assert not module.resources_of_type("Microsoft.ServiceBus/namespaces/AuthorizationRules")


# ---------------------------------------------------------------------------------------------
# Storage, Key Vault, Application Insights
# ---------------------------------------------------------------------------------------------


def storage_problems(templates: Templates) -> list[str]:
    module = templates["modules/storage.bicep"]
    account = properties(only(module, "Microsoft.Storage/storageAccounts"))
    problems: list[str] = []
    expect(problems, account.get("allowSharedKeyAccess") is False, "shared key access must be disabled")
    expect(problems, account.get("allowBlobPublicAccess") is False, "public blob access must be disabled")
    expect(problems, account.get("minimumTlsVersion") == "TLS1_2", "minimum TLS must be 1.2")
    expect(problems, account.get("supportsHttpsTrafficOnly") is True, "HTTPS only")
    container = properties(only(module, "Microsoft.Storage/storageAccounts/blobServices/containers"))
    expect(problems, container.get("publicAccess") == "None", "the deployment container must be private")
    return problems


def test_storage_disables_shared_keys_public_blobs_and_old_tls(templates: Templates) -> None:
    assert storage_problems(templates) == []


def test_a_storage_account_that_allows_shared_keys_fails_the_check(parser_ready: None, infra_copy: Path) -> None:
    mutate(infra_copy / "modules" / "storage.bicep", "allowSharedKeyAccess: false", "allowSharedKeyAccess: true")
    assert storage_problems(load(infra_copy)) == ["shared key access must be disabled"]


def test_the_app_tables_are_created_by_a_loop_over_the_names(templates: Templates, main: bicep.BicepFile) -> None:
    tables = only(templates["modules/storage.bicep"], "Microsoft.Storage/storageAccounts/tableServices/tables")
    assert tables.looped
    assert {"journal", "audit"} <= set(main.params["tableNames"].default)  # type: ignore[arg-type]


def key_vault_problems(templates: Templates) -> list[str]:
    vault = properties(only(templates["modules/keyvault.bicep"], "Microsoft.KeyVault/vaults"))
    problems: list[str] = []
    expect(problems, vault.get("enableRbacAuthorization") is True, "the vault must use RBAC")
    expect(problems, vault.get("enablePurgeProtection") is True, "purge protection must be on")
    expect(problems, vault.get("enableSoftDelete") is True, "soft delete must be on")
    expect(problems, "accessPolicies" not in vault, "no access policies beside RBAC")
    expect(problems, vault.get("enabledForTemplateDeployment") is False, "no secret reads by template deployments")
    return problems


def test_key_vault_uses_rbac_with_purge_protection_and_soft_delete(templates: Templates) -> None:
    assert key_vault_problems(templates) == []


def test_a_vault_without_purge_protection_fails_the_check(parser_ready: None, infra_copy: Path) -> None:
    mutate(infra_copy / "modules" / "keyvault.bicep", "enablePurgeProtection: true", "enablePurgeProtection: false")
    assert key_vault_problems(load(infra_copy)) == ["purge protection must be on"]


def test_the_vault_audit_log_goes_to_log_analytics(templates: Templates) -> None:
    module = templates["modules/keyvault.bicep"]
    diagnostics = only(module, "Microsoft.Insights/diagnosticSettings")
    assert diagnostics.body["scope"] == Ref("vault")
    assert properties(diagnostics)["logs"] == [{"categoryGroup": "audit", "enabled": True}]


def test_application_insights_accepts_only_entra_authenticated_telemetry(templates: Templates) -> None:
    module = templates["modules/monitoring.bicep"]
    component = properties(only(module, "Microsoft.Insights/components"))
    assert component["DisableLocalAuth"] is True
    assert isinstance(component["WorkspaceResourceId"], Expr)  # workspace-based, not classic
    workspace = properties(only(module, "Microsoft.OperationalInsights/workspaces"))
    assert dig(workspace, "features", "disableLocalAuth") is True


# ---------------------------------------------------------------------------------------------
# Role assignments
# ---------------------------------------------------------------------------------------------


def role_assignments(templates: Templates) -> list[tuple[str, bicep.BicepFile, bicep.Resource]]:
    return [
        (name, model, resource)
        for name, model in templates.items()
        for resource in model.resources.values()
        if resource.type.lower().startswith("microsoft.authorization/")
    ]


# The on-premises worker's identity (`lifecycle worker`): the queue and the tables, nothing else.
WORKER_ROLES = {
    (SERVICE_BUS_DATA_SENDER, "Microsoft.ServiceBus/namespaces/queues"),
    (SERVICE_BUS_DATA_RECEIVER, "Microsoft.ServiceBus/namespaces/queues"),
    (STORAGE_TABLE_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts"),
    (MONITORING_METRICS_PUBLISHER, "Microsoft.Insights/components"),
}
ROLE_FILES = {"modules/roles.bicep": EXPECTED_ROLES, "modules/worker-roles.bicep": WORKER_ROLES}


def role_problems(templates: Templates, file: str = "modules/roles.bicep") -> list[str]:
    problems: list[str] = []
    granted: list[tuple[str, str]] = []
    expected = ROLE_FILES[file]
    for name, model, resource in role_assignments(templates):
        where = f"{name}:{resource.line} {resource.symbol}"
        if name not in ROLE_FILES:
            problems.append(f"{where}: authorization resources belong in modules/roles.bicep only (and worker-roles)")
        if name != file:
            continue
        if resource.type != "Microsoft.Authorization/roleAssignments":
            problems.append(f"{where}: {resource.type} is not allowed")
            continue
        props = properties(resource)
        definition = props.get("roleDefinitionId")
        role_id: Value = None
        if isinstance(definition, Expr) and definition.call_name == "subscriptionResourceId":
            arguments = definition.arguments
            if arguments[:1] == ["Microsoft.Authorization/roleDefinitions"] and len(arguments) == 2:
                role_id = resolve(model, arguments[1])
        scope_ref = resource.body.get("scope")
        scope = model.resources.get(scope_ref.name) if isinstance(scope_ref, Ref) else None
        if not isinstance(role_id, str) or scope is None:
            problems.append(f"{where}: cannot read the role id or the scope (keep them literal and symbolic)")
            continue
        granted.append((role_id, scope.type))
        if props.get("principalId") != Ref("principalId") or props.get("principalType") != "ServicePrincipal":
            problems.append(f"{where}: must grant the principalId parameter, as a ServicePrincipal")
        name_expr = resource.body.get("name")
        if not (isinstance(name_expr, Expr) and name_expr.call_name == "guid"
                and source(name_expr.arguments[0]) == f"{scope.symbol}.id"
                and name_expr.arguments[1] == Ref("principalId")
                and resolve(model, name_expr.arguments[2]) == role_id):
            problems.append(f"{where}: name must be guid(<scope>.id, principalId, <role id>)")
        if resource.condition is not None or resource.looped:
            problems.append(f"{where}: must be unconditional and not in a loop")
    for extra in sorted(set(granted) - expected):
        problems.append(f"role {extra[0]} on {extra[1]} is not in the allowed list")
    for absent in sorted(expected - set(granted)):
        problems.append(f"role {absent[0]} on {absent[1]} is missing")
    if len(granted) != len(set(granted)):
        problems.append("a role is assigned twice")
    return problems


def test_the_identity_holds_exactly_the_listed_roles_on_the_listed_resources(templates: Templates) -> None:
    assert role_problems(templates) == []


def test_the_on_premises_worker_holds_only_the_queue_and_table_roles(templates: Templates) -> None:
    assert role_problems(templates, "modules/worker-roles.bicep") == []
    module = templates["main.bicep"].modules["onPremisesWorkerRoles"]
    assert source(module.condition) == "!empty(onPremisesWorkerPrincipalId)"
    assert module.params["principalId"] == Ref("onPremisesWorkerPrincipalId")


def test_the_cloud_worker_can_be_switched_off_for_an_on_premises_one(templates: Templates) -> None:
    settings = bicep.merged_object(templates["main.bicep"].variables["appSettings"].value)
    assert source(settings["AzureWebJobs.work.Disabled"]) == "cloudWorker ? 'false' : 'true'"
    assert templates["main.bicep"].params["cloudWorker"].default is True


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        # Service Bus Data Sender on the whole namespace instead of the queue.
        ("  name: guid(queue.id, principalId, roleIds.serviceBusDataSender)\n  scope: queue\n",
         "  name: guid(namespace.id, principalId, roleIds.serviceBusDataSender)\n  scope: namespace\n",
         "is not in the allowed list"),
        # Data Owner instead of Receiver.
        ("  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'",
         "  serviceBusDataReceiver: '090c5cfd-751d-490a-894a-3ce6f1109419'",
         "is not in the allowed list"),
        # A role assignment granted to someone else.
        ("    principalId: principalId\n    principalType: 'ServicePrincipal'\n  }\n}\n\nresource metricsPublisher",
         "    principalId: '00000000-0000-0000-0000-000000000000'\n    principalType: 'ServicePrincipal'\n  }\n}\n\n"
         "resource metricsPublisher",
         "must grant the principalId parameter"),
    ],
)
def test_a_wider_or_extra_role_assignment_fails_the_check(
    parser_ready: None, infra_copy: Path, old: str, new: str, problem: str
) -> None:
    mutate(infra_copy / "modules" / "roles.bicep", old, new)
    problems = role_problems(load(infra_copy))
    assert any(problem in p for p in problems), problems


def test_a_role_assignment_outside_the_roles_module_fails_the_check(parser_ready: None, infra_copy: Path) -> None:
    path = infra_copy / "modules" / "keyvault.bicep"
    path.write_text(
        path.read_text(encoding="utf-8")
        + "\nresource owner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {\n"
        "  name: guid(vault.id, 'x')\n  scope: vault\n  properties: {\n"
        "    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', "
        "'8e3af657-a8ff-443c-a75c-2fe8c4bcb635')\n    principalId: 'x'\n  }\n}\n",
        encoding="utf-8",
    )
    problems = role_problems(load(infra_copy))
    assert any("belong in modules/roles.bicep only" in p for p in problems), problems


def test_the_roles_go_to_the_function_apps_identity_before_the_app_starts(main: bicep.BicepFile) -> None:
    roles = main.modules["roles"]
    assert source(roles.params["principalId"]) == "identity.outputs.principalId"
    assert main.modules["functionApp"].body["dependsOn"] == [Ref("roles")]


# ---------------------------------------------------------------------------------------------
# Function app, network
# ---------------------------------------------------------------------------------------------


def test_the_function_app_runs_on_flex_consumption_linux_as_the_user_assigned_identity(templates: Templates) -> None:
    module = templates["modules/functionapp.bicep"]
    plan = only(module, "Microsoft.Web/serverfarms")
    assert plan.body["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert properties(plan)["reserved"] is True
    site = only(module, "Microsoft.Web/sites")
    assert site.body["kind"] == "functionapp,linux"
    assert dig(site.body, "identity", "type") == "UserAssigned"
    props = properties(site)
    assert props["httpsOnly"] is True
    assert dig(props, "siteConfig", "minTlsVersion") == "1.2"
    assert props["keyVaultReferenceIdentity"] == Ref("identityId")
    storage = dig(props, "functionAppConfig", "deployment", "storage")
    assert dig(storage, "type") == "blobContainer"  # type: ignore[arg-type]
    assert dig(storage, "authentication", "type") == "UserAssignedIdentity"  # type: ignore[arg-type]
    scm = only(module, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert scm.body["name"] == "scm" and properties(scm)["allow"] is False


def test_python_version_memory_and_instance_count_are_parameters(
    templates: Templates, main: bicep.BicepFile
) -> None:
    module = templates["modules/functionapp.bicep"]
    config = dig(properties(only(module, "Microsoft.Web/sites")), "functionAppConfig")
    assert dig(config, "runtime", "name") == "python"  # type: ignore[arg-type]
    assert dig(config, "runtime", "version") == Ref("pythonVersion")  # type: ignore[arg-type]
    assert dig(config, "scaleAndConcurrency", "instanceMemoryMB") == Ref("instanceMemoryMB")  # type: ignore[arg-type]
    assert dig(config, "scaleAndConcurrency", "maximumInstanceCount") == Ref(  # type: ignore[arg-type]
        "maximumInstanceCount"
    )
    assert main.params["pythonVersion"].default == "3.11"
    for name in ("pythonVersion", "instanceMemoryMB", "maximumInstanceCount"):
        assert main.modules["functionApp"].params[name] == Ref(name)


def test_vnet_integration_is_optional_and_delegates_its_subnet_to_microsoft_app_environments(
    templates: Templates, main: bicep.BicepFile
) -> None:
    assert main.params["enableVnetIntegration"].default is False
    assert main.modules["network"].condition == Ref("enableVnetIntegration")
    assert main.params["dnsServers"].type == "array"
    assert main.modules["network"].params["dnsServers"] == Ref("dnsServers")
    module = templates["modules/network.bicep"]
    vnet = properties(only(module, "Microsoft.Network/virtualNetworks"))
    assert dig(vnet, "dhcpOptions", "dnsServers") == Ref("dnsServers")
    subnets = vnet["subnets"]
    assert isinstance(subnets, list) and len(subnets) == 1
    delegations = dig(subnets[0], "properties", "delegations")
    assert isinstance(delegations, list)
    assert [dig(d, "properties", "serviceName") for d in delegations] == ["Microsoft.App/environments"]
    site = properties(only(templates["modules/functionapp.bicep"], "Microsoft.Web/sites"))
    assert source(site["virtualNetworkSubnetId"]) == "empty(subnetId) ? null : subnetId"


# ---------------------------------------------------------------------------------------------
# Secrets and parameters
# ---------------------------------------------------------------------------------------------

# Parameter names that carry a secret (by their ending: `secretRotationDays` is not one).
SECRET_NAME = re.compile(r"(?i)(password|secret|connectionstring|connectionsjson|token|apikey)$")


@pytest.mark.parametrize("name", [p.relative_to(INFRA).as_posix() for p in bicep_files()])
def test_secrets_are_secure_parameters_without_defaults(templates: Templates, name: str) -> None:
    for param in templates[name].params.values():
        if SECRET_NAME.search(param.name):
            assert param.secure, f"{name}: {param.name} looks like a secret but is not @secure()"
        if param.secure:
            assert param.required, f"{name}: secure parameter {param.name} must not have a default"


def test_every_vault_secret_is_written_from_a_secure_parameter_with_an_expiry_and_content_type(
    templates: Templates, main: bicep.BicepFile
) -> None:
    module = templates["modules/keyvault.bicep"]
    secrets = [r for r in module.resources_of_type("Microsoft.KeyVault/vaults/secrets") if not r.existing]
    assert secrets
    for secret in secrets:
        props = properties(secret)
        source = param_of(module, props["value"])
        assert source is not None and source.secure, f"{secret.symbol} must take its value from a secure parameter"
        assert main.modules["keyVault"].params[source.name] == Ref(source.name)
        assert main.params[source.name].secure and main.params[source.name].required
        assert isinstance(props["contentType"], str)
        assert dig(props, "attributes", "exp") == Ref("secretExpiry")


def test_the_parameters_file_names_only_declared_parameters_and_holds_no_secret(main: bicep.BicepFile) -> None:
    document = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    assert document["contentVersion"] == "1.0.0.0"
    given = document["parameters"]
    assert set(given) <= set(main.params), set(given) - set(main.params)
    for name in given:
        assert not main.params[name].secure, f"{name} is a secret: pass it at deployment, never in a file"
    missing = {p.name for p in main.params.values() if p.required and not p.secure} - set(given)
    assert missing == set(), f"required parameters missing from main.parameters.json: {missing}"


def test_the_outputs_name_the_function_app_the_queue_and_the_key_vault(main: bicep.BicepFile) -> None:
    assert {"functionAppName", "serviceBusQueueName", "keyVaultName"} <= set(main.outputs)
    assert source(main.outputs["serviceBusQueueName"].value) == "serviceBus.outputs.queueName"
    for output in main.outputs.values():
        assert not SECRET_NAME.search(output.name), f"output {output.name} looks like a secret"
