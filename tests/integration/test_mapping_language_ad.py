"""The mapping language's table lookups, dates and connection variables land in a real AD (Samba AD DC)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import parse_mapping
from lifecycle.runtime import Runtime
from lifecycle.worker import Worker
from tests.conftest import ROOT
from tests.integration.conftest import World, admin_connection, dc_settings, delivery, new_user

pytestmark = pytest.mark.integration
# 2027-01-01T00:00:00Z (the end of 2026-12-31) in 100-ns intervals since 1601-01-01 UTC.
END_OF_2026 = 116444736000000000 + 1_798_761_600 * 10**7  # the Unix epoch in FILETIME + 2027-01-01 in Unix seconds


@pytest.fixture
def language_world(directory: DCInfo, tmp_path: Path) -> Iterator[World]:
    text = (ROOT / "mapping.example.toml").read_text(encoding="utf-8")
    text = text.replace('department = "{department}"', 'department = "{department|map:departments:Other}"')
    text = text.replace('description = "Halo user {user_id}"', 'description = "{var.label} user {user_id}"')
    text = text.replace("[attributes]\n", '[attributes]\naccountExpires = "{enddate|date:ad_end}"\n', 1)
    text += '\n[tables.departments]\nfin = "Finance"\n\n[connections.default.vars]\nlabel = "Corp"\n'
    runtime = Runtime(dc_settings(directory, tmp_path), mapping=parse_mapping(text, "m.toml"))
    worker = Worker(runtime)
    conn = admin_connection(directory)
    yield World(directory, runtime, worker, conn)
    worker.close()
    conn.unbind()
    runtime.close()


def test_a_table_lookup_a_date_and_a_connection_variable_are_written(language_world: World) -> None:
    user = new_user("Dana", "Expiry", department="FIN", enddate="2026-12-31T00:00:00")
    language_world.accept(delivery("created", user))
    assert [r.outcome for r in language_world.drain()] == ["completed"]
    account = language_world.account(user["id"])
    assert account is not None
    assert account["department"] == "Finance"
    assert account["description"] == f"Corp user {user['id']}"
    expires = account["accountExpires"]
    assert str(expires) == str(END_OF_2026), expires

    # Halo's empty date: accountExpires is left as it is, never cleared.
    language_world.accept(delivery("updated", {**user, "enddate": "1900-01-01T00:00:00", "department": "Legal"}))
    assert [r.outcome for r in language_world.drain()] == ["completed"]
    again = language_world.account(user["id"])
    assert again is not None and again["accountExpires"] == expires
    assert again["department"] == "Other"
