"""The test side: start the broker as a process, wait for its readiness line, command it, stop it by PID."""

from __future__ import annotations

import json
import os
import secrets
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
READY_SECONDS = 30.0
ANSWER_SECONDS = 30.0


class BrokerProcess:
    """One broker process on a free loopback port.

    Args:
        queues: Queues to create at start (more with ``create_queue``), with the default properties.
        options: Extra command-line options (``--lock-seconds`` and the like, see ``__main__``).
    """

    def __init__(self, queues: tuple[str, ...] = (), options: tuple[str, ...] = ()) -> None:
        self.key_name = "RootManageSharedAccessKey"
        self.key = secrets.token_urlsafe(24)
        # "--key=...": a random key may begin with "-", which argparse would take for an option.
        command = [
            sys.executable,
            "-m",
            "tests.standins.amqp_broker",
            f"--key-name={self.key_name}",
            f"--key={self.key}",
        ]
        for queue in queues:
            command += ["--queue", queue]
        command += list(options)
        self._process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.pid = self._process.pid
        self._selector = selectors.DefaultSelector()
        assert self._process.stdout is not None
        self._selector.register(self._process.stdout, selectors.EVENT_READ)
        line = self._line(READY_SECONDS)
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the AMQP broker did not start: {line!r}")
        self.url = line.split(" ", 1)[1].strip()
        self.port = int(self.url.rsplit(":", 1)[1])

    @property
    def connection_string(self) -> str:
        """What LIFECYCLE_SERVICEBUS_CONNECTION_STRING holds for the development emulator."""
        return (
            f"Endpoint=sb://127.0.0.1:{self.port};SharedAccessKeyName={self.key_name};"
            f"SharedAccessKey={self.key};UseDevelopmentEmulator=true"
        )

    def _line(self, seconds: float) -> str:
        assert self._process.stdout is not None
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the AMQP broker did not answer")
            if self._selector.select(remaining):
                line = self._process.stdout.readline()
                if not line:
                    raise RuntimeError(f"the AMQP broker exited (code {self._process.poll()})")
                return line

    def command(self, **command: Any) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        reply: dict[str, Any] = json.loads(self._line(ANSWER_SECONDS))
        if not reply.get("ok"):
            raise RuntimeError(f"the AMQP broker refused {command}: {reply.get('error')}")
        return reply

    def create_queue(self, name: str, **properties: Any) -> None:
        """A queue as the Bicep declares it; ``properties`` override ``QueueProperties`` fields."""
        self.command(cmd="queue", name=name, **properties)

    def advance(self, seconds: float) -> float:
        """Move the broker's clock forward (locks expire, scheduled messages come due); the new time."""
        return float(self.command(cmd="advance", seconds=seconds)["now"])

    def now(self) -> float:
        return float(self.command(cmd="now")["now"])

    def fail_next(self, operation: str, condition: str, description: str = "injected") -> None:
        """The next ``operation`` (send, complete, abandon, dead-letter, put-token) fails with ``condition``;
        ``amqp:connection:forced`` on send closes the connection instead."""
        self.command(cmd="fail", operation=operation, condition=condition, description=description)

    def fail_management(self, entity: str, operation: str, condition: str, status: int) -> None:
        self.command(cmd="fail-management", entity=entity, operation=operation, condition=condition, status=status)

    def state(self, queue: str) -> dict[str, Any]:
        """What the queue holds: ``messages`` and ``dead_letters``, each a list of dicts in sequence order."""
        return self.command(cmd="state", queue=queue)

    def active(self, queue: str) -> list[dict[str, Any]]:
        return [m for m in self.state(queue)["messages"] if not m["scheduled"]]

    def scheduled(self, queue: str) -> list[dict[str, Any]]:
        return [m for m in self.state(queue)["messages"] if m["scheduled"]]

    def dead_lettered(self, queue: str) -> list[dict[str, Any]]:
        return list(self.state(queue)["dead_letters"])

    def stop(self) -> None:
        """Stop it by its PID (SIGTERM, then SIGKILL if it lingers)."""
        if self._process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self._process.wait()
        self._selector.close()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()
