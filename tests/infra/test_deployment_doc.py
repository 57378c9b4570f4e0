"""docs/deployment.md covers what a team needs, and stays in step with the templates."""

from __future__ import annotations

import re

import pytest

from tests.infra import bicep_model as bicep
from tests.infra.conftest import INFRA

DOC = INFRA.parent / "docs" / "deployment.md"

# Least-privilege Graph application permissions, per action (reference/graph.md).
GRAPH_PERMISSIONS = [
    "User.Read.All",
    "User.ReadWrite.All",
    "User.EnableDisableAccount.All",
    "User-PasswordProfile.ReadWrite.All",
    "LicenseAssignment.ReadWrite.All",
    "MailboxSettings.ReadWrite",
    "ProfilePhoto.ReadWrite.All",
    "GroupMember.ReadWrite.All",
    "User.RevokeSessions.All",
]


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "heading",
    ["Prerequisites", "Permissions of the person deploying", "Microsoft Graph", "Active Directory: the bind account",
     "Network", "Deploy", "Publish", "Verify", "Roll back"],
)
def test_the_deployment_doc_has_a_section_for(doc: str, heading: str) -> None:
    assert re.search(rf"^#+ {re.escape(heading)}", doc, re.MULTILINE), heading


@pytest.mark.parametrize("permission", GRAPH_PERMISSIONS)
def test_the_deployment_doc_names_each_graph_permission(doc: str, permission: str) -> None:
    assert f"`{permission}`" in doc


def test_the_deployment_doc_names_the_commands_to_deploy_publish_and_check_online(doc: str) -> None:
    for command in ("az deployment group create", "az deployment group what-if", "az bicep build",
                    "func azure functionapp publish"):
        assert command in doc, command


def test_the_deployment_doc_never_asks_for_a_domain_admin(doc: str) -> None:
    assert "Never use a Domain Admin" in doc
    assert "dsacls" in doc


def test_the_deployment_doc_explains_the_flex_consumption_key_vault_limit(doc: str) -> None:
    assert "Flex Consumption resolves Key Vault references over the public endpoint" in doc


def test_the_deployment_doc_lists_every_vault_secret(doc: str, templates: dict[str, bicep.BicepFile]) -> None:
    vault = templates["modules/keyvault.bicep"]
    names = [r.body["name"] for r in vault.resources_of_type("Microsoft.KeyVault/vaults/secrets")]
    assert names
    for name in names:
        assert f"`{name}`" in doc, name


def test_the_deployment_doc_lists_every_role_of_the_identity(doc: str) -> None:
    for role in ("Azure Service Bus Data Sender", "Azure Service Bus Data Receiver", "Storage Blob Data Owner",
                 "Storage Table Data Contributor", "Key Vault Secrets User", "Monitoring Metrics Publisher"):
        assert f"| {role} |" in doc, role
