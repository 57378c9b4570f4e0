"""Microsoft 365 actions (Graph) and the Exchange/Lync/photo actions that live in AD: names and params only.

This module is light on purpose (pydantic, no SDK): the planner imports it to validate a mapping's step
entries. The Graph actions run in ``lifecycle.targets.graph``; the AD-side ones (hybrid remote mailbox,
on-premises Lync, ``thumbnailPhoto``) are methods of ``lifecycle.targets.ad.ADTarget``.

Licences and plans are named by GUID or by name: SKU part numbers (``SPE_E3``) and service plan names
(``EXCHANGE_S_ENTERPRISE``) are resolved through the tenant's ``subscribedSkus`` once per process; the plans
below are known without a look-up.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lifecycle.actions import ActionInfo

# Service plans every tenant has under these ids (reference/graph.md; EXCHANGE_S_DESKLESS, the F1/F3 kiosk
# mailbox, from Microsoft's "Product names and service plan identifiers for licensing" list). Other names are
# read from the tenant's subscribedSkus.
KNOWN_PLANS: dict[str, str] = {
    "EXCHANGE_S_STANDARD": "9aaf7827-d63c-4b61-89c3-182f06f82e5c",
    "EXCHANGE_S_ENTERPRISE": "efb87545-963c-4e0d-99df-69c6916d9eb0",
    "EXCHANGE_S_DESKLESS": "4a82b400-a79f-41a4-b4e2-e94f5787b113",
    "MCOSTANDARD": "0feaeb32-d00e-4d66-bd5a-43b5b83db82c",
    "TEAMS1": "57ff2da0-773e-42df-b2af-ffb7a2317929",
}
# The plans that carry a mailbox, or Teams and Skype, in commercial, F-SKU (kiosk/frontline) and US Government
# SKUs. A list of alternatives: the names the tenant has are used (resolved through subscribedSkus).
EXCHANGE_PLANS = [
    "EXCHANGE_S_ENTERPRISE",
    "EXCHANGE_S_STANDARD",
    "EXCHANGE_S_DESKLESS",
    "EXCHANGE_S_ENTERPRISE_GOV",
    "EXCHANGE_S_STANDARD_GOV",
    "EXCHANGE_S_DESKLESS_GOV",
]
TEAMS_PLANS = ["TEAMS1", "MCOSTANDARD", "MCOIMP", "TEAMS_GOV", "MCOSTANDARD_GOV", "MCOIMP_GOV"]
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GraphParams(_Params):
    """What every Graph action takes: which cloud user, when it is not the AD account's (cloud-only users)."""

    # A UPN or object id (a template such as "{emailaddress}"); by default the cloud user is the AD account's
    # (matched by userPrincipalName or objectGUID, see LIFECYCLE_GRAPH_MATCH).
    user: str | None = None


def _check_zone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if value.upper() != "UTC":
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone name (IANA, e.g. Europe/London)") from None
    return value


class LicenseSpec(_Params):
    sku: str = Field(min_length=1, description="skuId (GUID) or SKU part number, e.g. SPE_E3")
    disabled_plans: list[str] = Field(default_factory=list, description="service plan ids or names to disable")
    # Graph refuses to disable a plan an enabled plan of the SKU depends on (Office for the web needs SharePoint),
    # and Microsoft publishes no list of these dependencies. True: the plans Graph names in its refusal are
    # disabled too (remembered per process); False: the step fails with a reason naming them.
    disable_dependents: bool | None = None  # None (left out of the work item): False


class AssignLicenses(GraphParams):
    skus: list[LicenseSpec] = Field(min_length=1)
    # Set before the licence (Graph refuses a licence without it); two letters, ISO 3166.
    usage_location: str | None = Field(default=None, pattern=r"^[A-Za-z]{2}$")
    # Also remove directly assigned SKUs the list does not name (a mover whose licence changes).
    remove_unlisted: bool = False

    @field_validator("skus", mode="before")
    @classmethod
    def _names_are_specs(cls, value: object) -> object:
        if isinstance(value, list):
            return [{"sku": v} if isinstance(v, str) else v for v in value]
        return value


class RemoveLicenses(GraphParams):
    skus: Literal["all"] | list[str] = "all"
    # SKUs to keep (e.g. the one carrying the mailbox, so a leaver's auto-reply keeps answering until the
    # staged deletion removes the rest).
    keep: list[str] = Field(default_factory=list)


class CreateMailbox(GraphParams):
    """Exchange Online: a licence with an Exchange plan; the step then waits until the mailbox answers."""

    sku: str | None = None
    disabled_plans: list[str] = Field(default_factory=list)
    usage_location: str | None = Field(default=None, pattern=r"^[A-Za-z]{2}$")
    exchange_plans: list[str] = Field(default_factory=lambda: list(EXCHANGE_PLANS), min_length=1)
    # How long after the Exchange plan was assigned the mailbox is waited for (rescheduled, never blocking).
    wait_minutes: int = Field(default=24 * 60, ge=1, le=7 * 24 * 60)


class MailboxPlans(GraphParams):
    exchange_plans: list[str] = Field(default_factory=lambda: list(EXCHANGE_PLANS), min_length=1)


class DeleteMailbox(MailboxPlans):
    # "licence": remove the SKUs that carry an Exchange plan; "plan": only disable the plan in them.
    remove: Literal["licence", "plan"] = "licence"


class AutoReply(GraphParams):
    internal_message: str = Field(min_length=1)
    external_message: str | None = None
    external_audience: Literal["none", "contactsOnly", "all"] = "all"
    # A schedule (both or neither); without it the reply is always on.
    start: datetime | None = None
    end: datetime | None = None
    # The zone of start and end when they carry no offset (IANA name); the schedule is sent to Graph in UTC.
    time_zone: str = "UTC"

    @field_validator("time_zone")
    @classmethod
    def _zone_exists(cls, value: str) -> str:
        return _check_zone(value)

    @model_validator(mode="after")
    def _schedule_is_whole(self) -> AutoReply:
        if (self.start is None) != (self.end is None):
            raise ValueError("a scheduled auto-reply needs both start and end")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("the auto-reply's end must be after its start")
        return self


class DisableTeams(GraphParams):
    plans: list[str] = Field(default_factory=lambda: list(TEAMS_PLANS), min_length=1)


# ``group_ids``, not ``groups``: a step entry's ``groups`` key belongs to the AD group actions.
class CloudGroups(GraphParams):
    group_ids: list[str] = Field(min_length=1, description="group object ids")


class RemoveCloudGroups(GraphParams):
    """Leave the listed groups, or "all": every group Graph can change, except role-assignable groups, the
    ``keep`` list, and groups that assign a licence a ``remove_licenses`` step of the same item keeps."""

    group_ids: Literal["all"] | list[str]
    keep: list[str] = Field(default_factory=list, description="group object ids kept by 'all'")


class SyncCloudGroups(GraphParams):
    """Join ``desired``, leave the ``managed`` groups not desired, keep every other group ("move")."""

    desired: list[str] = Field(default_factory=list)
    managed: list[str] = Field(default_factory=list)


class PhotoSource(_Params):
    """A photo from the event: a URL or base64 text (a template each). Neither (the field is absent): no change."""

    url: str | None = None
    base64: str | None = None


class GraphPhoto(GraphParams, PhotoSource):
    max_pixels: int = Field(default=648, ge=48, le=648)


class ADPhoto(PhotoSource):
    # AD's thumbnailPhoto is shown at 96x96; the attribute holds at most 100 KB.
    max_pixels: int = Field(default=96, ge=32, le=648)


class NoADParams(_Params):
    pass


# Cloud-only users (no AD): the properties a mapping may set on them, the anchor kept on the user.
# Strings only; names and numbers Graph documents on the user resource
# (https://learn.microsoft.com/en-us/graph/api/resources/user).
CLOUD_PROPERTIES = frozenset(
    {
        "displayName",
        "givenName",
        "surname",
        "jobTitle",
        "department",
        "officeLocation",
        "companyName",
        "mobilePhone",
        "city",
        "country",
        "state",
        "streetAddress",
        "postalCode",
        "employeeType",
        "preferredLanguage",
    }
)


def cloud_anchor_property(anchor: str) -> str | None:
    """The Entra property that holds the mapping's anchor, or None when Entra has no such property.

    ``employeeID`` is AD's attribute for Entra's ``employeeId`` (Entra Connect syncs one into the other), and
    ``extensionAttribute1``..``15`` are ``onPremisesExtensionAttributes``, which Graph lets an app write on a
    cloud-only user; so a hybrid person and a cloud-only one are found the same way.
    """
    low = anchor.lower()
    if low == "employeeid":
        return "employeeId"
    match = re.fullmatch(r"extensionattribute([1-9]|1[0-5])", low)
    if match:
        return f"onPremisesExtensionAttributes/extensionAttribute{match.group(1)}"
    return None


def _iso_hire_date(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD) or an ISO date-time") from None
    if parsed.tzinfo is None:
        from datetime import UTC

        parsed = parsed.replace(tzinfo=UTC)
    return parsed.strftime("%Y-%m-%dT%H:%M:%SZ") if parsed.utcoffset() == timedelta(0) else parsed.isoformat()


class CloudUserFields(_Params):
    """What a cloud-only user carries from Halo (templates; a field Halo did not send changes nothing)."""

    # Graph property -> value, e.g. { displayName = "{name}", department = "{department}" }.
    properties: dict[str, str] = Field(default_factory=dict)
    # Two letters, ISO 3166: needed before a licence is assigned directly.
    usage_location: str | None = Field(default=None, pattern=r"^[A-Za-z]{2}$")
    # employeeHireDate (a date or an ISO date-time; a date is midnight UTC).
    hire_date: str | None = None
    # employeeId, when the anchor is kept elsewhere (an extension attribute); at most 16 characters.
    employee_id: str | None = Field(default=None, max_length=16)

    @field_validator("properties")
    @classmethod
    def _known_properties(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - CLOUD_PROPERTIES)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: not a property the service sets (known: {', '.join(sorted(CLOUD_PROPERTIES))})"
            )
        return value

    @field_validator("hire_date")
    @classmethod
    def _hire_date(cls, value: str | None) -> str | None:
        return _iso_hire_date(value)


class Manager(_Params):
    """The person's manager, from Halo: by the manager's Halo id (found by the anchor) or by mail address.

    Either is a template (``"{cf.manager_id}"``, ``"{manager_email}"``); the id is tried first. A field Halo
    did not send changes nothing (the manager stays).
    """

    manager_id: str | None = None
    manager_mail: str | None = None


class CreateCloudUser(CloudUserFields, Manager):
    """A cloud-only Entra ID user, found again by the anchor; restored when a soft-deleted one has it."""

    # Filled by the planner from [naming]: the candidates (login = mailNickname, UPN, mail) and suffix patterns.
    names: dict[str, Any] = Field(default_factory=dict)
    # Sign-in allowed at once (false: a future joiner enabled later by enable_cloud_account).
    enabled: bool = True
    # Mail the initial password to the manager (LIFECYCLE_PASSWORD_DELIVERY = graph_mail); false: a random
    # password nobody knows (passwordless onboarding with a Temporary Access Pass). With manager_id or
    # manager_mail the manager is set right after the create, before the password is mailed.
    deliver_password: bool = False


class ModifyCloudUser(GraphParams, CloudUserFields):
    pass


class DeleteCloudUser(GraphParams):
    # Staged: run this many days after the event (a rehire before then cancels it).
    after_days: int = Field(default=0, ge=0, le=3650)


class TemporaryAccessPass(GraphParams):
    """Passwordless onboarding: a Temporary Access Pass mailed to the manager like a password (never stored,
    logged or audited); the Authentication methods policy must allow it (docs/cloud-only.md)."""

    # When it becomes valid: a date (at ``start_time`` in ``time_zone``) or an ISO date-time, e.g. the start
    # date "{cf.start_date}". Absent or past: valid at once.
    start: str | None = None
    start_time: str = Field(default="08:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    time_zone: str = "UTC"
    # How long it stays valid (10 to 43200; within the policy's minimum and maximum, by default 60 to 480).
    lifetime_minutes: int = Field(default=480, ge=10, le=43200)
    # One sign-in only (the policy may force it).
    usable_once: bool = False

    @field_validator("start")
    @classmethod
    def _start(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"{value!r} is not a date (YYYY-MM-DD) or an ISO date-time") from None
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _check_zone(value)


class CloudManager(GraphParams, Manager):
    pass


class RestoreCloudUser(_Params):
    # Drop proxy addresses an active object took meanwhile (Graph's autoReconcileProxyConflict).
    auto_reconcile_proxy_conflict: bool = False


class RemoteMailbox(_Params):
    """Hybrid Exchange: the attributes Enable-RemoteMailbox writes on the AD user."""

    # The tenant's routing domain, e.g. contoso.mail.onmicrosoft.com (targetAddress alias@domain).
    routing_domain: str = Field(min_length=3)
    # mailNickname; by default the account's sAMAccountName.
    alias: str | None = None
    # The primary SMTP address; by default the account's mail.
    primary_address: str | None = None


class DisableRemoteMailbox(_Params):
    keep_addresses: bool = False


ACTIONS: tuple[ActionInfo, ...] = (
    # Microsoft Graph.
    ActionInfo("assign_licenses", "graph", AssignLicenses, "assign the mapped SKUs and disabled plans"),
    ActionInfo("remove_licenses", "graph", RemoveLicenses, "remove all or the listed directly assigned SKUs"),
    ActionInfo("create_mailbox", "graph", CreateMailbox, "Exchange Online: licence with Exchange, wait for it"),
    ActionInfo(
        "disable_mailbox",
        "graph",
        MailboxPlans,
        "Exchange Online: disable the Exchange plan (the mailbox is deleted 30 days later unless re-enabled)",
    ),
    ActionInfo("delete_mailbox", "graph", DeleteMailbox, "Exchange Online: remove the Exchange licence or plan"),
    ActionInfo("set_auto_reply", "graph", AutoReply, "set the automatic reply (internal, external, schedule)"),
    ActionInfo("disable_auto_reply", "graph", GraphParams, "turn the automatic reply off"),
    ActionInfo("revoke_sessions", "graph", GraphParams, "revoke sign-in sessions issued before the event"),
    ActionInfo("disable_cloud_account", "graph", GraphParams, "block sign-in in Entra (cloud-only and synced users)"),
    ActionInfo("enable_cloud_account", "graph", GraphParams, "allow sign-in of a cloud-only user (synced: AD decides)"),
    ActionInfo("disable_teams", "graph", DisableTeams, "disable the Teams and Skype plans in the licences"),
    ActionInfo("add_to_cloud_groups", "graph", CloudGroups, "join the listed security or Microsoft 365 groups"),
    ActionInfo("remove_from_cloud_groups", "graph", RemoveCloudGroups, "leave all or the listed cloud groups"),
    ActionInfo("sync_cloud_groups", "graph", SyncCloudGroups, "join desired, leave managed ones not desired"),
    ActionInfo("set_photo", "graph", GraphPhoto, "set the Microsoft 365 profile photo"),
    ActionInfo("remove_photo", "graph", GraphParams, "remove the Microsoft 365 profile photo"),
    ActionInfo(
        "create_cloud_user",
        "graph",
        CreateCloudUser,
        "cloud-only: create the Entra ID user (names checked free in the tenant), or restore a deleted one",
    ),
    ActionInfo("modify_cloud_user", "graph", ModifyCloudUser, "cloud-only: set the mapped properties that differ"),
    ActionInfo("delete_cloud_user", "graph", DeleteCloudUser, "cloud-only: soft-delete the user (restorable 30 days)"),
    ActionInfo("restore_cloud_user", "graph", RestoreCloudUser, "cloud-only: restore the soft-deleted user (rehire)"),
    ActionInfo("set_cloud_manager", "graph", CloudManager, "set the Entra manager (by the manager's anchor or mail)"),
    ActionInfo(
        "create_temporary_access_pass",
        "graph",
        TemporaryAccessPass,
        "passwordless onboarding: a Temporary Access Pass mailed to the manager (never stored)",
        once_only=True,
    ),
    # Active Directory, with params (hybrid Exchange, on-premises Lync, thumbnailPhoto).
    ActionInfo("create_remote_mailbox", "ad", RemoteMailbox, "hybrid: write the remote-mailbox attributes"),
    ActionInfo("disable_remote_mailbox", "ad", DisableRemoteMailbox, "hybrid: clear the remote-mailbox attributes"),
    ActionInfo("delete_remote_mailbox", "ad", NoADParams, "hybrid: clear the remote-mailbox attributes and mail"),
    ActionInfo("disable_lync", "ad", NoADParams, "on-premises Lync/Skype: msRTCSIP-UserEnabled = FALSE"),
    ActionInfo("enable_lync", "ad", NoADParams, "on-premises Lync/Skype: msRTCSIP-UserEnabled = TRUE"),
    ActionInfo("set_ad_photo", "ad", ADPhoto, "set thumbnailPhoto (JPEG, at most 100 KB)"),
    ActionInfo("remove_ad_photo", "ad", NoADParams, "remove thumbnailPhoto"),
)
