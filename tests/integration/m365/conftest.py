"""Fixtures for the Microsoft 365 tests: the Graph/Entra stand-in over HTTPS, and a service pointed at it.

The stand-in runs in a thread of the test process on 127.0.0.1 and is stopped at the end of each test; the
process's Graph clients (one per process, as in production) are closed with it, so no test sees another's.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lifecycle.ingress import Ingress, Request, Response
from lifecycle.mapping.schema import Mapping, load_mapping
from lifecycle.runtime import Runtime
from lifecycle.settings import Settings
from lifecycle.targets.graph import close_clients
from lifecycle.worker import Worker
from tests.conftest import EVENTS, make_settings
from tests.integration.conftest import AUTH
from tests.standins.graph import GraphStandIn

CLIENT_ID = "5f1d2c3b-0000-4000-8000-00000000c11e"
CLIENT_SECRET = "stand-in-client-secret-value"
GROUP_A = "0a1b2c3d-0000-4000-8000-000000000001"
GROUP_B = "0a1b2c3d-0000-4000-8000-000000000002"


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[GraphStandIn]:
    directory = tmp_path / "graph-standin"
    directory.mkdir()
    standin = GraphStandIn(directory).start()
    standin.clients[CLIENT_ID] = CLIENT_SECRET
    yield standin
    close_clients()
    standin.stop()


def graph_overrides(standin: GraphStandIn, **more: Any) -> dict[str, Any]:
    """Settings that point the service's Graph client at the stand-in (fast polling for tests)."""
    values: dict[str, Any] = {
        "graph_tenant_id": standin.tenant,
        "graph_client_id": CLIENT_ID,
        "graph_client_secret": CLIENT_SECRET,
        "graph_authority_host": standin.url,
        "graph_base_url": standin.graph_url,
        "graph_ca_file": standin.ca_file,
        "graph_poll_seconds": 0.05,
        "graph_max_retries": 1,
        "retry_base_seconds": 0.05,
        "retry_cap_seconds": 0.2,
    }
    values.update(more)
    return values


@dataclass
class Service:
    """One test's ingress, queue, store and worker."""

    runtime: Runtime
    worker: Worker

    def post(self, body: Any, **query: str) -> Response:
        return Ingress(self.runtime).events(Request("POST", json.dumps(body).encode(), AUTH, query))

    def accept(self, body: Any) -> None:
        response = self.post(body)
        assert response.status == 202, response.body

    def settle(self, until: Callable[[], bool] | None = None, *, timeout: float = 30.0) -> list[str]:
        """Process messages (also those backing off) until the queue is empty, or ``until()`` holds."""
        queue: Any = self.runtime.queue
        outcomes: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = queue.receive(timeout=0.05)
            if message is not None:
                outcomes.append(self.worker.process_message(message).outcome)
            if until is not None and until():
                return outcomes
            if message is not None:
                continue
            counts = queue.counts()
            if until is None and counts["active"] + counts["scheduled"] + counts["locked"] == 0:
                return outcomes
        raise AssertionError(f"the queue did not settle within {timeout} s (outcomes so far: {outcomes})")


def make_service(settings: Settings, mapping: Mapping) -> Service:
    runtime = Runtime(settings, mapping=mapping)
    return Service(runtime, Worker(runtime))


@pytest.fixture
def cloud(graph: GraphStandIn, tmp_path: Path) -> Iterator[Service]:
    """The service with the cloud-only mapping (no AD needed: every step names its cloud user)."""
    mapping = load_mapping(EVENTS / "mapping-m365-cloud.toml")
    settings = make_settings(tmp_path, mapping_file=EVENTS / "mapping-m365-cloud.toml", **graph_overrides(graph))
    service = make_service(settings, mapping)
    yield service
    service.worker.close()
    service.runtime.close()


def picture(width: int, height: int, *, noisy: bool = True, kind: str = "PNG") -> bytes:
    """An image made here (noise compresses badly: a real test of the 100 KB limit)."""
    import os

    from PIL import Image

    if noisy:
        image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        image = Image.new("RGB", (width, height), (200, 30, 60))
    out = io.BytesIO()
    image.save(out, kind)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
