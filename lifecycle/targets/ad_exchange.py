"""Hybrid Exchange (remote mailboxes as Enable-RemoteMailbox writes them), Lync and photos on AD accounts."""

from __future__ import annotations

from typing import Any

import ldap3  # type: ignore[import-untyped]
from ldap3.core import exceptions as ldap_errors  # type: ignore[import-untyped]

from lifecycle.errors import (
    Permanent,
)
from lifecycle.photos import AD_PHOTO_MAX_BYTES, to_jpeg
from lifecycle.state import Change
from lifecycle.targets import StepResult
from lifecycle.targets.ad_directory import ADDirectory
from lifecycle.targets.ad_model import (
    EXCHANGE_2013_VERSION,
    ON_PREMISES_MAILBOXES,
    REMOTE_MAILBOX_ATTRIBUTES,
    REMOTE_MAILBOXES,
    REMOTE_PROVISION_MAILBOX,
    REMOTE_USER_MAILBOX,
    REMOTE_USER_MAILBOX_DISPLAY,
    Account,
)


class ADExchange(ADDirectory):
    """The hybrid Exchange, Lync and photo steps of an AD domain."""

    # Exchange (hybrid), Lync and photos ----------------------------------------------------------------------
    def _ensure_values(
        self, account: Account, wanted: dict[str, list[Any]], *, what: str
    ) -> tuple[StepResult, Account]:
        """Set each attribute to exactly the values given (an empty list clears it); only what differs."""
        changes: list[Change] = []
        modifications: dict[str, list[tuple[str, list[Any]]]] = {}
        for attribute, values in wanted.items():
            current = list(account.attributes.get(attribute.lower(), []))
            if {str(v) for v in current} == {str(v) for v in values}:
                continue
            before = current[0] if len(current) == 1 else (current or None)
            after = values[0] if len(values) == 1 else (values or None)
            changes.append(Change(attribute, before, after))
            modifications[attribute] = [(ldap3.MODIFY_REPLACE, [str(v) for v in values])]
        if not modifications:
            return StepResult("unchanged", dn=account.dn), account
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=changes), account
        try:
            self._call(lambda conn: conn.modify(account.dn, modifications))
        except ldap_errors.LDAPNoSuchAttributeResult:
            raise Permanent(f"AD {self.name}: {what}: the schema lacks one of {sorted(modifications)}") from None
        except ldap_errors.LDAPOperationResult as exc:
            raise Permanent(f"AD {self.name}: {what} on {account.dn}: {exc.description}: {exc.message}") from None
        for attribute, values in wanted.items():
            account.attributes[attribute.lower()] = [str(v) for v in values]
        return StepResult("changed", dn=account.dn, changes=changes), account

    def create_remote_mailbox(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        """Hybrid Exchange: what ``Enable-RemoteMailbox`` writes, so the next sync gives the cloud mailbox."""
        alias = str(params.get("alias") or account.first("sAMAccountName") or "")
        primary = str(params.get("primary_address") or account.first("mail") or "")
        if not alias or not primary:
            raise Permanent(
                f"AD {self.name}: a remote mailbox needs an alias and a primary address; {account.dn} has "
                f"{'no sAMAccountName' if not alias else 'no mail'} (set alias/primary_address in the step)"
            )
        routing = f"{alias}@{params['routing_domain']}"
        details = str(account.first("msExchRecipientTypeDetails") or "")
        if account.first("homeMDB") or account.first("msExchHomeServerName") or details in ON_PREMISES_MAILBOXES:
            # A second, cloud mailbox next to an on-premises one splits the person's mail: moving a mailbox to
            # Exchange Online is a migration batch (New-MoveRequest), which leaves a remote mailbox behind.
            raise Permanent(
                f"AD {self.name}: {account.dn} has an on-premises mailbox (msExchRecipientTypeDetails "
                f"{details or '?'}); move it to Exchange Online with a migration batch instead of create_remote_mailbox"
            )
        if details in REMOTE_MAILBOXES:
            return self._keep_remote_mailbox(account, alias, routing)
        addresses = [f"SMTP:{primary}", f"smtp:{routing}"]
        for address in account.attributes.get("proxyaddresses", []):
            kind, _, value = str(address).partition(":")
            if value.lower() in (primary.lower(), routing.lower()):
                continue
            # One primary only: an earlier primary stays as a secondary address.
            addresses.append(f"smtp:{value}" if kind == "SMTP" else str(address))
        wanted: dict[str, list[Any]] = {
            "mailNickname": [alias],
            "mail": [primary],
            "targetAddress": [f"SMTP:{routing}"],
            "proxyAddresses": addresses,
            "msExchRecipientTypeDetails": [REMOTE_USER_MAILBOX],
            "msExchRecipientDisplayType": [REMOTE_USER_MAILBOX_DISPLAY],
            "msExchRemoteRecipientType": [REMOTE_PROVISION_MAILBOX],
        }
        warning = self._want_exchange_version(wanted)
        return self._with_warning(self._ensure_values(account, wanted, what="enable the remote mailbox"), warning)

    def _want_exchange_version(self, wanted: dict[str, list[Any]], account: Account | None = None) -> str:
        """Add msExchVersion to ``wanted`` when the schema has it (and ``account``, if given, lacks it); else
        the warning the step's audit carries."""
        if not self.schema_has("msExchVersion"):
            return (
                "msExchVersion not written: the directory's schema has no such attribute (a forest not prepared "
                "for Exchange); the Exchange admin tools show such a recipient as of an older version until "
                "Set-RemoteMailbox or Exchange's setup writes it"
            )
        if account is None or not account.first("msExchVersion"):
            wanted["msExchVersion"] = [EXCHANGE_2013_VERSION]
        return ""

    @staticmethod
    def _with_warning(done: tuple[StepResult, Account], warning: str) -> tuple[StepResult, Account]:
        result, account = done
        if warning:  # the step's audit entry carries it
            result.message = "; ".join(m for m in (result.message, warning) if m)
        return result, account

    def _keep_remote_mailbox(self, account: Account, alias: str, routing: str) -> tuple[StepResult, Account]:
        """An existing remote mailbox (migrated, shared, room): its type and state stay; only gaps are filled."""
        wanted: dict[str, list[Any]] = {}
        if not account.first("mailNickname"):
            wanted["mailNickname"] = [alias]
        if not account.first("targetAddress"):
            wanted["targetAddress"] = [f"SMTP:{routing}"]
        proxies = [str(p) for p in account.attributes.get("proxyaddresses", [])]
        if not any(p.partition(":")[2].lower() == routing.lower() for p in proxies):
            wanted["proxyAddresses"] = [*proxies, f"smtp:{routing}"]
        warning = self._want_exchange_version(wanted, account)
        if not wanted:
            kept = StepResult("unchanged", dn=account.dn, message="an existing remote mailbox: kept as it is")
            return self._with_warning((kept, account), warning)
        return self._with_warning(
            self._ensure_values(account, wanted, what="complete the existing remote mailbox"), warning
        )

    def disable_remote_mailbox(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        """Hybrid Exchange: clear what ``Disable-RemoteMailbox`` clears; the cloud mailbox goes at the next sync."""
        wanted: dict[str, list[Any]] = {name: [] for name in REMOTE_MAILBOX_ATTRIBUTES}
        if params.get("keep_addresses"):
            del wanted["proxyAddresses"]
        return self._ensure_values(account, wanted, what="disable the remote mailbox")

    def delete_remote_mailbox(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        """Hybrid Exchange: clear the remote-mailbox attributes and ``mail``: no mail identity is left in AD."""
        wanted: dict[str, list[Any]] = {name: [] for name in (*REMOTE_MAILBOX_ATTRIBUTES, "mail")}
        return self._ensure_values(account, wanted, what="delete the remote mailbox")

    def disable_lync(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        """On-premises Lync/Skype: ``msRTCSIP-UserEnabled = FALSE``, keeping the other msRTCSIP attributes.

        ``Disable-CsUser`` would clear them all (SIP address, pool); keeping them makes a rehire a one-flag change.
        """
        if account.first("msRTCSIP-PrimaryUserAddress") is None and account.first("msRTCSIP-UserEnabled") is None:
            return StepResult("unchanged", dn=account.dn, message="not enabled for Lync/Skype"), account
        return self._ensure_values(account, {"msRTCSIP-UserEnabled": ["FALSE"]}, what="disable Lync/Skype")

    def enable_lync(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        if account.first("msRTCSIP-PrimaryUserAddress") is None:
            raise Permanent(
                f"AD {self.name}: {account.dn} has no msRTCSIP-PrimaryUserAddress: enable it once with Enable-CsUser"
            )
        return self._ensure_values(account, {"msRTCSIP-UserEnabled": ["TRUE"]}, what="enable Lync/Skype")

    def _read_photo(self, account: Account) -> bytes | None:
        def read(conn: Any) -> list[Any]:
            conn.search(account.dn, "(objectClass=*)", ldap3.BASE, attributes=["thumbnailPhoto"])
            return [e for e in conn.response if e.get("type") == "searchResEntry"]

        entries = self._call(read)
        values = entries[0]["raw_attributes"].get("thumbnailPhoto") if entries else None
        return bytes(values[0]) if values else None

    def set_photo(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        """``thumbnailPhoto`` from the event's photo, as a JPEG of at most 100 KB."""
        raw = self._photo_loader(params)
        if raw is None:
            return StepResult("unchanged", dn=account.dn, message="the event carries no photo"), account
        jpeg = to_jpeg(raw, max_pixels=int(params.get("max_pixels", 96)), max_bytes=AD_PHOTO_MAX_BYTES)
        current = self._read_photo(account)
        if current == jpeg:
            return StepResult("unchanged", dn=account.dn), account
        change = Change("thumbnailPhoto", f"{len(current)} bytes" if current else None, f"{len(jpeg)} bytes (JPEG)")
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=[change]), account
        try:
            self._call(lambda conn: conn.modify(account.dn, {"thumbnailPhoto": [(ldap3.MODIFY_REPLACE, [jpeg])]}))
        except ldap_errors.LDAPOperationResult as exc:
            raise Permanent(f"AD {self.name}: cannot set thumbnailPhoto on {account.dn}: {exc.message}") from None
        return StepResult("changed", dn=account.dn, changes=[change]), account

    def remove_photo(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        current = self._read_photo(account)
        if current is None:
            return StepResult("unchanged", dn=account.dn), account
        change = Change("thumbnailPhoto", f"{len(current)} bytes", None)
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=[change]), account
        try:
            self._call(lambda conn: conn.modify(account.dn, {"thumbnailPhoto": [(ldap3.MODIFY_REPLACE, [])]}))
        except ldap_errors.LDAPOperationResult as exc:
            raise Permanent(f"AD {self.name}: cannot remove thumbnailPhoto of {account.dn}: {exc.message}") from None
        return StepResult("changed", dn=account.dn, changes=[change]), account
