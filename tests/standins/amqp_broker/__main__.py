"""Run the broker: ``python -m tests.standins.amqp_broker --queue NAME [options]``.

It prints ``READY amqp://127.0.0.1:PORT`` once it listens (the test fixture waits for that line, never for a
time), then answers one JSON command per stdin line with one JSON line on stdout (see ``Broker.control``).
It listens on loopback only and stops when stdin closes or on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
from typing import Any

from proton.reactor import ApplicationEvent, Container, EventInjector

from tests.standins.amqp_broker.entity import QueueProperties
from tests.standins.amqp_broker.server import Broker, dumps


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="amqp_broker", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "localhost", "::1"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key-name", default="RootManageSharedAccessKey")
    parser.add_argument("--key", required=True)
    parser.add_argument("--queue", action="append", default=[])
    parser.add_argument("--lock-seconds", type=float, default=60.0)
    parser.add_argument("--max-delivery-count", type=int, default=10)
    parser.add_argument("--duplicate-window-seconds", type=float, default=600.0)
    parser.add_argument("--max-message-bytes", type=int, default=256 * 1024)
    return parser.parse_args(argv)


class _Control(threading.Thread):
    """Reads commands from stdin and hands them to the reactor thread."""

    def __init__(self, injector: EventInjector, commands: queue.Queue[dict[str, Any] | None]) -> None:
        super().__init__(daemon=True)
        self.injector = injector
        self.commands = commands

    def run(self) -> None:
        for line in sys.stdin:
            if line.strip():
                self.commands.put(json.loads(line))
                self.injector.trigger(ApplicationEvent("control"))
        self.commands.put(None)
        self.injector.trigger(ApplicationEvent("control"))


class _Main(Broker):
    def __init__(self, commands: queue.Queue[dict[str, Any] | None], injector: EventInjector, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = commands
        self.injector = injector

    def on_control(self, event: Any) -> None:
        while not self.commands.empty():
            command = self.commands.get()
            if command is None:
                self.injector.close()
                assert self.container is not None
                self.container.stop()
                return
            try:
                reply = self.control(command)
            except Exception as exc:  # a bad command is the test's mistake: answer it, keep serving
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(dumps(reply), flush=True)


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
    injector = EventInjector()
    broker = _Main(
        commands,
        injector,
        host=args.host,
        port=args.port,
        key_name=args.key_name,
        key=args.key,
        announce=lambda line: print(line, flush=True),
    )
    properties = QueueProperties(
        lock_seconds=args.lock_seconds,
        max_delivery_count=args.max_delivery_count,
        duplicate_window_seconds=args.duplicate_window_seconds,
        max_message_bytes=args.max_message_bytes,
    )
    for name in args.queue:
        broker.create_queue(name, properties)
    container = Container(broker)
    container.selectable(injector)
    _Control(injector, commands).start()
    container.run()


if __name__ == "__main__":
    main()
