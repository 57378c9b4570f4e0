"""The Graph stand-in's data: the tenant's SKUs and service plans, users, groups, the request log and faults."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

EXCHANGE = "efb87545-963c-4e0d-99df-69c6916d9eb0"  # EXCHANGE_S_ENTERPRISE
EXCHANGE_STANDARD = "9aaf7827-d63c-4b61-89c3-182f06f82e5c"
TEAMS = "57ff2da0-773e-42df-b2af-ffb7a2317929"  # TEAMS1
SKYPE = "0feaeb32-d00e-4d66-bd5a-43b5b83db82c"  # MCOSTANDARD
SHAREPOINT = "5dbe027f-2339-4123-9542-606e4d348a72"  # SHAREPOINTENTERPRISE
E3 = "05e9a617-0261-4cee-bb44-138d3ef5d965"  # SPE_E3
E1 = "18181a46-0d4e-45cd-891e-60aabd171b4e"  # STANDARDPACK
VISIO = "c5928f49-12ba-48f7-ada3-0d743a3601d5"  # VISIOCLIENT
DEFAULT_SKUS: list[dict[str, Any]] = [
    {
        "skuId": E3,
        "skuPartNumber": "SPE_E3",
        "servicePlans": [
            {"servicePlanId": EXCHANGE, "servicePlanName": "EXCHANGE_S_ENTERPRISE"},
            {"servicePlanId": TEAMS, "servicePlanName": "TEAMS1"},
            {"servicePlanId": SKYPE, "servicePlanName": "MCOSTANDARD"},
            {"servicePlanId": SHAREPOINT, "servicePlanName": "SHAREPOINTENTERPRISE"},
        ],
    },
    {
        "skuId": E1,
        "skuPartNumber": "STANDARDPACK",
        "servicePlans": [
            {"servicePlanId": EXCHANGE_STANDARD, "servicePlanName": "EXCHANGE_S_STANDARD"},
            {"servicePlanId": TEAMS, "servicePlanName": "TEAMS1"},
        ],
    },
    {
        "skuId": VISIO,
        "skuPartNumber": "VISIOCLIENT",
        "servicePlans": [{"servicePlanId": "663a804f-1c30-4ff0-9915-9db84f0d1cea", "servicePlanName": "VISIO_CLIENT"}],
    },
]
# Microsoft 365 F3 (frontline): the kiosk mailbox plan under its published id; the SKU's and MCOIMP's ids are
# the stand-in's own (the target resolves them by name through subscribedSkus).
KIOSK = "4a82b400-a79f-41a4-b4e2-e94f5787b113"  # EXCHANGE_S_DESKLESS
F3 = "5f3c2d1e-0000-4000-8000-0000000000f3"  # SPE_F1 (stand-in id)
SKYPE_KIOSK = "5f3c2d1e-0000-4000-8000-00000000c0e1"  # MCOIMP (stand-in id)
DEFAULT_SKUS.append(
    {
        "skuId": F3,
        "skuPartNumber": "SPE_F1",
        "servicePlans": [
            {"servicePlanId": KIOSK, "servicePlanName": "EXCHANGE_S_DESKLESS"},
            {"servicePlanId": TEAMS, "servicePlanName": "TEAMS1"},
            {"servicePlanId": SKYPE_KIOSK, "servicePlanName": "MCOIMP"},
        ],
    }
)
# A SKU whose plans depend on each other: Office for the web needs SharePoint (Microsoft's admin center:
# "to assign a license that contains Office for the web, you must also assign one of the following service
# plans: SharePoint Online (Plan 2), ...", quoted in MicrosoftDocs/OfficeDocs-Enterprise#627). Microsoft
# publishes no dependency list (MicrosoftDocs/azure-docs#23999), and subscribedSkus carries none: the
# stand-in keeps them to itself ("dependsOn" is never answered) and refuses with a message naming the plans.
WEB = "5f3c2d1e-0000-4000-8000-00000000ab01"  # stand-in ids
WEB_SHAREPOINT = "5f3c2d1e-0000-4000-8000-00000000ab02"
WEB_OFFICE = "5f3c2d1e-0000-4000-8000-00000000ab03"
DEFAULT_SKUS.append(
    {
        "skuId": WEB,
        "skuPartNumber": "O365_WEB",
        "servicePlans": [
            {"servicePlanId": WEB_SHAREPOINT, "servicePlanName": "SHAREPOINTSTANDARD"},
            {"servicePlanId": WEB_OFFICE, "servicePlanName": "SHAREPOINTWAC", "dependsOn": [WEB_SHAREPOINT]},
        ],
    }
)
EXCHANGE_PLANS = {EXCHANGE, EXCHANGE_STANDARD, KIOSK}
WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error(code: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {"date": iso(now()), "request-id": str(uuid.uuid4()), "client-request-id": str(uuid.uuid4())},
        }
    }


def not_found(what: str) -> tuple[int, Any]:
    return 404, error(
        "Request_ResourceNotFound",
        f"Resource '{what}' does not exist or one of its queried reference-property objects are not present.",
    )


@dataclass
class Logged:
    method: str
    path: str  # below /v1.0, unescaped, without the query
    query: str
    status: int
    in_batch: bool
    body: Any = None

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS and self.path != "/$batch"


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    retry_after: int | None
    commit: bool
    body: Any = None


@dataclass
class User:
    id: str
    upn: str
    display_name: str
    mail: str | None = None
    enabled: bool = True
    synced: bool = False
    immutable_id: str | None = None
    usage_location: str | None = None
    licenses: dict[str, list[str]] = field(default_factory=dict)  # direct: skuId -> disabled plans
    group_licenses: dict[str, str] = field(default_factory=dict)  # skuId -> assigning group id
    # skuId -> licenseAssignmentState error (CountViolation, DependencyViolation, ...): state "Error".
    license_errors: dict[str, str] = field(default_factory=dict)
    plan_times: dict[str, str] = field(default_factory=dict)  # servicePlanId -> assignedDateTime
    sessions_valid_from: str | None = None
    mailbox: dict[str, Any] | None = None
    mailbox_pending: bool = False
    photo: bytes | None = None
    # Cloud-only users (directory.py): other properties (employeeId, ...), SMTP proxies, soft deletion.
    extra: dict[str, Any] = field(default_factory=dict)
    proxy_addresses: list[str] = field(default_factory=list)
    deleted_upn: str | None = None
    deleted_at: str | None = None
    manager_id: str | None = None
    passes: list[dict[str, Any]] = field(default_factory=list)  # temporaryAccessPassMethods


@dataclass
class Group:
    id: str
    name: str
    group_types: list[str] = field(default_factory=list)
    membership_rule: str | None = None
    synced: bool = False
    mail_enabled: bool = False
    security_enabled: bool = True
    role_assignable: bool = False
    members: set[str] = field(default_factory=set)


Answer = tuple[int, Any, dict[str, str]]


def _select(query: dict[str, list[str]]) -> list[str] | None:
    value = (query.get("$select") or [""])[0]
    return [v.strip() for v in value.split(",") if v.strip()] or None


def _pick(data: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    if not select:
        return data
    wanted = {s.lower() for s in select}
    return {k: v for k, v in data.items() if k.lower() in wanted or k.startswith("@odata")}
