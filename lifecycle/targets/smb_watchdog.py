"""SMB calls never outlive the invocation's deadline (lifecycle.deadline).

smbprotocol waits for a server's answer without a timeout (``Connection.receive(timeout=None)``; its transport
sends a keep-alive echo only after 10 minutes of silence), so a file server that stops answering would hold the
invocation past the Functions host's ``functionTimeout``. Each call is watched instead: when the deadline
passes, the tree's connections are shut down, which wakes every wait on them (smbprotocol's receive thread sets
the events of all outstanding requests when its socket closes, and the waiting call raises), and the call ends
as a ``Retryable``: the step is rescheduled and carries on from what is already on the share.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar

from lifecycle import deadline
from lifecycle.errors import Retryable

T = TypeVar("T")


def connection_timeout(configured: float) -> int:
    """The connect timeout for a new connection: the configured one, cut at the deadline (whole seconds, >= 1,
    as smbprotocol rounds its waits)."""
    return max(1, math.ceil(deadline.bounded(configured)))


def watched(connections: MutableMapping[str, Any], what: str, operation: Callable[[], T]) -> T:
    """Run one SMB call; when the invocation's deadline passes first, cut its connections and raise Retryable.

    Args:
        connections: the tree's smbclient connection cache; an expired call empties it, so the next attempt
            connects afresh.
        what: the call, for the error's message.
        operation: the call itself.
    """
    left = deadline.remaining()
    if left <= 0:
        raise Retryable(
            f"{what}: not started, the invocation's time is up; continues in the next attempt", retry_after=1
        )
    if math.isinf(left):  # outside an invocation (the CLI): no deadline to keep
        return operation()
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        for key in list(connections):
            connection = connections.pop(key, None)
            transport = getattr(connection, "transport", None)
            # Shut the socket down before closing it: Tcp.close takes the lock a blocked send holds, and the
            # shutdown is what makes that send (and the receive thread's select) return.
            with contextlib.suppress(Exception):
                getattr(transport, "_sock", None).shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            with contextlib.suppress(Exception):
                transport.close()  # type: ignore[union-attr]

    timer = threading.Timer(left, expire)
    timer.daemon = True
    timer.start()
    try:
        return operation()
    except Exception:
        if expired.is_set():
            raise Retryable(
                f"{what}: no answer before the invocation's deadline; continues in the next attempt", retry_after=1
            ) from None
        raise
    finally:
        timer.cancel()
