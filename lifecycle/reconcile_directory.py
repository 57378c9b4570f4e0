"""What reconciliation asks of AD: which anchors exist in the managed containers, who matches a fallback.

Kept apart from ``lifecycle.reconcile`` (how drift is found): these change with how AD is searched.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime
    from lifecycle.targets.ad import Account, ADTarget


class Directory:
    """What reconciliation asks of AD: which anchors exist, who matches a fallback, stamping the anchor."""

    def __init__(self, runtime: Runtime, *, dry_run: bool) -> None:
        self.runtime = runtime
        self.dry_run = dry_run
        self._targets: dict[str, ADTarget] = {}
        self._anchored: dict[str, set[int]] = {}

    def target(self, connection: str) -> ADTarget:
        if connection not in self._targets:
            from lifecycle.adoption import ad_target

            self._targets[connection] = ad_target(self.runtime, connection, dry_run=self.dry_run)
        return self._targets[connection]

    def anchored(self, connection: str) -> set[int]:
        """Every Halo id on an account of ``connection`` (one paged search, kept for the run)."""
        if connection not in self._anchored:
            import ldap3  # type: ignore[import-untyped]

            target = self.target(connection)
            anchor = self.runtime.mapping.anchor
            prefix = self.runtime.mapping.anchor_prefix.lower()
            search_filter = f"(&(objectClass=user)(objectCategory=person)({anchor}=*))"

            def search(conn: Any, base: str) -> set[int]:
                found: set[int] = set()
                try:
                    for entry in conn.extend.standard.paged_search(
                        base, search_filter, ldap3.SUBTREE, attributes=[anchor], paged_size=1000, generator=True
                    ):
                        if entry.get("type") != "searchResEntry":
                            continue
                        for value in entry.get("raw_attributes", {}).get(anchor, []):
                            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                            text = text.strip()
                            # The namespaced form, and the bare id of older data (still found by the worker).
                            if prefix and text.lower().startswith(prefix):
                                text = text[len(prefix) :]
                            if text.isdigit():
                                found.add(int(text))
                except ldap3.core.exceptions.LDAPNoSuchObjectResult:
                    pass  # a managed container that does not exist (yet) holds nobody
                return found

            anchored: set[int] = set()
            # Only the managed containers: an account elsewhere is never taken for a person's.
            for container in target.managed_containers:
                anchored |= target._call(functools.partial(_search_in, search, container))
            self._anchored[connection] = anchored
        return self._anchored[connection]

    def find(self, connection: str, attribute: str, value: str) -> Account | None:
        from lifecycle.targets.ad import Anchor

        return self.target(connection).find(Anchor(attribute, value))

    def close(self) -> None:
        for target in self._targets.values():
            target.close()


def _search_in(search: Callable[[Any, str], set[int]], base: str, conn: Any) -> set[int]:
    return search(conn, base)


class CloudDirectory:
    """What reconciliation asks of Entra ID for a cloud-only mapping: which anchors its users carry.

    A cloud-only person's account is the Entra user carrying the anchor (``employeeId`` ``halo:26``, or an
    extension attribute), as ``lifecycle.targets.graph.cloudusers`` finds it. One paged listing of the users of
    a connection's tenant per run (the counterpart of the AD paged search), read with that connection's own
    client and token: one client's tenant is never read for another's people (``lifecycle.tenancy``).
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._anchored: dict[str, set[int]] = {}
        # Connections the mapping routes people to that have no tenant to read: nothing read, said in the notes.
        self.unread: set[str] = set()

    def anchored(self, connection: str) -> set[int]:
        """Every Halo id on an active Entra user of ``connection``'s tenant (one paged listing, kept for the run).

        A connection with no Graph tenant (no ``LIFECYCLE_GRAPH_CONNECTIONS`` entry, or no default tenant) holds
        nobody here: it is named in ``unread``, never read from another tenant, and nobody in it is missing.

        Raises:
            ConfigurationError: the mapping's anchor has no Entra property.
            Retryable, Permanent: Graph's answer, as ``error_for`` classifies it.
        """
        if connection not in self._anchored:
            from urllib.parse import quote

            from lifecycle.errors import ConfigurationError
            from lifecycle.targets.graph.cloudusers import anchor_value
            from lifecycle.targets.graph.transport import Request, client_for, error_for
            from lifecycle.targets.graph_actions import cloud_anchor_property

            mapping = self.runtime.mapping
            prop = cloud_anchor_property(mapping.anchor)
            if prop is None:
                raise ConfigurationError(
                    f"the anchor {mapping.anchor!r} has no Entra property (employeeId or extensionAttribute1..15): "
                    "cloud-only people cannot be reconciled"
                )
            settings = self.runtime.settings
            if not (settings.graph_tenant_id if connection == "default" else connection in settings.graph_connections):
                self.unread.add(connection)
                self._anchored[connection] = set()
                return self._anchored[connection]
            client = client_for(settings.graph_settings(connection))
            # An extension attribute is selected through its parent; employeeId by itself.
            select = quote(f"id,{prop.split('/', 1)[0]}", safe="")
            # GET /users pages with @odata.nextLink; $top at most 999 (https://learn.microsoft.com/en-us/graph/
            # api/user-list, "Optional query parameters"; https://learn.microsoft.com/en-us/graph/paging).
            link: str | None = f"/users?$select={select}&$top=999"
            prefix = mapping.anchor_prefix.lower()
            found: set[int] = set()
            base = client.base_url
            while link:
                answer = client.send(Request("GET", link[len(base) :] if link.startswith(base) else link))
                if not answer.ok:
                    raise error_for(answer, "list the cloud users for the reconcile")
                for user in answer.body.get("value", []):
                    text = (anchor_value(user, prop) or "").strip()
                    # The namespaced form, and a bare id (as the AD search reads older data).
                    if prefix and text.lower().startswith(prefix):
                        text = text[len(prefix) :]
                    if text.isdigit():
                        found.add(int(text))
                link = answer.body.get("@odata.nextLink")
            self._anchored[connection] = found
        return self._anchored[connection]

    @staticmethod
    def note(*, skipped_fallbacks: bool) -> str:
        """The run summary's line for a cloud-only mapping (what was read, what was skipped and why)."""
        note = "cloud-only mapping: accounts are the Entra users carrying the anchor, read from each tenant"
        if skipped_fallbacks:
            note += (
                "; LIFECYCLE_HALO_RECONCILE_FALLBACKS (link proposals for AD accounts found by mail, UPN or login) "
                "were skipped: an active user with no anchored Entra user gets a joiner, whose create_cloud_user "
                "links a user already carrying the anchor and never takes another's name"
            )
        return note

    def close(self) -> None:
        """Nothing to close: the Graph clients are the process's (``lifecycle.targets.graph.close_clients``)."""
