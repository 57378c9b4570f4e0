"""Pydantic models of what Halo sends: users, webhook deliveries, runbook bodies.

Halo's user object has about 290 fields and grows; the models name the ones the product relies on and keep
every other field (``extra="allow"``), because mapping templates may read any of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Halo's ids are int32 (its OpenAPI says so); a larger number is not a Halo id (and would not fit a store key).
MAX_HALO_ID = 2**31 - 1


class HaloCustomField(BaseModel):
    """One entry of a Halo user's ``customfields`` list."""

    model_config = ConfigDict(extra="allow")

    id: int | None = None
    name: str | None = None
    label: str | None = None
    value: Any = None
    display: Any = None


class HaloUser(BaseModel):
    """A Halo user as ``GET /api/Users`` returns it; unknown fields are kept."""

    model_config = ConfigDict(extra="allow")

    id: int = Field(gt=0, le=MAX_HALO_ID)
    name: str | None = None
    firstname: str | None = None
    surname: str | None = None
    emailaddress: str | None = None
    site_id: int | None = None
    site_name: str | None = None
    client_id: int | None = None
    client_name: str | None = None
    department: str | None = None
    inactive: bool | None = None
    isserviceaccount: bool | None = None
    customfields: list[HaloCustomField] | None = None

    @field_validator("site_id", "client_id", mode="before")
    @classmethod
    def _integral_float(cls, value: Any) -> Any:
        # Halo's spec declares site_id a double and sends 18.0; an id with a fraction is not an id.
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError("must be a whole number")
            return int(value)
        return value


class WebhookDelivery(BaseModel):
    """One Halo webhook delivery (one element of a batch)."""

    model_config = ConfigDict(extra="allow")

    id: str | None = Field(default=None, min_length=1, max_length=200)
    event: str | None = None
    object_id: int | None = Field(default=None, le=MAX_HALO_ID)
    agent_id: int | None = None
    webhook_id: Any = None
    timestamp: datetime | None = None
    user: HaloUser | None = None

    @field_validator("object_id", mode="before")
    @classmethod
    def _integral_object_id(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return HaloUser._integral_float(value)


class RunbookBody(BaseModel):
    """What a Halo Integration Runbook posts: an event kind, a user id and optionally the user.

    The event is matched after trimming and in lower case (``" Created "`` is ``created``); the parser does that
    before validation, where it also reads the Halo event names of ``LIFECYCLE_HALO_EVENT_MAP``.
    """

    model_config = ConfigDict(extra="allow")

    event: Literal["created", "updated", "deleted"]
    user_id: int = Field(gt=0, le=MAX_HALO_ID)
    user: HaloUser | None = None
    timestamp: datetime | None = None
    agent_id: int | None = None
