"""Graph throttling storms: 429s with Retry-After (and 503s after committed writes) delay the work, nothing more.

The real msgraph-sdk and msal talk over HTTPS to the Graph/Entra stand-in (tests/standins/graph/), which
answers a storm of throttling to JSON batches, licence assignments and group-member additions while four
worker threads run 30 cloud joiners. Every joiner completes, nothing is dead-lettered, and every licence
and membership exists exactly once.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lifecycle.mapping.schema import load_mapping
from tests.conftest import EVENTS
from tests.integration.conftest import delivery, new_user

# `graph` is the M365 suite's stand-in fixture, shared rather than copied.
from tests.integration.m365.conftest import GROUP_A, GROUP_B, graph, graph_overrides  # noqa: F401
from tests.reliability.conftest import Harness, in_flight, record_figures, wait_until
from tests.standins.graph import E3, SHAREPOINT, GraphStandIn

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PEOPLE = 30
STORM = {
    r"^/\$batch$": 10,
    r"/assignLicense$": 30,
    r"/members/\$ref$": 20,
}


def test_a_throttling_storm_delays_cloud_joiners_but_fails_and_duplicates_nothing(
    harness: Callable[..., Harness],
    graph: GraphStandIn,  # noqa: F811 - the imported fixture
) -> None:
    mapping = load_mapping(EVENTS / "mapping-m365-cloud.toml")
    overrides = graph_overrides(graph, graph_max_retries=2, retry_base_seconds=0.2, retry_cap_seconds=2.0)
    service = harness(workers=4, mapping=mapping, **overrides)
    graph.add_group("All staff", id=GROUP_A)
    graph.add_group("Sales", id=GROUP_B)
    people = []
    for i in range(PEOPLE):
        person = new_user("Storm", f"Joiner{i}", emailaddress=f"storm.joiner{i}@contoso.test")
        graph.add_user(person["emailaddress"], usage_location="GB")
        people.append(person)
    for pattern, times in STORM.items():
        graph.fail("POST", pattern, 429, times=times, retry_after=1)
    # And writes that took effect but were answered 503: the resend must not add anything twice.
    graph.fail("POST", r"/assignLicense$", 503, times=3, commit=True)
    graph.fail("POST", GROUP_A + r"/members/\$ref$", 503, times=3, commit=True)

    for start in range(0, PEOPLE, 10):
        assert service.post_http([delivery("created", p) for p in people[start : start + 10]]).status_code == 202
    wait_until(lambda: in_flight(service.runtime) == 0, seconds=600, what="the throttled joiners")

    assert graph.pending_faults() == 0, "the storm was not fully delivered: the test proved less than it says"
    assert service.runtime.queue.dead_letters() == []
    ids = set()
    audited = 0
    for person in people:
        account = graph.user(person["emailaddress"])
        ids.add(account.id)
        assert account.licenses == {E3: [SHAREPOINT]}
        changed = [e for e in service.audit(person["id"]) if e.action == "assign_licenses" and e.outcome == "changed"]
        assert len(changed) <= 1
        audited += len(changed)
    # A licence whose request took effect but was answered 503 may be found assigned by a later attempt of the
    # step ("unchanged"); the SDK's own retry inside the attempt reports it as this attempt's change.
    committed = sum(1 for e in graph.log if e.path.endswith("/assignLicense") and e.status == 503)
    assert PEOPLE - committed <= audited <= PEOPLE
    assert graph.groups[GROUP_A].members == ids and graph.groups[GROUP_B].members == ids
    statuses = [e.status for e in graph.log]
    for cloud_id in ids:  # no licence assigned twice: one success, or one write that took effect under a 503
        answers = [e.status for e in graph.log if e.path == f"/users/{cloud_id}/assignLicense" and e.method == "POST"]
        successes = [a for a in answers if 200 <= a < 300]
        assert len(successes) <= 1 and (successes or 503 in answers), answers
    licence_successes = [e for e in graph.log if e.path.endswith("/assignLicense") and 200 <= e.status < 300]
    record_figures(
        "graph_throttling",
        cloud_joiners=PEOPLE,
        answered_429_with_retry_after=statuses.count(429),
        answered_503_after_commit=statuses.count(503),
        graph_requests=len(statuses),
        dead_lettered=0,
        licences_assigned=len(licence_successes),
    )
