"""Long waits end at the invocation's deadline and resume with their progress, never starting over.

A job-style script (202 + status URL) whose polling would run past the deadline stops with ``Unfinished``;
the worker keeps the status URL in the step's journal entry and the next attempt polls on, so the job is
posted exactly once (the real Samba DC for the account; the script endpoint stand-in for the job).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle import deadline
from lifecycle.local.samba import DCInfo
from lifecycle.mapping.schema import Lifecycles, Mapping
from lifecycle.runtime import Runtime
from lifecycle.worker import Worker
from tests.integration.conftest import World, admin_connection, dc_settings, delivery, new_user
from tests.standins.script_endpoint import ScriptEndpoint

pytestmark = pytest.mark.integration
SECRET = "webhook-signing-secret-0123456789abcdef"


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[ScriptEndpoint]:
    server = ScriptEndpoint(tmp_path / "endpoint", SECRET).start()
    yield server
    server.stop()


@pytest.fixture
def job_world(directory: DCInfo, example_mapping: Mapping, tmp_path: Path, endpoint: ScriptEndpoint) -> Iterator[World]:
    lifecycles = example_mapping.lifecycles.model_dump()
    lifecycles["joiner"] = [{"action": "create_user"}, {"action": "run_script", "script": "job"}]
    mapping = example_mapping.model_copy(update={"lifecycles": Lifecycles.model_validate(lifecycles)})
    settings = dc_settings(
        directory,
        tmp_path,
        scripts={
            "job": {
                "kind": "webhook",
                "target": endpoint.url("/job"),
                "secret": SECRET,
                "ca_file": str(endpoint.ca_file),
                "poll": True,
                "poll_interval_seconds": 0.05,
                "timeout_seconds": 5,
            }
        },
        retry_base_seconds=0.05,
        retry_cap_seconds=0.2,
    )
    runtime = Runtime(settings, mapping=mapping)
    worker = Worker(runtime)
    conn = admin_connection(directory)
    yield World(directory, runtime, worker, conn)
    worker.close()
    conn.unbind()
    runtime.close()


def test_a_script_poll_cut_at_the_deadline_resumes_from_its_status_url(
    job_world: World, endpoint: ScriptEndpoint
) -> None:
    user = new_user("Jonas", "Job-Poll")
    job_world.accept(delivery("created", user))
    message = job_world.runtime.queue.receive(timeout=0)
    assert message is not None
    # Less time left than one poll needs (interval + request timeout): the poll must not start.
    with deadline.invocation(1.0):
        first = job_world.worker.process_message(message)
    assert first.outcome == "retry" and "polling" in first.reason
    posts = [c for c in endpoint.calls if c.path == "/job"]
    assert len(posts) == 1 and endpoint.state.polls == {}

    again = job_world.runtime.queue.receive(timeout=10)  # the back-off (retry_after = the poll interval)
    assert again is not None
    assert job_world.worker.process_message(again).outcome == "completed"
    assert len([c for c in endpoint.calls if c.path == "/job"]) == 1  # posted once, polled to the end
    assert list(endpoint.state.polls.values()) == [2]
    [ran] = [e for e in job_world.audit(user["id"]) if e.action == "run_script"]
    assert ran.outcome == "changed" and '"done": true' in ran.message
