"""The AMQP side of the broker: connections, SASL, ``$cbs``, links to queues and ``$management`` nodes.

[guide] = learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-protocol-guide;
[cbs] = its section "Claims-based authorization"; [rr] = service-bus-amqp-request-response;
[sessions] = message-sessions; [amqp] = OASIS AMQP 1.0.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proton import Condition, Data, Delivery, Handler, Link, Message, Terminus, symbol, ulong
from proton.reactor import Container

from tests.standins.amqp_broker import wire
from tests.standins.amqp_broker.control import ControlMixin
from tests.standins.amqp_broker.entity import (
    NOT_FOUND,
    TIMEOUT,
    BrokerError,
    Entity,
    QueueProperties,
)
from tests.standins.amqp_broker.management import ManagementNode

SESSION_FILTER = symbol("com.microsoft:session-filter")
LOCKED_UNTIL_UTC = symbol("com.microsoft:locked-until-utc")
OPERATION_TIMEOUT = symbol("com.microsoft:timeout")
CREDIT = 100
TICK_SECONDS = 0.05
# Worst plausible: without a com.microsoft:timeout link property the service waits a minute for a session.
DEFAULT_SESSION_WAIT_SECONDS = 60.0
SECTION_CODES = range(0x70, 0x78)
DATA_SECTION = 0x75


@dataclass
class LinkState:
    """What a link is for. ``holder`` identity is what the queue's locks remember."""

    kind: str  # consumer, producer, cbs, management (both directions), pending
    node: str
    entity: Entity | None = None
    session_id: str | None = None
    waiting_until: float = 0.0


def _sections(raw: bytes) -> list[tuple[int, Any]] | None:
    """The (descriptor, value) sections of an encoded message, or None when it is not one."""
    found = []
    offset = 0
    try:
        while offset < len(raw):
            data = Data()
            used = data.decode(raw[offset:])
            if used <= 0:
                return None
            data.rewind()
            data.next()
            described: Any = data.get_object()
            descriptor = int(getattr(described, "descriptor", -1))
            if descriptor not in SECTION_CODES:
                return None
            value = described.value
            # A binary comes back as a view into the decoder's buffer: copy it before the decoder goes.
            found.append((descriptor, bytes(value) if isinstance(value, memoryview) else value))
            offset += used
    except Exception:
        return None
    return found


def split_batch(raw: bytes) -> list[bytes] | None:
    """The messages of an SDK batch transfer (message-format 0x80013700, [guide] "Batching": each data
    section holds one encoded message), or None for a single message."""
    sections = _sections(raw)
    if not sections:
        return None
    bodies = [bytes(value) for code, value in sections if code == DATA_SECTION]
    if not bodies or any(code == 0x77 for code, _ in sections):
        return None
    if all(_sections(body) for body in bodies):
        return bodies
    return None


class Broker(ControlMixin, Handler):
    """One namespace on one loopback port. ``clock`` is wall time plus the offset a test may add."""

    def __init__(self, *, host: str, port: int, key_name: str, key: str, announce: Callable[[str], None]) -> None:
        super().__init__()
        self.host, self.port = host, port
        self.key_name, self.key = key_name, key
        self.announce = announce
        self.offset = 0.0
        self.queues: dict[str, Entity] = {}
        self.nodes: dict[str, ManagementNode] = {}
        self.links: list[Any] = []
        self.faults: dict[str, list[tuple[str, str]]] = {}
        self.container: Container | None = None

    # ------------------------------------------------------------------------------------- namespace
    def now(self) -> float:
        return time.time() + self.offset

    def create_queue(self, name: str, properties: QueueProperties) -> None:
        entity = Entity(name, properties)
        self.queues[name] = entity
        self.nodes[name] = ManagementNode(entity, self.now, _encode)
        assert entity.dead_letter is not None
        self.nodes[entity.dead_letter.name] = ManagementNode(entity.dead_letter, self.now, _encode)

    def entity(self, path: str) -> Entity:
        if path in self.queues:
            return self.queues[path]
        if path.endswith("/$DeadLetterQueue") and path.rsplit("/", 1)[0] in self.queues:
            dead = self.queues[path.rsplit("/", 1)[0]].dead_letter
            assert dead is not None
            return dead
        # [guide] "Service Bus error conditions": amqp:not-found for an entity that does not exist.
        raise BrokerError(NOT_FOUND, f"The messaging entity '{path}' could not be found.", 404)

    def fault(self, operation: str) -> tuple[str, str] | None:
        pending = self.faults.get(operation)
        return pending.pop(0) if pending else None

    # ------------------------------------------------------------------------------------ connection
    def on_reactor_init(self, event: Any) -> None:
        self.container = event.container
        acceptor = event.container.listen(f"{self.host}:{self.port}")
        port = acceptor._selectable._delegate.getsockname()[1]
        event.container.schedule(TICK_SECONDS, self)
        self.announce(f"READY amqp://{self.host}:{port}")

    def on_connection_bound(self, event: Any) -> None:
        # The SDK authenticates with SASL ANONYMOUS (then a token on $cbs); PLAIN is offered as Service Bus
        # does for SAS key names ([guide] "Connections and sessions": SASL PLAIN or ANONYMOUS).
        sasl = event.transport.sasl()
        sasl.allow_insecure_mechs = True
        sasl.allowed_mechs("ANONYMOUS PLAIN")

    def on_connection_remote_open(self, event: Any) -> None:
        event.connection.authorized = []
        event.connection.open()

    def on_session_remote_open(self, event: Any) -> None:
        event.session.open()

    def on_connection_remote_close(self, event: Any) -> None:
        event.connection.close()

    def on_session_remote_close(self, event: Any) -> None:
        event.session.close()

    def on_link_remote_close(self, event: Any) -> None:
        self._release(event.link)
        if event.link.state & Link.LOCAL_ACTIVE:
            event.link.close()

    def on_transport_closed(self, event: Any) -> None:
        connection = event.connection
        if connection is None:
            return
        for link in [lk for lk in self.links if lk.connection == connection]:
            self._release(link)

    def _release(self, link: Any) -> None:
        if link in self.links:
            self.links.remove(link)
        state: LinkState | None = getattr(link, "broker", None)
        if state is not None and state.kind == "consumer" and state.entity is not None:
            if state.session_id is not None:
                state.entity.release_session(state.session_id, state, self.now())
            # Without sessions a message lock outlives the link ([rr] update-disposition settles by lock token
            # on the $management node): what the link held stays locked until the lock expires.
            state.entity = None
        self._pump()

    # ------------------------------------------------------------------------------------------ links
    def on_link_remote_open(self, event: Any) -> None:
        link: Any = event.link
        try:
            self._attach(link)
        except BrokerError as refused:
            # [amqp] 2.6.3: a refused link is answered by an attach with a null terminus on the refused side
            # (the target of a sender, the source of a receiver), then a detach with the error.
            if link.is_receiver:
                link.source.copy(link.remote_source)
                link.target.type = Terminus.UNSPECIFIED
            else:
                link.target.copy(link.remote_target)
                link.source.type = Terminus.UNSPECIFIED
            link.open()
            link.condition = _condition(refused.condition, refused.description)
            link.close()

    def _attach(self, link: Any) -> None:
        connection = link.connection
        if link.is_receiver:  # the client sends: to an entity, $cbs or a $management node
            node = wire.address_path(link.remote_target.address)
            link.target.copy(link.remote_target)
            link.source.copy(link.remote_source)
            if node == "$cbs":
                link.broker = LinkState("cbs", node)
            elif node.endswith("/$management"):
                self._authorize(connection, node)
                link.broker = LinkState("management", node)
                self._node(node)
            else:
                self._authorize(connection, node)
                entity = self.entity(node)
                link.broker = LinkState("producer", node, entity)
                # [quotas]/[guide]: the link's max-message-size tells the sender the entity's limit.
                link.max_message_size = entity.properties.max_message_bytes
            link.open()
            link.flow(CREDIT)
            self.links.append(link)
            return
        # the client receives: replies of $cbs or $management, or messages of an entity
        node = wire.address_path(link.remote_source.address)
        link.target.copy(link.remote_target)
        if node == "$cbs" or node.endswith("/$management"):
            link.source.copy(link.remote_source)
            link.broker = LinkState("reply", node)
            link.open()
            self.links.append(link)
            return
        self._authorize(connection, node)
        entity = self.entity(node)
        state = LinkState("consumer", node, entity)
        link.broker = state
        self.links.append(link)
        if entity.requires_session:
            filters = _filter_map(link.remote_source.filter)
            if SESSION_FILTER not in filters:
                # [sessions]: a session-enabled entity is read only through a session receiver.
                raise BrokerError(
                    "amqp:not-allowed",
                    f"It is not possible for an entity that requires sessions to create a non-sessionful message "
                    f"receiver. TrackingId:{uuid.uuid4()}",
                )
            wanted = filters[SESSION_FILTER]
            if wanted is not None:
                self._open_session_link(link, state, str(wanted))
                return
            timeout_ms = (link.remote_properties or {}).get(OPERATION_TIMEOUT)
            wait = int(timeout_ms) / 1000.0 if timeout_ms is not None else DEFAULT_SESSION_WAIT_SECONDS
            state.kind, state.waiting_until = "pending", self.now() + wait
            self._assign_sessions()
            return
        link.source.copy(link.remote_source)
        link.open()

    def _open_session_link(self, link: Any, state: LinkState, session_id: str) -> None:
        assert state.entity is not None
        until = state.entity.lock_session(session_id, state, self.now())
        state.kind, state.session_id = "consumer", session_id
        link.source.address = link.remote_source.address
        # [sessions]/[guide]: the service answers the attach with the session it locked in the session filter
        # and the lock's expiry (.NET ticks) in the link property com.microsoft:locked-until-utc.
        link.source.filter.put_dict({SESSION_FILTER: session_id})
        link.properties = {LOCKED_UNTIL_UTC: wire.ticks(until)}
        link.open()

    def _assign_sessions(self) -> None:
        now = self.now()
        for link in list(self.links):
            state: LinkState | None = getattr(link, "broker", None)
            if state is None or state.kind != "pending" or state.entity is None:
                continue
            session_id = state.entity.available_session(now)
            if session_id is not None:
                self._open_session_link(link, state, session_id)
            elif state.waiting_until <= now:
                # [sessions] "accept next available session" times out with com.microsoft:timeout when no
                # session becomes available.
                state.kind = "closed"
                link.source.address = link.remote_source.address
                link.open()
                link.condition = _condition(TIMEOUT, "No sessions available to receive from.")
                link.close()

    def _authorize(self, connection: Any, node: str) -> None:
        # [cbs]: a link to an entity needs a token for it put on $cbs first, else amqp:unauthorized-access.
        path = node.removesuffix("/$management")
        for audience in getattr(connection, "authorized", []):
            if path == audience or path.startswith(audience + "/") or audience == "":
                return
        raise BrokerError("amqp:unauthorized-access", f"Unauthorized access. No token was put for '{path}'.", 401)

    def _node(self, node: str) -> ManagementNode:
        path = node.removesuffix("/$management")
        self.entity(path)
        return self.nodes[path]

    # ------------------------------------------------------------------------------------- transfers
    def on_delivery(self, event: Any) -> None:
        delivery: Any = event.delivery
        link = delivery.link
        state: LinkState | None = getattr(link, "broker", None)
        if state is None:
            return
        if link.is_receiver:
            if delivery.partial:
                return
            raw = link.recv(delivery.pending)
            link.advance()
            self._incoming(link, state, delivery, raw)
            link.flow(1)
        elif delivery.updated:
            self._settlement(state, delivery)
        self._pump()

    def _incoming(self, link: Any, state: LinkState, delivery: Any, raw: bytes) -> None:
        if state.kind == "cbs":
            self._reply(link, state.node, self._put_token(link.connection, wire.decode(raw)))
            _settle(delivery, Delivery.ACCEPTED)
            return
        if state.kind == "management":
            request = wire.decode(raw)
            response = self._node(state.node).handle(request)
            self._reply(link, state.node, response, request.reply_to)
            _settle(delivery, Delivery.ACCEPTED)
            return
        assert state.entity is not None
        fault = self.fault("send")
        try:
            if fault is not None:
                if fault[0] == "amqp:connection:forced":
                    link.connection.condition = _condition(*fault)
                    link.connection.close()
                    return
                raise BrokerError(fault[0], fault[1])
            self._store(state.entity, raw)
        except BrokerError as refused:
            if refused.condition == wire_size_condition():
                # [guide]/[quotas]: a message over the limit is refused by detaching the link with
                # amqp:link:message-size-exceeded.
                link.condition = _condition(refused.condition, refused.description)
                link.close()
                return
            delivery.local.condition = _condition(refused.condition, refused.description)
            _settle(delivery, Delivery.REJECTED)
            return
        _settle(delivery, Delivery.ACCEPTED)

    def _store(self, entity: Entity, raw: bytes) -> None:
        now = self.now()
        parts = split_batch(raw)
        if parts is not None and len(raw) > entity.properties.max_message_bytes:
            # [quotas]: a batch counts against the message size limit as a whole.
            entity.check(wire.decode(parts[0]), len(raw))
        messages = [(wire.decode(p), p) for p in (parts if parts is not None else [raw])]
        for message, part in messages:  # all or nothing: check every message before storing any
            entity.check(message, len(part))
        for message, part in messages:
            at = wire.seconds((message.annotations or {}).get(wire.SCHEDULED_ENQUEUE_TIME))
            entity.enqueue(message, part, now, at)

    def _put_token(self, connection: Any, request: Any) -> Any:
        """[cbs] put-token: name (the audience), type and the token as body; answered with status-code 202."""
        properties = request.properties or {}
        audience = str(properties.get("name", ""))
        fault = self.fault("put-token")
        problem = fault[1] if fault is not None else None
        if problem is None:
            # Against wall time: the SDK signs with the real clock; a test's clock shift is about the queue only.
            problem = wire.check_sas(str(request.body or ""), audience, self.key_name, self.key, time.time())
        if problem is not None:
            return Message(correlation_id=request.id, properties={"status-code": 401, "status-description": problem})
        connection.authorized = [*getattr(connection, "authorized", []), wire.address_path(audience)]
        return Message(correlation_id=request.id, properties={"status-code": 202, "status-description": "Accepted"})

    def _reply(self, request_link: Any, node: str, response: Any, reply_to: str | None = None) -> None:
        # [rr]: the response goes to the client's link whose source is the node (its target is reply-to).
        candidates = [
            lk
            for lk in self.links
            if lk.is_sender
            and lk.session == request_link.session
            and getattr(lk, "broker", None) is not None
            and lk.broker.kind == "reply"
            and lk.broker.node == node
        ]
        if reply_to:
            candidates = [lk for lk in candidates if lk.remote_target.address == reply_to] or candidates
        if not candidates:
            return
        link = candidates[0]
        response.address = reply_to
        delivery = link.delivery(str(uuid.uuid4()).encode())
        link.send(_encode(response))
        link.advance()
        delivery.settle()

    # ------------------------------------------------------------------------------------ settlement
    def _settlement(self, state: LinkState, delivery: Any) -> None:
        # proton decodes delivery tags as text, which a GUID's bytes are not: the token rides on the delivery.
        token: uuid.UUID | None = getattr(delivery, "lock_token", None)
        delivery.lock_token = None
        entity = state.entity
        remote = delivery.remote_state
        if (
            token is None
            or entity is None
            or delivery.local_state
            in (
                Delivery.ACCEPTED,
                Delivery.REJECTED,
                Delivery.MODIFIED,
            )
        ):
            return
        now = self.fault_now()
        outcome = remote
        try:
            fault = self.fault(_OPERATION.get(remote, "settle"))
            if fault is not None:
                raise BrokerError(*fault)
            if remote == Delivery.ACCEPTED:
                entity.complete(token, state, now)
            elif remote == Delivery.MODIFIED and delivery.remote.undeliverable:
                entity.defer(token, state, now)
            elif remote in (Delivery.MODIFIED, Delivery.RELEASED):
                # Worst plausible for released (the SDK releases what it prefetched): like abandon, a delivery.
                entity.abandon(token, state, now)
            elif remote == Delivery.REJECTED:
                condition = delivery.remote.condition
                info = {str(k): v for k, v in ((condition.info if condition else None) or {}).items()}
                entity.dead_letter_locked(
                    token,
                    state,
                    now,
                    str(info.get("DeadLetterReason") or ""),
                    str(info.get("DeadLetterErrorDescription") or (condition.description if condition else "") or ""),
                )
        except BrokerError as refused:
            # [guide] "Settling": a settlement that cannot be applied is answered with rejected and the error
            # (com.microsoft:message-lock-lost, com.microsoft:session-lock-lost).
            delivery.local.condition = _condition(refused.condition, refused.description)
            outcome = Delivery.REJECTED
        if outcome == Delivery.MODIFIED:
            delivery.local.failed = bool(delivery.remote.failed)
            delivery.local.undeliverable = bool(delivery.remote.undeliverable)
        # [guide]: with rcv-settle-mode second the service echoes the outcome it applied and settles.
        delivery.update(outcome)
        delivery.settle()

    def fault_now(self) -> float:
        return self.now()

    # ------------------------------------------------------------------------------------- delivering
    def on_link_flow(self, event: Any) -> None:
        self._pump()

    def on_timer_task(self, event: Any) -> None:
        now = self.now()
        for entity in self.queues.values():
            entity.expire(now)
            assert entity.dead_letter is not None
            entity.dead_letter.expire(now)
        self._assign_sessions()
        self._pump()
        event.container.schedule(TICK_SECONDS, self)

    def _pump(self) -> None:
        self._assign_sessions()
        now = self.now()
        for link in list(self.links):
            state: LinkState | None = getattr(link, "broker", None)
            if state is None or state.kind != "consumer" or state.entity is None or not link.is_sender:
                continue
            if not link.state & Link.LOCAL_ACTIVE:
                continue
            while link.credit > 0:
                stored = state.entity.next_message(state, state.session_id, now)
                if stored is None:
                    break
                assert stored.lock_token is not None
                tag = stored.lock_token.bytes_le  # [guide]: the delivery-tag is the lock token (a GUID).
                message = wire.outgoing(stored, entity=state.entity.name, now=now, locked=True, peeked=False)
                delivery = link.delivery(tag)
                delivery.lock_token = stored.lock_token
                link.send(_encode(message))
                link.advance()


_OPERATION = {
    Delivery.ACCEPTED: "complete",
    Delivery.MODIFIED: "abandon",
    Delivery.RELEASED: "abandon",
    Delivery.REJECTED: "dead-letter",
}


def wire_size_condition() -> str:
    from tests.standins.amqp_broker.entity import SIZE_EXCEEDED

    return SIZE_EXCEEDED


def _condition(name: str, description: str) -> Condition:
    # Service Bus errors carry a tracking id in their info map ([guide] "Service Bus error conditions"); the
    # SDK reads the info field positionally, so it is always sent.
    return Condition(
        name, f"{description} TrackingId:{uuid.uuid4()}", {symbol("com.microsoft:tracking-id"): str(uuid.uuid4())}
    )


def _settle(delivery: Any, outcome: Any) -> None:
    delivery.update(outcome)
    delivery.settle()


def _encode(message: Any) -> bytes:
    return bytes(message.encode())


def _filter_map(data: Any) -> dict[Any, Any]:
    if data is None:
        return {}
    data.rewind()
    if not data.next():
        return {}
    value: Any = data.get_object()
    if not isinstance(value, dict):
        return {}
    # A filter value may be described (filter types); the session filter is a plain string or null.
    return {k: getattr(v, "value", v) for k, v in value.items()}


def dumps(reply: dict[str, Any]) -> str:
    return json.dumps(reply, sort_keys=True)


__all__ = ["Broker", "ulong"]
