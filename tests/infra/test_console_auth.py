"""The console signs people in with Entra ID in Azure, with a vault-held key and two app roles (docs/console.md)."""

from __future__ import annotations

import json
import re

from lifecycle.console.entra import ROLE_ACT, ROLE_READ
from tests.infra.conftest import INFRA

MAIN = (INFRA / "main.bicep").read_text(encoding="utf-8")


def setting(name: str) -> str:
    found = re.search(rf"^\s*{name}: (.+)$", MAIN, re.MULTILINE)
    assert found is not None, f"{name} is not set by infra/main.bicep"
    return found.group(1).strip()


def test_azure_signs_console_users_in_with_entra_never_with_the_local_link() -> None:
    assert setting("LIFECYCLE_CONSOLE_AUTH") == "'entra'"


def test_the_session_key_and_client_secret_come_from_key_vault() -> None:
    for name, secret in (
        ("LIFECYCLE_CONSOLE_SESSION_KEY", "console-session-key"),
        ("LIFECYCLE_CONSOLE_ENTRA_CLIENT_SECRET", "console-entra-client-secret"),
    ):
        assert setting(name) == f"'@Microsoft.KeyVault(VaultName=${{vaultName}};SecretName={secret})'"


def test_the_redirect_uri_is_the_console_callback_over_https() -> None:
    assert setting("LIFECYCLE_CONSOLE_REDIRECT_URI") == "consoleRedirectUri"
    assert "var consoleRedirectUri = 'https://${functionAppName}.azurewebsites.net/api/console/auth/callback'" in MAIN


def test_the_app_roles_manifest_defines_the_two_roles_the_console_checks() -> None:
    roles = json.loads((INFRA / "console-app-roles.json").read_text(encoding="utf-8"))
    assert sorted(r["value"] for r in roles) == sorted([ROLE_READ, ROLE_ACT])
    assert all(r["allowedMemberTypes"] == ["User"] and r["isEnabled"] for r in roles)
    assert len({r["id"] for r in roles}) == 2
