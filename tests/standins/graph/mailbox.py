"""Mailboxes: mailboxSettings and automatic replies, and the profile photo."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tests.standins.graph.model import Answer, User, error
from tests.standins.graph.state import _State


class MailboxMixin(_State):
    def _mailbox_settings(self, method: str, user: User, body: Any) -> Answer | None:
        if user.mailbox is None:
            return (
                404,
                error(
                    "MailboxNotEnabledForRESTAPI",
                    "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
                ),
                {},
            )
        if method == "GET":
            return 200, copy.deepcopy(user.mailbox), {}
        if method == "PATCH":
            return self._patch_mailbox(user, body)
        return None

    def _photo(self, method: str, user: User, headers: dict[str, str], raw: bytes) -> Answer | None:
        if method == "GET":
            if user.photo is None:
                return 404, error("ImageNotFound", "Exception of type 'ImageNotFoundException' was thrown."), {}
            return 200, user.photo, {"content-type": "image/jpeg"}
        if method == "PUT":
            if headers.get("content-type", "").split(";")[0] not in ("image/jpeg", "image/png"):
                return 400, error("ErrorInvalidRequest", "The photo must be image/jpeg or image/png."), {}
            if len(raw) > 4 * 1024 * 1024:
                return 400, error("ErrorInvalidRequest", "The photo is larger than 4 MB."), {}
            # Exchange stores the upload as its own renditions (resized, re-encoded JPEG), so a GET does not
            # answer the uploaded bytes (https://learn.microsoft.com/en-us/graph/api/profilephoto-update:
            # "the photo is resized"; sizes listed at .../resources/profilephoto).
            user.photo = _rendition(raw)
            return 200, None, {}
        if method == "DELETE":
            if user.photo is None:
                # Worst plausible (unconfirmed for DELETE): the same 404 as a GET of a missing photo.
                return 404, error("ImageNotFound", "Exception of type 'ImageNotFoundException' was thrown."), {}
            user.photo = None
            return 204, None, {}
        return None

    def _patch_mailbox(self, user: User, body: Any) -> Answer:
        assert user.mailbox is not None
        setting = (body or {}).get("automaticRepliesSetting")
        if not isinstance(setting, dict):
            return 400, error("ErrorInvalidRequest", "The request is invalid."), {}
        current = user.mailbox.setdefault("automaticRepliesSetting", {})
        for key, value in setting.items():
            if key == "@odata.type":
                continue
            if key in ("status", "externalAudience"):
                if key == "status" and value not in ("disabled", "alwaysEnabled", "scheduled"):
                    return 400, error("ErrorInvalidRequest", f"Invalid status {value}"), {}
                current[key] = value
            elif key.endswith("ReplyMessage"):
                # Exchange stores replies as HTML and answers with it.
                current[key] = f"<html>\n<body>\n<div>{value}</div>\n</body>\n</html>\n"
            elif key.startswith("scheduled"):
                # Exchange keeps the instant and answers it in UTC whatever zone it was written in (a GET of
                # mailboxSettings returns "timeZone": "UTC": https://learn.microsoft.com/en-us/graph/api/
                # user-get-mailboxsettings, example response). Unknown zone names are refused.
                try:
                    zone = dt.UTC if value["timeZone"] == "UTC" else ZoneInfo(value["timeZone"])
                except (ZoneInfoNotFoundError, ValueError):
                    return 400, error("ErrorInvalidRequest", f"Invalid time zone {value['timeZone']}"), {}
                local = dt.datetime.fromisoformat(value["dateTime"]).replace(tzinfo=zone)
                utc = local.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
                current[key] = {"dateTime": f"{utc}.0000000", "timeZone": "UTC"}
        return 200, copy.deepcopy(user.mailbox), {}


def _rendition(raw: bytes) -> bytes:
    """What Exchange keeps of an upload: re-encoded (bytes differ from the upload), at most 648x648."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        opened = Image.open(io.BytesIO(raw))
        opened.load()
    except (UnidentifiedImageError, OSError):
        return raw + b"\x00rendition"  # still never the uploaded bytes
    image = opened.convert("RGB")
    image.thumbnail((648, 648))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=71)
    return out.getvalue()


def _new_mailbox() -> dict[str, Any]:
    return {
        "@odata.context": "$metadata#users('x')/mailboxSettings",
        "timeZone": "UTC",
        "automaticRepliesSetting": {
            "status": "disabled",
            "externalAudience": "all",
            "internalReplyMessage": "",
            "externalReplyMessage": "",
            "scheduledStartDateTime": {"dateTime": "2020-01-01T00:00:00.0000000", "timeZone": "UTC"},
            "scheduledEndDateTime": {"dateTime": "2020-01-02T00:00:00.0000000", "timeZone": "UTC"},
        },
    }
