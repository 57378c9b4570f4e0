"""Graph never waits past the invocation's deadline (issue 13): a wait that would becomes a rescheduled retry.

Each test failed on the code before: the transport resent a throttled request in place after any Retry-After up
to 10 s and gave each request the whole ``graph_timeout_seconds``, whatever was left of the invocation.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from lifecycle import deadline
from lifecycle.errors import Retryable
from lifecycle.targets.graph import GraphClient, Request, client_for
from lifecycle.targets.graph.transport import error_for
from tests.conftest import make_settings
from tests.integration.m365.conftest import graph_overrides
from tests.standins.graph import GraphStandIn

pytestmark = pytest.mark.integration
T = TypeVar("T")


@pytest.fixture
def client(graph: GraphStandIn, tmp_path: Path) -> Iterator[GraphClient]:
    # A request timeout far past the deadlines below: only the deadline can cut these waits short.
    settings = make_settings(tmp_path, **graph_overrides(graph, graph_timeout_seconds=120.0, graph_max_retries=3))
    yield client_for(settings)


def within_20_seconds(call: Callable[[], T]) -> T:
    """Run ``call`` in this thread's context in another thread; still running after 20 s fails the test."""
    import contextvars

    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(contextvars.copy_context().run, call).result(timeout=20)
    finally:
        pool.shutdown(wait=False)


def test_a_short_retry_after_past_what_is_left_of_the_invocation_is_handed_back_not_slept(
    client: GraphClient, graph: GraphStandIn
) -> None:
    # 5 s is short enough to be waited in place (INLINE_RETRY_MAX_SECONDS), but not with 2 s left.
    graph.fail("GET", r"^/subscribedSkus$", 429, retry_after=5, times=1)
    request = client.request(client.sdk.subscribed_skus.to_get_request_information())

    with deadline.invocation(2.0):
        answer = within_20_seconds(lambda: client.send(request))

    assert answer.status == 429
    assert [e.status for e in graph.log if e.path == "/subscribedSkus"] == [429]  # not resent in place
    error = error_for(answer, "read subscribedSkus")
    assert isinstance(error, Retryable) and error.retry_after == 5


def test_a_throttled_batch_item_past_what_is_left_is_handed_back_not_slept(
    client: GraphClient, graph: GraphStandIn
) -> None:
    graph.fail("GET", r"^/subscribedSkus$", 429, retry_after=5, times=1)
    requests = [Request("GET", "/subscribedSkus"), Request("GET", "/users")]

    with deadline.invocation(2.0):
        answers = within_20_seconds(lambda: client.batch(requests))

    assert [a.status for a in answers] == [429, 200]
    assert [e.status for e in graph.log if e.path == "/$batch"] == [200]  # one $batch, not resent


def test_a_graph_call_that_never_answers_ends_at_the_invocations_deadline(
    client: GraphClient, graph: GraphStandIn
) -> None:
    graph.stall(r"^/v1\.0/subscribedSkus$")
    with deadline.invocation(1.0), pytest.raises(Retryable, match="no answer within"):
        within_20_seconds(lambda: client.send(Request("GET", "/subscribedSkus")))


def test_a_token_endpoint_that_never_answers_ends_at_the_invocations_deadline(
    client: GraphClient, graph: GraphStandIn
) -> None:
    graph.stall(r"/oauth2/v2\.0/token$")
    with deadline.invocation(1.0), pytest.raises(Retryable):
        within_20_seconds(lambda: client.send(Request("GET", "/subscribedSkus")))


def test_nothing_is_sent_once_the_invocations_time_is_up(client: GraphClient, graph: GraphStandIn) -> None:
    with deadline.invocation(0.0), pytest.raises(Retryable, match="time is up") as raised:
        within_20_seconds(lambda: client.send(Request("GET", "/subscribedSkus")))

    assert raised.value.retry_after is not None
    assert not [e for e in graph.log if e.path == "/subscribedSkus"]
