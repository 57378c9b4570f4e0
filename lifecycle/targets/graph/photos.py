"""The Microsoft 365 profile photo (``/users/{id}/photo/$value``)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from lifecycle.photos import GRAPH_PHOTO_MAX_BYTES, same_picture, to_jpeg
from lifecycle.state import Change
from lifecycle.targets import StepContext, StepResult
from lifecycle.targets.graph.state import Connection, Plan, Snapshot, Write, not_member

if TYPE_CHECKING:
    from lifecycle.work import Step


def plan_set_photo(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    raw = conn.photos(step.params)
    if raw is None:
        return Plan(StepResult("unchanged", message="the event carries no photo"))
    jpeg = to_jpeg(raw, max_pixels=int(step.params.get("max_pixels", 648)), max_bytes=GRAPH_PHOTO_MAX_BYTES)
    if same_picture(jpeg, snap.photo):
        return Plan(StepResult("unchanged", message="the profile photo shows this picture already"))
    digest = hashlib.sha256(jpeg).hexdigest()[:16]
    change = Change(
        "photo", f"{len(snap.photo)} bytes" if snap.photo else None, f"{len(jpeg)} bytes (JPEG sha256:{digest})"
    )
    info = conn.user_builder(snap).photo.content.to_put_request_information(jpeg)
    request = conn.client.request(info)
    request.headers["content-type"] = "image/jpeg"
    if request.info is not None:
        request.info.headers.remove("Content-Type")
        request.info.headers.try_add("Content-Type", "image/jpeg")
    snap.photo = jpeg
    return Plan(StepResult("changed", changes=[change]), [Write(request, "upload the profile photo")])


def plan_remove_photo(conn: Connection, context: StepContext, step: Step, snap: Snapshot) -> Plan:
    if snap.photo is None:
        return Plan(StepResult("unchanged"))
    change = Change("photo", f"{len(snap.photo)} bytes", None)
    snap.photo = None
    info = conn.user_builder(snap).photo.content.to_delete_request_information()
    # A removal replayed after it took effect answers 404 (no photo): what the step wants.
    return Plan(
        StepResult("changed", changes=[change]),
        [Write(conn.client.request(info), "remove the profile photo", not_member)],
    )
