"""Active Directory through ldap3: every action is an ensure that reads the account and changes what differs.

Security: only LDAPS or StartTLS with the CA verified (plain LDAP is refused unless a test explicitly allows
it); every value placed in a filter is escaped with ``escape_filter_chars`` and every RDN with ``escape_rdn``;
passwords are generated here, written once, and never logged, returned or stored.

An ``ADTarget`` holds one connection and is not thread-safe: the worker keeps one per thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ldap3  # type: ignore[import-untyped]
from ldap3.core import exceptions as ldap_errors  # type: ignore[import-untyped]
from ldap3.utils.dn import escape_rdn, to_dn  # type: ignore[import-untyped]

from lifecycle.errors import (
    AdoptionNeeded,
    NamingExhausted,
    Permanent,
    PolicyRefused,
)
from lifecycle.mapping.naming import SAM_PLACEHOLDER, sanitize_address, with_suffix
from lifecycle.state import Change
from lifecycle.targets import StepResult, ad_manager
from lifecycle.targets.ad_exchange import ADExchange
from lifecycle.targets.ad_model import (
    EXCHANGE_2013_VERSION,
    SECRET_ATTRIBUTES,
    TREE_DELETE_CONTROL,
    UF_ACCOUNTDISABLE,
    UF_NORMAL_ACCOUNT,
    Account,
    Anchor,
    encode_password,
    generate_password,
    normalize_dn,
    op,
    parent_dn,
)
from lifecycle.work import Step

__all__ = [
    "EXCHANGE_2013_VERSION",
    "UF_NORMAL_ACCOUNT",
    "ADTarget",
    "Account",
    "Anchor",
    "generate_password",
    "normalize_dn",
]


class ADTarget(ADExchange):
    """Ensure-operations on one AD domain."""

    # Actions -----------------------------------------------------------------------------------------------
    def execute(
        self, step: Step, anchor: Anchor, account: Account | None, correlate: Sequence[tuple[str, str]] = ()
    ) -> tuple[StepResult, Account | None]:
        """Run one step; ``account`` is what earlier steps of the same work item know (None: not found yet).

        ``correlate``: (attribute, value) pairs from the Halo user that find an existing account of this
        person without the anchor (a joiner on a directory that had accounts before the service).
        """
        if step.action == "create_user":
            return self.create_user(step.params, anchor, account, correlate)
        if account is None:
            if step.action in ("delete_user", "disable_user", "remove_from_groups"):
                # Nothing to disable or remove: the desired state already holds.
                return StepResult("unchanged", message="no account with this anchor"), None
            raise Permanent(
                f"AD {self.name}: no account has {anchor.attribute}={anchor.value}, so {step.action} has nothing "
                "to change (its joiner may have failed; replay it first)"
            )
        self.check_protected(account)
        if step.action == "reset_password" and anchor.is_legacy(account):
            # A bare id in the anchor attribute may be an HR number that happens to equal a Halo id: a new
            # password mailed out for such an account would hand it to someone else.
            raise AdoptionNeeded(
                f"AD {self.name}: {account.dn} carries the bare {anchor.attribute}={anchor.legacy}, not "
                f"{anchor.value}: the service did not create or link it, so its password is not reset until an "
                "operator links it (`lifecycle link approve`)",
                dn=account.dn,
                attribute=anchor.attribute,
                value=anchor.legacy or "",
            )
        if step.action == "set_manager":
            return ad_manager.set_manager(self, account, anchor.attribute, step.params.get("manager", {})), account
        handler = {
            "modify_properties": self.modify_attributes,
            "apply_template": self.modify_attributes,
            "disable_user": self.disable,
            "enable_user": self.enable,
            "move_ou": self.move_ou,
            "sync_groups": self.sync_groups,
            "add_to_groups": self.add_to_groups,
            "remove_from_groups": self.remove_from_groups,
            "reset_password": self.reset_password,
            "delete_user": self.delete,
            "set_home_directory": self.set_home_directory,
            "create_remote_mailbox": self.create_remote_mailbox,
            "disable_remote_mailbox": self.disable_remote_mailbox,
            "delete_remote_mailbox": self.delete_remote_mailbox,
            "disable_lync": self.disable_lync,
            "enable_lync": self.enable_lync,
            "set_ad_photo": self.set_photo,
            "remove_ad_photo": self.remove_photo,
        }.get(step.action)
        if handler is None:
            raise Permanent(f"AD {self.name}: action {step.action} is not an Active Directory action")
        return handler(step.params, account)

    @staticmethod
    def _candidate_pairs(names: dict[str, Any]) -> list[tuple[str, str]]:
        return [(attr, value) for c in names.get("candidates", []) for attr, value in c.items()]

    def _choose_names(self, names: dict[str, Any], taken: set[tuple[str, str]] | None = None) -> dict[str, str]:
        candidates: list[dict[str, str]] = names.get("candidates", [])
        if not candidates:
            raise NamingExhausted("no naming candidate could be made from this user's fields (are the names empty?)")
        if taken is None:
            taken = self._taken(self._candidate_pairs(names))
        for candidate in candidates:
            if not any((attr, value) in taken for attr, value in candidate.items()):
                return candidate
        # Numeric suffixes on the first candidate: one search for all of them, then the lowest free number.
        base = candidates[0]["samaccountname"]
        patterns: dict[str, str] = names.get("suffix_patterns", {})
        suffixed: list[dict[str, str]] = []
        for number in range(2, int(names.get("max_suffix", 99)) + 1):
            sam = with_suffix(base, number)
            candidate = {"samaccountname": sam}
            for attr, pattern in patterns.items():
                candidate[attr] = sanitize_address(pattern.replace(SAM_PLACEHOLDER, sam))
            suffixed.append(candidate)
        for chunk_start in range(0, len(suffixed), 25):
            chunk = suffixed[chunk_start : chunk_start + 25]
            taken = self._taken([(a, v) for c in chunk for a, v in c.items()])
            for candidate in chunk:
                if not any((attr, value) in taken for attr, value in candidate.items()):
                    return candidate
        raise NamingExhausted(
            f"every name candidate is taken ({', '.join(c['samaccountname'] for c in candidates)} and "
            f"{base}2..{base}{names.get('max_suffix', 99)}): add a candidate to the mapping's [naming]"
        )

    def create_user(
        self,
        params: dict[str, Any],
        anchor: Anchor,
        account: Account | None,
        correlate: Sequence[tuple[str, str]] = (),
    ) -> tuple[StepResult, Account | None]:
        if account is not None:
            return StepResult("unchanged", dn=account.dn, message="account exists"), account
        account, taken = self._find_and_check_names(anchor, self._candidate_pairs(params["names"]), correlate)
        if account is not None:
            return StepResult("unchanged", dn=account.dn, message="account exists"), account
        ou: str = params["ou"]
        self._check_target_ou(ou)
        names = self._choose_names(params["names"], taken)
        attributes: dict[str, Any] = {k: v for k, v in params.get("attributes", {}).items() if v not in ("", None)}
        attributes.update(
            {
                "objectClass": ["top", "person", "organizationalPerson", "user"],
                anchor.attribute: anchor.value,
                "sAMAccountName": names["samaccountname"],
                "userPrincipalName": names["userprincipalname"],
                # A joiner created ahead of its start date is created disabled (enabled by a scheduled step).
                "userAccountControl": str(
                    UF_NORMAL_ACCOUNT | (0 if params.get("enabled", True) else UF_ACCOUNTDISABLE)
                ),
            }
        )
        if names.get("mail"):
            attributes["mail"] = names["mail"]
        # The manager at creation, so the initial password can be mailed to them (LIFECYCLE_PASSWORD_DELIVERY).
        manager, how = ad_manager.resolve(self, anchor.attribute, params.get("manager") or {})
        if manager:
            attributes["manager"] = manager
        changes = [Change(k, None, v) for k, v in attributes.items() if k != "objectClass"]
        changes.append(Change("unicodePwd", None, "(set)"))
        password_params = params.get("password", {})
        if password_params.get("must_change", True):
            changes.append(Change("pwdLastSet", None, "0 (must change at next logon)"))
        cn_candidates = [params["cn"], f"{params['cn']} ({names['samaccountname']})"]
        dn = f"CN={escape_rdn(cn_candidates[0])},{ou}"
        if self.dry_run:
            return StepResult("dry_run", dn=dn, changes=changes), None
        password = generate_password(int(password_params.get("length", 20)))
        # One add carries the password and the enabled flag: AD refuses an enabled account without a password,
        # and one operation instead of three is what makes a joiner fast (samba-ad.md measured 43/s vs 25-31/s).
        attributes["unicodePwd"] = encode_password(password)
        if password_params.get("must_change", True):
            attributes["pwdLastSet"] = "0"
        for cn in cn_candidates:
            dn = f"CN={escape_rdn(cn)},{ou}"
            try:
                self._call(op("add", dn, attributes=attributes))
                break
            except ldap_errors.LDAPEntryAlreadyExistsResult:
                continue  # another object has this CN in the OU: try the next CN form
            except ldap_errors.LDAPNoSuchObjectResult:
                raise Permanent(f"AD {self.name}: the OU {ou} does not exist (create it or fix the mapping)") from None
            except ldap_errors.LDAPOperationResult as exc:
                raise Permanent(f"AD {self.name}: cannot create {dn}: {exc.description}: {exc.message}") from None
        else:
            raise Permanent(f"AD {self.name}: every CN form of {params['cn']!r} is taken in {ou}")
        if self._password_sink is not None:
            self._password_sink(dn, password)
        del password
        stored = {
            k.lower(): (v if isinstance(v, list) else [v])
            for k, v in attributes.items()
            if k.lower() not in SECRET_ATTRIBUTES
        }
        note = (
            f"the manager Halo names ({how}) has no account: set_manager sets it once it exists"
            if manager is None
            else ""
        )
        return StepResult("changed", dn=dn, changes=changes, message=note), Account(dn, stored, set())

    def modify_attributes(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        wanted: dict[str, str] = params.get("attributes", {})
        changes: list[Change] = []
        modifications: dict[str, list[tuple[str, list[str]]]] = {}
        for attribute, value in wanted.items():
            current = account.first(attribute)
            if current != value:
                changes.append(Change(attribute, current, value))
                modifications[attribute] = [(ldap3.MODIFY_REPLACE, [value])]
        for attribute in params.get("clear", []):
            current = account.first(attribute)
            if current is not None:
                changes.append(Change(attribute, current, None))
                modifications[attribute] = [(ldap3.MODIFY_REPLACE, [])]
        if not modifications:
            return StepResult("unchanged", dn=account.dn), account
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=changes), account
        try:
            self._call(lambda conn: conn.modify(account.dn, modifications))
        except ldap_errors.LDAPOperationResult as exc:
            raise Permanent(f"AD {self.name}: cannot modify {account.dn}: {exc.description}: {exc.message}") from None
        for change in changes:
            account.attributes[change.attribute.lower()] = [] if change.after is None else [change.after]
        return StepResult("changed", dn=account.dn, changes=changes), account

    def _set_uac(self, account: Account, uac: int) -> tuple[StepResult, Account]:
        before = account.uac
        if before == uac:
            return StepResult("unchanged", dn=account.dn), account
        changes = [Change("userAccountControl", before, uac)]
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=changes), account
        try:
            self._call(
                lambda conn: conn.modify(account.dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [str(uac)])]})
            )
        except ldap_errors.LDAPOperationResult as exc:
            raise Permanent(f"AD {self.name}: cannot set userAccountControl on {account.dn}: {exc.message}") from None
        account.attributes["useraccountcontrol"] = [str(uac)]
        return StepResult("changed", dn=account.dn, changes=changes), account

    def disable(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        return self._set_uac(account, account.uac | UF_ACCOUNTDISABLE)

    def enable(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        return self._set_uac(account, account.uac & ~UF_ACCOUNTDISABLE)

    def move_ou(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        ou: str = params["ou"]
        if normalize_dn(parent_dn(account.dn)) == normalize_dn(ou):
            return StepResult("unchanged", dn=account.dn), account
        self._check_target_ou(ou)
        rdn = to_dn(account.dn)[0]
        sam = account.first("sAMAccountName") or "user"
        name = account.first("cn") or rdn.split("=", 1)[1]
        candidates = [rdn, f"CN={escape_rdn(f'{name} ({sam})')}"]
        if self.dry_run:
            return StepResult("dry_run", dn=f"{rdn},{ou}", changes=[Change("dn", account.dn, f"{rdn},{ou}")]), account
        for relative in candidates:
            try:
                self._call(op("modify_dn", account.dn, relative, new_superior=ou))
            except ldap_errors.LDAPEntryAlreadyExistsResult:
                continue
            except ldap_errors.LDAPNoSuchObjectResult:
                raise Permanent(f"AD {self.name}: the OU {ou} does not exist (create it or fix the mapping)") from None
            except ldap_errors.LDAPOperationResult as exc:
                raise Permanent(f"AD {self.name}: cannot move {account.dn} to {ou}: {exc.message}") from None
            new_dn = f"{relative},{ou}"
            change = Change("dn", account.dn, new_dn)
            account.dn = new_dn
            return StepResult("changed", dn=new_dn, changes=[change]), account
        raise Permanent(f"AD {self.name}: {rdn} and its fallback are both taken in {ou}")

    def _membership(
        self, account: Account, add: Sequence[str], remove: Sequence[str], *, strip_all: bool = False
    ) -> tuple[StepResult, Account]:
        self._check_groups(add)
        # Leaving a group that is gone changes nothing; stripping "all" groups may leave unmanaged ones too.
        self._check_groups(remove, must_exist=False, check_managed=not strip_all)
        changes = [Change("memberOf", None, g) for g in add] + [Change("memberOf", g, None) for g in remove]
        if not changes:
            return StepResult("unchanged", dn=account.dn), account
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=changes), account
        for group in add:
            try:
                self._call(op("modify", group, {"member": [(ldap3.MODIFY_ADD, [account.dn])]}))
            except (ldap_errors.LDAPEntryAlreadyExistsResult, ldap_errors.LDAPAttributeOrValueExistsResult):
                pass  # already a member: the desired state holds
            except ldap_errors.LDAPNoSuchObjectResult:
                raise Permanent(
                    f"AD {self.name}: the group {group} does not exist (create it or fix the mapping)"
                ) from None
            account.member_of.add(normalize_dn(group))
        for group in remove:
            try:
                self._call(op("modify", group, {"member": [(ldap3.MODIFY_DELETE, [account.dn])]}))
            except (
                ldap_errors.LDAPNoSuchAttributeResult,
                ldap_errors.LDAPUnwillingToPerformResult,
                ldap_errors.LDAPNoSuchObjectResult,
            ):
                pass  # not a member (or the group is gone): the desired state holds
            account.member_of.discard(normalize_dn(group))
        return StepResult("changed", dn=account.dn, changes=changes), account

    def sync_groups(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        """Join the groups the rules give, leave the managed groups they no longer give, keep all others."""
        desired = {normalize_dn(g): g for g in params.get("desired", [])}
        managed = {normalize_dn(g): g for g in params.get("managed", [])}
        add = [g for key, g in desired.items() if key not in account.member_of]
        remove = [g for key, g in managed.items() if key not in desired and key in account.member_of]
        return self._membership(account, add, remove)

    def add_to_groups(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        add = [g for g in params.get("groups", []) if normalize_dn(g) not in account.member_of]
        return self._membership(account, add, [])

    def remove_from_groups(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        groups = params.get("groups", [])
        if groups == "all":
            remove = [g for g in account.attributes.get("memberof", []) if normalize_dn(g) in account.member_of]
            return self._membership(account, [], remove, strip_all=True)
        remove = [g for g in groups if normalize_dn(g) in account.member_of]
        return self._membership(account, [], remove)

    def reset_password(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        changes = [Change("unicodePwd", None, "(reset)")]
        must_change = bool(params.get("must_change", True))
        if must_change:
            changes.append(Change("pwdLastSet", None, "0 (must change at next logon)"))
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=changes), account
        password = generate_password(int(params.get("length", 20)))
        modification: dict[str, Any] = {"unicodePwd": [(ldap3.MODIFY_REPLACE, [encode_password(password)])]}
        if must_change:
            modification["pwdLastSet"] = [(ldap3.MODIFY_REPLACE, ["0"])]
        try:
            self._call(lambda conn: conn.modify(account.dn, modification))
        except ldap_errors.LDAPOperationResult as exc:
            raise Permanent(f"AD {self.name}: cannot reset the password of {account.dn}: {exc.description}") from None
        if self._password_sink is not None:
            self._password_sink(account.dn, password)
        del password
        return StepResult("changed", dn=account.dn, changes=changes), account

    def set_home_directory(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account]:
        """Set (or clear) homeDirectory and homeDrive; ``{samaccountname}``-style placeholders come from the account.

        Runs after the home-folder step that made the path true (mapping order), so AD never points at a folder
        that is not there yet. The path must be a plain UNC or absolute path: no ``..``, no device names.
        """
        from lifecycle.targets.files_actions import UnsafePath, check_path_syntax, expand_account_placeholders

        attributes: dict[str, str] = {}
        clear: list[str] = []
        if params.get("clear"):
            clear = ["homeDirectory", "homeDrive"]
        elif params.get("path") is not None:
            try:
                path = expand_account_placeholders(str(params["path"]), account.attributes)
                check_path_syntax(path)
            except UnsafePath as exc:
                raise PolicyRefused(f"AD {self.name}: homeDirectory refused: {exc}") from None
            attributes["homeDirectory"] = path
            if params.get("drive"):
                attributes["homeDrive"] = str(params["drive"])
        return self.modify_attributes({"attributes": attributes, "clear": clear}, account)

    def delete(self, params: dict[str, Any], account: Account) -> tuple[StepResult, Account | None]:
        changes = [Change("dn", account.dn, None)]
        if self.dry_run:
            return StepResult("dry_run", dn=account.dn, changes=changes), account
        try:
            # Tree delete: an account can hold child objects (devices, Exchange data) that would block a delete.
            self._call(lambda conn: conn.delete(account.dn, controls=[TREE_DELETE_CONTROL]))
        except ldap_errors.LDAPNoSuchObjectResult:
            return StepResult("unchanged", dn=account.dn, message="already deleted"), None
        except ldap_errors.LDAPOperationResult as exc:
            raise Permanent(f"AD {self.name}: cannot delete {account.dn}: {exc.description}: {exc.message}") from None
        return StepResult("changed", dn=account.dn, changes=changes), None

    def delivery_facts(self, dn: str) -> dict[str, str]:
        """Who an account is and who manages it: what a password delivery channel needs (never the password)."""

        def read(conn: Any, base: str, attributes: list[str]) -> dict[str, Any]:
            conn.search(base, "(objectClass=*)", ldap3.BASE, attributes=attributes)
            entries = [e for e in conn.response if e.get("type") == "searchResEntry"]
            return dict(entries[0]["attributes"]) if entries else {}

        def first(values: Any) -> str:
            if isinstance(values, list):
                return str(values[0]) if values else ""
            return str(values or "")

        wanted = ["displayName", "userPrincipalName", "sAMAccountName", "manager"]
        user = self._call(lambda conn: read(conn, dn, wanted))
        facts = {
            "name": first(user.get("displayName")),
            "upn": first(user.get("userPrincipalName")),
            "sam": first(user.get("sAMAccountName")),
        }
        manager = first(user.get("manager"))
        if manager:
            boss = self._call(lambda conn: read(conn, manager, ["displayName", "mail"]))
            facts["manager_name"] = first(boss.get("displayName"))
            facts["manager_mail"] = first(boss.get("mail"))
        return facts
