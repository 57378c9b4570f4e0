"""``lifecycle doctor``: check a real environment end to end, each check with ✓ or ✗ and the fix.

Where ``check-config`` reads the settings and the mapping, the doctor talks to every system they name, reading
only (a probe row in Table storage is written and deleted):

- **AD**: the bind over LDAPS or StartTLS with the CA verified; then the bind account's rights, read from AD's
  own constructed attributes: ``allowedChildClassesEffective`` on each OU the mapping creates or moves accounts
  into (it must hold ``user``) and ``allowedAttributesEffective`` on each group it manages (it must hold
  ``member``). A missing OU or group is reported as such.
- **Microsoft Graph**: for each connection (tenant: the default one and each of ``LIFECYCLE_GRAPH_CONNECTIONS``)
  a token from that tenant (admin consent given) and its ``roles`` claim against the application permissions
  the mapping's Graph actions need (docs/deployment.md, "Graph permissions per action", "Many tenants").
- **Halo**: a token from the Halo API (client credentials).
- **Service Bus**: a sender link to the queue opens; **Table storage**: a probe row is written, read, removed.
- **Key Vault references**: no ``LIFECYCLE_*`` app setting still holds ``@Microsoft.KeyVault(...)``.

A system that is not configured is shown as skipped, never as passing. Exit 0 when every check passes, 1 when
one fails.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

EXIT_FAILED = 1
KEY_VAULT_REFERENCE = "@Microsoft.KeyVault("
# Graph application permissions each action needs (docs/deployment.md); every Graph step reads the user and
# checks its protection first.
GRAPH_BASE = frozenset({"User.Read.All", "GroupMember.Read.All"})
GRAPH_PERMISSIONS: dict[str, frozenset[str]] = {
    "assign_licenses": frozenset({"LicenseAssignment.ReadWrite.All", "User.ReadWrite.All"}),
    "remove_licenses": frozenset({"LicenseAssignment.ReadWrite.All"}),
    "create_mailbox": frozenset({"LicenseAssignment.ReadWrite.All", "MailboxSettings.Read"}),
    "disable_mailbox": frozenset({"LicenseAssignment.ReadWrite.All"}),
    "delete_mailbox": frozenset({"LicenseAssignment.ReadWrite.All"}),
    "disable_teams": frozenset({"LicenseAssignment.ReadWrite.All"}),
    "set_auto_reply": frozenset({"MailboxSettings.ReadWrite"}),
    "disable_auto_reply": frozenset({"MailboxSettings.ReadWrite"}),
    "revoke_sessions": frozenset({"User.RevokeSessions.All"}),
    "disable_cloud_account": frozenset({"User.EnableDisableAccount.All"}),
    "enable_cloud_account": frozenset({"User.EnableDisableAccount.All"}),
    "add_to_cloud_groups": frozenset({"GroupMember.ReadWrite.All"}),
    "remove_from_cloud_groups": frozenset({"GroupMember.ReadWrite.All"}),
    "sync_cloud_groups": frozenset({"GroupMember.ReadWrite.All"}),
    "set_photo": frozenset({"ProfilePhoto.ReadWrite.All"}),
    "remove_photo": frozenset({"ProfilePhoto.ReadWrite.All"}),
}
# A granted permission that includes a needed one.
IMPLIED = {
    "MailboxSettings.Read": {"MailboxSettings.ReadWrite"},
    "GroupMember.Read.All": {"GroupMember.ReadWrite.All", "Directory.Read.All", "Group.Read.All"},
    "User.Read.All": {"User.ReadWrite.All", "Directory.Read.All"},
}


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: str  # "ok", "failed", "skipped"
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = {"ok": "✓", "failed": "✗", "skipped": "-"}[self.status]
        text = f"{mark} {self.name}: {self.detail}"
        return f"{text}\n    fix: {self.fix}" if self.status == "failed" and self.fix else text


def register(subparsers: Any) -> None:
    """Add the ``doctor`` command."""
    doctor = subparsers.add_parser("doctor", help="check AD, Graph, Halo, Service Bus, Table storage and Key Vault")
    doctor.add_argument("--json", action="store_true", help="one JSON object per check")
    doctor.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run every check and print it; exit 1 when one failed."""
    from lifecycle import cli

    results = list(run_checks(cli._runtime(), environ=dict(os.environ)))
    for result in results:
        if args.json:
            print(json.dumps(result.__dict__))
        else:
            print(result.line())
    failed = [r for r in results if r.status == "failed"]
    if not args.json:
        print(f"{len(results) - len(failed)} of {len(results)} checks passed or skipped; {len(failed)} failed")
    return EXIT_FAILED if failed else 0


def run_checks(runtime: Any, *, environ: dict[str, str]) -> Iterator[Check]:
    """Every check, in order; a check that raises is reported as failed with its error."""
    yield from _guarded("Key Vault references", lambda: [_key_vault(environ)])
    yield from _guarded("AD", lambda: _ad(runtime))
    yield from _guarded("Microsoft Graph", lambda: graph_checks(runtime))
    yield from _guarded("Halo API", lambda: [_halo(runtime)])
    yield from _guarded("Service Bus", lambda: [_service_bus(runtime)])
    yield from _guarded("Table storage", lambda: [_table(runtime)])


def _guarded(name: str, run: Callable[[], Any]) -> Iterator[Check]:
    try:
        yield from run()
    except Exception as exc:  # one broken system must not hide the others
        yield Check(name, "failed", f"{type(exc).__name__}: {exc}", "see the error; the other checks still ran")


# Key Vault ---------------------------------------------------------------------------------------------------
def _key_vault(environ: dict[str, str]) -> Check:
    unresolved = sorted(k for k, v in environ.items() if k.startswith("LIFECYCLE_") and KEY_VAULT_REFERENCE in v)
    if unresolved:
        return Check(
            "Key Vault references",
            "failed",
            f"not resolved: {', '.join(unresolved)}",
            "give the app's identity Key Vault Secrets User on the vault, check the secret names and the vault's "
            "network rules (Flex Consumption resolves over the public endpoint), then restart the app",
        )
    return Check("Key Vault references", "ok", "no LIFECYCLE_* setting holds an unresolved reference")


# Active Directory --------------------------------------------------------------------------------------------
def _ad(runtime: Any) -> Iterator[Check]:
    import ldap3  # type: ignore[import-untyped]

    from lifecycle.config_check import uses_ad
    from lifecycle.local.bootstrap import mapping_containers
    from lifecycle.targets.ad import ADTarget

    settings = runtime.settings
    connection = settings.ad_connection("default")
    if not uses_ad(runtime.mapping):
        yield Check("AD bind", "skipped", "the mapping has no Active Directory step (cloud-only people)")
        return
    if not connection.user:
        yield Check("AD bind", "skipped", "LIFECYCLE_AD_USER is not set")
        return
    target = ADTarget("default", connection)
    tls = "StartTLS" if connection.start_tls else "LDAPS" if connection.url.startswith("ldaps://") else "none"
    try:
        try:
            target._call(
                lambda conn: conn.search(connection.base_dn, "(objectClass=*)", ldap3.BASE, attributes=["1.1"])
            )
        except Exception as exc:
            yield Check(
                "AD bind",
                "failed",
                f"{connection.user} at {connection.url} ({tls}): {exc}",
                "check LIFECYCLE_AD_URL (ldaps://, port 636), LIFECYCLE_AD_USER/_PASSWORD, LIFECYCLE_AD_CA_FILE "
                "(the CA that signed the DC's certificate) and LIFECYCLE_AD_TLS_SERVER_NAME (the name in it)",
            )
            return
        yield Check("AD bind", "ok", f"{connection.user} at {connection.url} over {tls}, certificate verified")
        ous, groups = mapping_containers(runtime.mapping, connection.base_dn)
        protected = {o.lower() for o in mapping_containers(_unprotected(runtime.mapping), connection.base_dn)[0]}
        for ou in ous:
            if ou.lower() not in protected:
                continue
            yield _right(target, ou, "allowedChildClassesEffective", "user", "create and move user accounts into it")
        for group in groups:
            yield _right(target, group, "allowedAttributesEffective", "member", "change its members")
    finally:
        target.close()


def _unprotected(mapping: Any) -> Any:
    """The mapping without its protected OUs (the service must never write there, so needs no rights)."""
    safety = mapping.safety.model_copy(update={"protected_ous": []})
    return mapping.model_copy(update={"safety": safety})


def _right(target: Any, dn: str, attribute: str, needed: str, why: str) -> Check:
    import ldap3

    name = f"AD rights on {dn}"
    found: list[Any] = []

    def read(conn: Any) -> None:
        conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[attribute])
        found.extend(e for e in conn.response if e.get("type") == "searchResEntry")

    try:
        target._call(read)
    except Exception as exc:
        if "nosuchobject" in f"{type(exc).__name__} {exc}".lower():
            return Check(name, "failed", "it does not exist", "create it, or fix the mapping's OU and group rules")
        raise
    if not found:
        return Check(name, "failed", "it does not exist", "create it, or fix the mapping's OU and group rules")
    values = {str(v).lower() for v in found[0]["attributes"].get(attribute, [])}
    if needed.lower() in values:
        return Check(name, "ok", f"the bind account may {why} ({attribute} holds {needed})")
    return Check(
        name,
        "failed",
        f"the bind account may not {why} ({attribute} lacks {needed})",
        "delegate it on this object (Active Directory Users and Computers, Delegate Control; docs/deployment.md, "
        "'Active Directory: the bind account')",
    )


# Microsoft Graph ---------------------------------------------------------------------------------------------
def needed_graph_permissions(mapping: Any) -> set[str]:
    """The application permissions the mapping's Graph actions need."""
    actions: set[str] = set()
    for steps in mapping.lifecycles.model_dump().values():
        for step in steps or []:
            actions.add(step if isinstance(step, str) else str(step.get("action", "")))
    needed = {p for action in actions for p in GRAPH_PERMISSIONS.get(action, frozenset())}
    return needed | set(GRAPH_BASE) if needed else set()


def token_roles(token: str) -> set[str]:
    """The ``roles`` claim of a JWT access token (read, not verified: Graph verifies it)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return {str(r) for r in claims.get("roles", [])}


def graph_checks(runtime: Any) -> Iterator[Check]:
    """One check per Graph connection (tenant): the default one, each of LIFECYCLE_GRAPH_CONNECTIONS, and a note
    for each routing connection that has none (its people's Graph steps are refused)."""
    settings = runtime.settings
    needed = needed_graph_permissions(runtime.mapping)
    routed = {runtime.mapping.routing.default, *(r.connection for r in runtime.mapping.routing.rules)}
    sender = settings.password_mail_connection.strip()
    for name in ["default", *sorted(settings.graph_connections)]:
        # A connection only sending password mail (LIFECYCLE_PASSWORD_MAIL_CONNECTION) needs Mail.Send alone.
        wanted = needed if name == "default" or name in routed else set()
        yield _guarded_one(runtime, name, wanted | ({"Mail.Send"} if name == sender else set()))
    for name in sorted(routed - {"default", *settings.graph_connections}):
        if needed:
            yield Check(
                f"Microsoft Graph [{name}]",
                "skipped",
                f"routing names connection {name!r}, which has no tenant: its people's Graph steps are refused",
            )


def _guarded_one(runtime: Any, name: str, needed: set[str]) -> Check:
    try:
        return _graph(runtime, name, needed)
    except Exception as exc:  # one tenant's failure must not hide the others
        label = "Microsoft Graph" if name == "default" else f"Microsoft Graph [{name}]"
        return Check(label, "failed", f"{type(exc).__name__}: {exc}", "see the error; the other checks still ran")


def _graph(runtime: Any, name: str, needed: set[str]) -> Check:
    label = "Microsoft Graph" if name == "default" else f"Microsoft Graph [{name}]"
    settings = runtime.settings.graph_settings(name)
    if not settings.graph_tenant_id:
        if needed:
            return Check(
                label,
                "failed",
                f"the mapping has Graph steps but LIFECYCLE_GRAPH_TENANT_ID is not set "
                f"(needs {', '.join(sorted(needed))})",
                "set LIFECYCLE_GRAPH_TENANT_ID and the client id with a certificate (or the managed identity)",
            )
        return Check(label, "skipped", "not configured and the mapping has no Graph step")
    from urllib.parse import urlsplit

    from lifecycle.errors import LifecycleError
    from lifecycle.targets.graph.tokens import TokenError, TokenSource

    tenant = settings.graph_tenant_id
    base = urlsplit(settings.graph_base_url)
    try:
        token = TokenSource(settings, f"{base.scheme}://{base.netloc}").token()
    except TokenError as exc:
        error: LifecycleError = exc.error
        consent = (
            f"{settings.graph_authority_host.rstrip('/')}/{tenant}/adminconsent?client_id={settings.graph_client_id}"
        )
        return Check(
            label,
            "failed",
            f"no token from tenant {tenant}: {error}",
            f"an administrator of tenant {tenant} gives the app admin consent ({consent}; docs/deployment.md, "
            "'Many tenants'), or fix the credential",
        )
    roles = token_roles(token)
    missing = sorted(p for p in needed if p not in roles and not (IMPLIED.get(p, set()) & roles))
    if missing:
        return Check(
            label,
            "failed",
            f"tenant {tenant}: the token lacks {', '.join(missing)} (it has {', '.join(sorted(roles)) or 'no roles'})",
            f"grant these application permissions to the app (or managed identity) and give admin consent in "
            f"tenant {tenant}",
        )
    return Check(label, "ok", f"tenant {tenant}: token roles cover the mapping's actions ({len(needed)} permissions)")


# Halo, Service Bus, Table storage ----------------------------------------------------------------------------
def _halo(runtime: Any) -> Check:
    if not runtime.settings.halo_api_url:
        return Check("Halo API", "skipped", "LIFECYCLE_HALO_API_URL is not set")
    client = runtime.halo
    client.authenticate()
    return Check("Halo API", "ok", f"a token from {runtime.settings.halo_api_url} (client credentials)")


def _service_bus(runtime: Any) -> Check:
    if runtime.settings.queue_backend != "servicebus":
        return Check("Service Bus", "skipped", "the embedded queue is in use (local mode)")
    queue = getattr(runtime.queue, "queue_name", runtime.settings.servicebus_queue)
    if runtime.queue.health():
        return Check("Service Bus", "ok", f"a sender link to {queue} opened")
    return Check(
        "Service Bus",
        "failed",
        f"no sender link to {queue}",
        "check LIFECYCLE_SERVICEBUS_NAMESPACE and that the identity holds Service Bus Data Sender and Receiver "
        "on the queue; outbound 5671 (or 443) must be open",
    )


def _table(runtime: Any) -> Check:
    if runtime.settings.store_backend != "table":
        return Check("Table storage", "skipped", "the embedded store is in use (local mode)")
    from lifecycle.state import PersonGate

    store = runtime.store
    probe = PersonGate(user_id=-1, holder="doctor-probe", until=_now())
    store.put_gate(probe)
    read = store.get_gate(-1)
    store.drop_gate(-1)
    if read is None or read.holder != probe.holder:
        return Check("Table storage", "failed", "a probe row written was not read back", "check the endpoint")
    return Check("Table storage", "ok", "a probe row written, read and removed")


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
