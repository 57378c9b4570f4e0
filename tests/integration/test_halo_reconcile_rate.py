"""Reconciling 5,000 users keeps under Halo's rate limit, and a storm of 429s delays the run without failing it.

Halo's hosted limit is 300 requests per rolling 5 minutes; here the same 300 requests get a window of half a
second (the limit binds within seconds), and the stand-in counts every request it receives in every window.
No directory is needed: every user is already known, so only Halo is asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lifecycle.fingerprints import fingerprint
from lifecycle.halo.client import HaloClient, UserListing
from lifecycle.mapping.schema import Mapping
from lifecycle.people import normalise_user
from lifecycle.reconcile import run_reconcile
from lifecycle.runtime import Runtime
from lifecycle.state import PersonRecord
from tests.conftest import make_settings
from tests.standins.halo import HaloStandIn, UserSet

LIMIT, WINDOW = 300, 0.5


@pytest.fixture
def standin() -> Iterator[HaloStandIn]:
    halo = HaloStandIn(UserSet(5000, first_id=700_000), rate_limit=LIMIT, rate_window=WINDOW).start()
    yield halo
    halo.stop()


def test_a_reconcile_of_5000_users_never_exceeds_the_rate_and_a_429_storm_only_delays_it(
    standin: HaloStandIn, example_mapping: Mapping, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path,
        halo_api_url=standin.url,
        halo_client_id=standin.client_id,
        halo_client_secret=standin.client_secret,
        halo_ca_file=standin.ca_file,
        halo_rate_limit=LIMIT,
        halo_rate_limit_window_seconds=WINDOW,
        halo_page_size=100,
        reconcile_mode="apply",
        halo_missing_users="ignore",  # no AD here: the anchors are not read
    )
    runtime = Runtime(settings, mapping=example_mapping)
    client = HaloClient.from_settings(settings)
    client.backoff_base, client.backoff_cap = 0.05, 0.4  # unannounced 429s back off quickly here
    runtime.__dict__["halo"] = client
    applied = datetime(2026, 1, 1, tzinfo=UTC)
    for user_id in range(700_000, 705_000):
        user = normalise_user(standin.users.get(user_id) or {})
        runtime.store.put_person(
            PersonRecord(user_id, "active", applied, "seed", fingerprint=fingerprint(example_mapping, user))
        )
    standin.users.update(704_321, {"department": "Finance and Legal"})
    # A storm in the middle of the run: eight 429s in a row, half with Retry-After, half without.
    storm = [(429, "1") if n % 2 else (429, None) for n in range(8)]

    def on_page(listing: UserListing) -> None:
        if listing.pages == 10:
            standin.inject(storm)

    try:
        report = run_reconcile(runtime, on_progress=on_page)
        assert report.complete and report.listed == 5000
        assert report.count("unchanged") == 4999 and report.movers == 1 and report.enqueued == 1
        # Halo's list items lack fields the mapping reads: every known user was fetched in full.
        assert report.fetched == 5000 and report.requests >= 5050
        assert standin.injected_served == 8 and report.throttled == 8
        # The stand-in never saw more than the limit in any window, so it never had to refuse a request.
        assert standin.rate_limited == 0
        assert standin.max_in_window <= LIMIT
        assert client.limiter.waits > 0  # the limit was reached and waited out, not merely never approached
    finally:
        client.close()
        runtime.close()
