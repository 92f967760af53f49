"""One AMQP 1.0 connection of the emulator: SASL, sessions, links, CBS and $management.

:class:`AmqpConnection` is an :class:`asyncio.Protocol`. It speaks exactly what the azure-servicebus
SDK needs (``servicebus-amqp.md`` in the shared docs): SASL ANONYMOUS, pipelined headers, CBS
put-token on ``$cbs``, sender links into queues and topics, receiver links out of queues,
subscriptions, dead-letter sub-queues and sessions, and request/response links on
``<entity>/$management`` (operations in :mod:`docbus.local.emulator.management`). Session and link
state lives in :mod:`docbus.local.emulator.links`, token checks in
:mod:`docbus.local.emulator.auth`, message semantics in :mod:`docbus.local.emulator.broker`; this
module translates frames to broker calls and broker errors back to AMQP errors. A bad frame closes
this connection only.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import uuid
from typing import TYPE_CHECKING, Any

from docbus.local.emulator import errors
from docbus.local.emulator import frames as fr
from docbus.local.emulator.auth import verify_sas_token
from docbus.local.emulator.codec import (
    Array,
    DecodeError,
    Described,
    Long,
    Symbol,
    UByte,
    UInt,
    ULong,
    UShort,
)
from docbus.local.emulator.frames import F, field
from docbus.local.emulator.links import (
    MAX_FRAME_SIZE,
    SENDER_CREDIT,
    WINDOW,
    AmqpSession,
    IncomingLink,
    Link,
    OutgoingLink,
)
from docbus.local.emulator.management import handle_request
from docbus.local.emulator.wire import (
    batch_size,
    encode_simple,
    parse_batch,
    parse_message,
    parse_simple,
)

if TYPE_CHECKING:
    from docbus.local.emulator.server import Emulator

logger = logging.getLogger(__name__)
_DOTNET_EPOCH_TICKS = 621355968000000000
frame_logger = logging.getLogger("docbus.local.emulator.frames")


def dotnet_ticks(epoch_seconds: float) -> int:
    return int(epoch_seconds * 10_000_000) + _DOTNET_EPOCH_TICKS


def entity_path(address: str | None) -> str:
    """``amqps://host:port/t/Subscriptions/s`` → ``t/Subscriptions/s``."""
    if not address:
        return ""
    if "://" in address:
        address = address.split("://", 1)[1]
        address = address.split("/", 1)[1] if "/" in address else ""
    return address.strip("/")


class _NoSession(Exception):
    """A frame arrived on a channel with no session (already ended)."""


class AmqpConnection(asyncio.Protocol):
    """The server side of one client connection."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.broker = emulator.broker
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.container_id = ""
        self.buffer = bytearray()
        self.stage = "header"  # header → sasl → amqp-header → amqp → closed
        self.sessions: dict[int, AmqpSession] = {}
        self.max_payload = MAX_FRAME_SIZE - 256
        self.authorized: set[str] = set()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._trace = frame_logger.isEnabledFor(logging.DEBUG)

    # --- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.emulator.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.emulator.connections.discard(self)
        for session in list(self.sessions.values()):
            self._end_session(session)
        self.sessions.clear()
        for task in self._tasks:
            task.cancel()
        if self.container_id:
            logger.info("connection closed: %s (%s)", self.container_id, self.peer)
        self.stage = "closed"

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self._process()
        except (fr.FrameError, DecodeError) as exc:
            logger.warning("closing connection %s: bad frame: %s", self.peer, exc)
            self._close_with_error("amqp:decode-error", str(exc))
        except Exception as exc:  # never let one client take the emulator down
            logger.exception("closing connection %s after an internal error", self.peer)
            self._close_with_error("amqp:internal-error", f"{type(exc).__name__}: {exc}")
        self.flush()

    # --- output ---------------------------------------------------------------------------
    def send(
        self, channel: int, body: Described, payload: bytes = b"", frame_type: int = 0
    ) -> None:
        if self._trace:
            frame_logger.debug("→ %s ch%d %r (+%d bytes)", self.peer, channel, body, len(payload))
        self._out.append(fr.encode_frame(channel, body, payload, frame_type))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        for session in self.sessions.values():
            session.flush_accepts()
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()

    # --- input ----------------------------------------------------------------------------
    def _process(self) -> None:
        buf = self.buffer
        while self.stage != "closed":
            if self.stage in ("header", "amqp-header"):
                if len(buf) < 8:
                    return
                header = bytes(buf[:8])
                del buf[:8]
                self._on_protocol_header(header)
                continue
            if len(buf) < 8:
                return
            size, doff, frame_type, channel = struct.unpack_from(">IBBH", buf, 0)
            if size < 8 or doff < 2:
                raise fr.FrameError(f"invalid frame header (size {size}, doff {doff})")
            if size > MAX_FRAME_SIZE:
                raise fr.FrameError(f"frame of {size} bytes exceeds max-frame-size")
            if len(buf) < size:
                return
            body = memoryview(bytes(buf[doff * 4 : size]))
            del buf[:size]
            frame = fr.parse_frame_body(frame_type, channel, body)
            if self._trace:
                frame_logger.debug(
                    "← %s ch%d 0x%02x %r (+%d bytes)",
                    self.peer, channel, frame.code, frame.fields, len(frame.payload),
                )  # fmt: skip
            if frame.frame_type == fr.FRAME_SASL:
                self._on_sasl(frame)
            else:
                self._on_frame(frame)

    def _on_protocol_header(self, header: bytes) -> None:
        if header == fr.SASL_HEADER and self.stage == "header":
            self._write_raw(fr.SASL_HEADER)
            mechanisms = Array(Symbol, [Symbol("ANONYMOUS"), Symbol("PLAIN")])
            self.send(0, fr.performative(fr.SASL_MECHANISMS, [mechanisms]), b"", fr.FRAME_SASL)
            self.stage = "sasl"
        elif header == fr.AMQP_HEADER:
            self._write_raw(fr.AMQP_HEADER)
            self.stage = "amqp"
        else:
            logger.warning("connection %s sent an unsupported protocol header", self.peer)
            self._write_raw(fr.AMQP_HEADER)
            self._close_transport()

    def _write_raw(self, data: bytes) -> None:
        self._out.append(data)

    def _on_sasl(self, frame: fr.Frame) -> None:
        if frame.code == fr.SASL_INIT:
            # Any mechanism is accepted: authorisation happens per entity through CBS tokens.
            self.send(0, fr.performative(fr.SASL_OUTCOME, [UByte(0)]), b"", fr.FRAME_SASL)
            self.stage = "amqp-header"
        else:
            raise fr.FrameError(f"unexpected SASL frame 0x{frame.code:02x}")

    def _on_frame(self, frame: fr.Frame) -> None:
        try:
            self._dispatch_frame(frame)
        except _NoSession:
            # The SDK pipelines detach/flow frames behind its own END; they refer to nothing.
            logger.debug("ignoring 0x%02x on ended channel %d", frame.code, frame.channel)

    def _dispatch_frame(self, frame: fr.Frame) -> None:
        code = frame.code
        if code == -1:
            return  # heartbeat
        if code == fr.TRANSFER:
            self._on_transfer(frame)
        elif code == fr.DISPOSITION:
            self._on_disposition(frame)
        elif code == fr.FLOW:
            self._on_flow(frame)
        elif code == fr.ATTACH:
            self._on_attach(frame)
        elif code == fr.DETACH:
            self._on_detach(frame)
        elif code == fr.OPEN:
            self._on_open(frame)
        elif code == fr.BEGIN:
            self._on_begin(frame)
        elif code == fr.END:
            self._on_end(frame)
        elif code == fr.CLOSE:
            self.send(0, fr.performative(fr.CLOSE, []))
            self.flush()
            self._close_transport()
        else:
            raise fr.FrameError(f"unknown performative 0x{code:02x}")

    def _on_open(self, frame: fr.Frame) -> None:
        self.container_id = str(field(frame.fields, F.OPEN_CONTAINER_ID, ""))
        remote_max = field(frame.fields, F.OPEN_MAX_FRAME_SIZE, 2**32 - 1)
        self.max_payload = max(512, min(MAX_FRAME_SIZE, remote_max) - 256)
        logger.info("connection opened: %s (%s)", self.container_id, self.peer)
        self.send(
            0,
            fr.performative(
                fr.OPEN,
                [
                    "docbus-emulator",
                    field(frame.fields, F.OPEN_HOSTNAME),
                    UInt(MAX_FRAME_SIZE),
                    UShort(65535),
                ],
            ),
        )

    def _on_begin(self, frame: fr.Frame) -> None:
        channel = frame.channel
        session = AmqpSession(self, channel, frame.fields)
        self.sessions[channel] = session
        self.send(
            channel,
            fr.performative(
                fr.BEGIN,
                [UShort(channel), UInt(0), UInt(WINDOW), UInt(WINDOW), UInt(2**32 - 1)],
            ),
        )

    def _on_end(self, frame: fr.Frame) -> None:
        session = self.sessions.pop(frame.channel, None)
        if session is not None:
            self._end_session(session)
        self.send(frame.channel, fr.performative(fr.END, []))

    def _end_session(self, session: AmqpSession) -> None:
        for link in list(session.links.values()):
            self._release_link(link)
        session.links.clear()

    def _session(self, channel: int) -> AmqpSession:
        session = self.sessions.get(channel)
        if session is None:
            raise _NoSession(channel)
        return session

    # --- links ----------------------------------------------------------------------------
    def _on_attach(self, frame: fr.Frame) -> None:
        session = self._session(frame.channel)
        fields = frame.fields
        role_receiver = bool(field(fields, F.ATTACH_ROLE, False))
        if role_receiver:
            out_link = OutgoingLink(session, fields)
            session.links[out_link.handle] = out_link
            self._attach_outgoing(out_link)
        else:
            in_link = IncomingLink(session, fields)
            session.links[in_link.handle] = in_link
            self._attach_incoming(in_link)

    def _attach_reply(
        self,
        link: Link,
        *,
        role: bool,
        source: Any,
        target: Any,
        initial_delivery_count: int | None = None,
        max_message_size: int | None = None,
        properties: dict[Any, Any] | None = None,
    ) -> None:
        fields: list[Any] = [
            link.name,
            UInt(link.handle),
            role,
            UByte(link.snd_settle_mode),
            UByte(link.rcv_settle_mode),
            source,
            target,
            None,
            None,
            None if initial_delivery_count is None else UInt(initial_delivery_count),
            None if max_message_size is None else ULong(max_message_size),
            None,
            None,
            properties,
        ]
        self.send(link.session.channel, fr.performative(fr.ATTACH, fields))

    def _refuse(self, link: Link, exc: errors.BrokerError, *, role: bool) -> None:
        """Null terminus on our side, then a detach with the error (what the SDK maps)."""
        if role:  # we are the receiver: null target
            self._attach_reply(link, role=True, source=link.remote_source, target=None)
        else:
            self._attach_reply(
                link, role=False, source=None, target=link.remote_target, initial_delivery_count=0
            )
        self.detach_link(link, exc)

    def detach_link(self, link: Link, exc: errors.BrokerError | None = None) -> None:
        if link.detached:
            return
        self._release_link(link)
        link.session.links.pop(link.handle, None)
        error = fr.error(exc.condition, exc.description) if exc is not None else None
        logger.info(
            "link %s detached%s", link.name, f": {exc.condition} {exc.description}" if exc else ""
        )
        self.send(
            link.session.channel,
            fr.performative(fr.DETACH, [UInt(link.handle), True, error]),
        )
        self.flush()

    def _release_link(self, link: Link) -> None:
        if link.detached:
            return
        link.on_detach()
        if isinstance(link, OutgoingLink) and link.entity is not None:
            link.entity.remove_consumer(link)
            session = link.session
            for delivery_id in [d for d, (owner, _) in session.unsettled.items() if owner is link]:
                del session.unsettled[delivery_id]

    def _attach_incoming(self, link: IncomingLink) -> None:
        address = link.target_address or ""
        if address == "$cbs" or address.endswith("$management"):
            link.node = address
            self._attach_reply(
                link, role=True, source=link.remote_source, target=link.remote_target
            )
            link.session.send_link_flow(link)
            return
        path = entity_path(address)
        try:
            self._authorize(path)
            target = self.broker.resolve_target(path)
        except errors.BrokerError as exc:
            self._refuse(link, exc, role=True)
            return
        link.target = target
        link.max_message_size = target.properties.max_message_size
        self._attach_reply(
            link,
            role=True,
            source=link.remote_source,
            target=link.remote_target,
            max_message_size=link.max_message_size,
        )
        link.session.send_link_flow(link)

    def _attach_outgoing(self, link: OutgoingLink) -> None:
        address = link.source_address or ""
        if address == "$cbs" or address.endswith("$management"):
            link.attached = True
            self._attach_reply(
                link,
                role=False,
                source=link.remote_source,
                target=link.remote_target,
                initial_delivery_count=0,
            )
            return
        path = entity_path(address)
        try:
            self._authorize(path)
            entity = self.broker.resolve_source(path)
        except errors.BrokerError as exc:
            self._refuse(link, exc, role=False)
            return
        filters = _source_field(link.remote_source, F.SOURCE_FILTER)
        session_key = Symbol("com.microsoft:session-filter")
        if isinstance(filters, dict) and session_key in filters:
            requested = filters[session_key]
            if isinstance(requested, bytes):
                requested = requested.decode()
            timeout_ms = link.properties.get(Symbol("com.microsoft:timeout"))
            timeout = timeout_ms / 1000.0 if timeout_ms else self.emulator.session_wait_default
            task = asyncio.get_running_loop().create_task(
                self._accept_session(link, entity, requested, timeout)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        try:
            link.entity = entity
            entity.add_consumer(link)
        except errors.BrokerError as exc:
            link.entity = None
            self._refuse(link, exc, role=False)
            return
        link.attached = True
        self._attach_reply(
            link,
            role=False,
            source=link.remote_source,
            target=link.remote_target,
            initial_delivery_count=0,
        )
        if link.link_credit > 0:
            entity.credit_available(link)

    async def _accept_session(
        self, link: OutgoingLink, entity: Any, requested: str | None, wait: float
    ) -> None:
        try:
            session_id = await entity.accept_session(link, requested, wait)
        except errors.BrokerError as exc:
            if not link.detached:
                self._refuse(link, exc, role=False)
            return
        except asyncio.CancelledError:
            return
        if link.detached:
            entity.remove_consumer(link)
            return
        link.entity = entity
        link.session_id = session_id
        link.attached = True
        source = link.remote_source
        source_fields = list(source.value) if isinstance(source, Described) else [None]
        source_fields += [None] * (8 - len(source_fields))
        source_fields[F.SOURCE_FILTER] = {Symbol("com.microsoft:session-filter"): session_id}
        locked_until = entity.session_locked_until(session_id)
        self._attach_reply(
            link,
            role=False,
            source=Described(ULong(fr.SOURCE), source_fields),
            target=link.remote_target,
            initial_delivery_count=0,
            properties={Symbol("com.microsoft:locked-until-utc"): Long(dotnet_ticks(locked_until))},
        )
        self.flush()
        if link.link_credit > 0:
            entity.credit_available(link)
            self.flush()

    def _on_detach(self, frame: fr.Frame) -> None:
        session = self._session(frame.channel)
        handle = field(frame.fields, F.DETACH_HANDLE, 0)
        link = session.links.pop(handle, None)
        if link is not None:
            self._release_link(link)
        self.send(frame.channel, fr.performative(fr.DETACH, [UInt(handle), True]))

    def _on_flow(self, frame: fr.Frame) -> None:
        session = self._session(frame.channel)
        fields = frame.fields
        next_incoming = field(fields, F.FLOW_NEXT_INCOMING_ID)
        window = field(fields, F.FLOW_INCOMING_WINDOW, 0)
        was_closed = session.remote_incoming_window <= 0
        if next_incoming is None:
            session.remote_incoming_window = window
        else:
            session.remote_incoming_window = next_incoming + window - session.next_outgoing_id
        handle = field(fields, F.FLOW_HANDLE)
        if handle is not None:
            link = session.links.get(handle)
            if link is not None:
                link.on_flow(fields)
        elif field(fields, F.FLOW_ECHO, False):
            self.send(session.channel, fr.performative(fr.FLOW, session.flow_fields()))
        if was_closed and session.remote_incoming_window > 0:
            for other in list(session.links.values()):
                if isinstance(other, OutgoingLink) and other.entity is not None and other.attached:
                    other.entity.credit_available(other)

    # --- transfers from the client --------------------------------------------------------
    def _on_transfer(self, frame: fr.Frame) -> None:
        session = self._session(frame.channel)
        session.next_incoming_id = (session.next_incoming_id + 1) & 0xFFFFFFFF
        fields = frame.fields
        link = session.links.get(field(fields, F.TRANSFER_HANDLE, 0))
        if not isinstance(link, IncomingLink):
            raise fr.FrameError("transfer on a link that is not attached for sending")
        if field(fields, F.TRANSFER_ABORTED, False):
            link.partial = None
            return
        more = bool(field(fields, F.TRANSFER_MORE, False))
        if link.partial is None:
            delivery_id = field(fields, F.TRANSFER_DELIVERY_ID, 0)
            tag = field(fields, F.TRANSFER_DELIVERY_TAG, b"")
            message_format = field(fields, F.TRANSFER_MESSAGE_FORMAT, 0)
            settled = bool(field(fields, F.TRANSFER_SETTLED, False))
            link.partial = (delivery_id, tag, message_format, settled, bytearray(frame.payload))
        else:
            link.partial[4].extend(frame.payload)
            if field(fields, F.TRANSFER_SETTLED, False):
                d, t, m, _, data = link.partial
                link.partial = (d, t, m, True, data)
        if more:
            limit = link.max_message_size or MAX_FRAME_SIZE * 64
            if len(link.partial[4]) > limit + 65536:
                raise fr.FrameError("multi-frame delivery exceeds the link's message size")
            return
        delivery_id, _tag, message_format, settled, payload = link.partial
        link.partial = None
        link.delivery_count += 1
        link.received += 1
        if link.received % (SENDER_CREDIT // 2) == 0:
            session.send_link_flow(link)
        if link.node:
            if not settled:
                session.pending_accepts.append(delivery_id)
            self._on_control_message(link, bytes(payload))
            return
        try:
            self._accept_messages(link, bytes(payload), message_format)
        except errors.BrokerError as exc:
            if not settled:
                self._reject(session, delivery_id, exc)
            return
        if not settled:
            session.pending_accepts.append(delivery_id)

    def _reject(self, session: AmqpSession, delivery_id: int, exc: errors.BrokerError) -> None:
        session.flush_accepts()  # keep dispositions in delivery order
        rejected = Described(ULong(fr.REJECTED), [fr.error(exc.condition, exc.description)])
        self.send(
            session.channel,
            fr.performative(
                fr.DISPOSITION, [True, UInt(delivery_id), UInt(delivery_id), True, rejected]
            ),
        )

    def _accept_messages(self, link: IncomingLink, payload: bytes, message_format: int) -> None:
        batch = message_format == fr.BATCH_MESSAGE_FORMAT
        size = batch_size(payload) if batch else len(payload)
        limit = link.max_message_size
        if limit and size > limit:
            raise errors.MessageSizeExceeded(
                f"The received message (size: {size} bytes) exceeds the limit "
                f"({limit} bytes) currently allowed on the link."
            )
        messages = parse_batch(payload) if batch else [parse_message(payload)]
        for message in messages:
            link.target.enqueue(message)

    # --- settlement of deliveries we sent -------------------------------------------------
    def _on_disposition(self, frame: fr.Frame) -> None:
        session = self._session(frame.channel)
        fields = frame.fields
        if not field(fields, F.DISPOSITION_ROLE, False):
            return  # a sender-side disposition: nothing we track
        first = field(fields, F.DISPOSITION_FIRST, 0)
        last = field(fields, F.DISPOSITION_LAST, first)
        settled = bool(field(fields, F.DISPOSITION_SETTLED, False))
        state = field(fields, F.DISPOSITION_STATE)
        code = state.descriptor if isinstance(state, Described) else None
        state_fields = state.value if isinstance(state, Described) else []
        state_fields = state_fields if isinstance(state_fields, list) else []
        for delivery_id in range(first, last + 1):
            entry = session.unsettled.pop(delivery_id, None)
            if entry is None:
                continue
            link, lock_token = entry
            error: errors.BrokerError | None = None
            try:
                if lock_token is not None and link.entity is not None:
                    self._settle(link.entity, lock_token, code, state_fields)
            except errors.BrokerError as exc:
                error = exc
            if settled:
                continue
            if error is not None:
                reply: Any = Described(
                    ULong(fr.REJECTED), [fr.error(error.condition, error.description)]
                )
            else:
                reply = Described(ULong(code if code is not None else fr.ACCEPTED), [])
            self.send(
                session.channel,
                fr.performative(
                    fr.DISPOSITION, [False, UInt(delivery_id), UInt(delivery_id), True, reply]
                ),
            )

    @staticmethod
    def _settle(entity: Any, lock_token: uuid.UUID, code: int | None, state: list[Any]) -> None:
        if code == fr.ACCEPTED:
            entity.complete(lock_token)
        elif code == fr.RELEASED:
            entity.release(lock_token)
        elif code == fr.MODIFIED:
            undeliverable = len(state) > 1 and bool(state[1])
            if undeliverable:
                entity.defer(lock_token)
            else:
                entity.abandon(lock_token)
        elif code == fr.REJECTED:
            reason = description = None
            error = state[0] if state else None
            if isinstance(error, Described) and isinstance(error.value, list):
                values = error.value + [None] * (3 - len(error.value))
                info = values[2] if isinstance(values[2], dict) else {}
                reason = _text(info.get(Symbol("DeadLetterReason")))
                description = _text(info.get(Symbol("DeadLetterErrorDescription")))
                if description is None:
                    description = _text(values[1])
            entity.dead_letter(lock_token, reason, description)
        else:
            entity.release(lock_token)

    # --- CBS and management ---------------------------------------------------------------
    def _on_control_message(self, link: IncomingLink, payload: bytes) -> None:
        request = parse_simple(payload)
        if link.node == "$cbs":
            status, description = self._put_token(request)
            reply = encode_simple(
                request.message_id,
                {"status-code": status, "status-description": description},
                None,
            )
            self._reply(link.session, "$cbs", reply)
            return
        node = link.node
        entity_node = entity_path(node)[: -len("$management")].rstrip("/")
        status, description, condition, body = handle_request(self.emulator, entity_node, request)
        properties: dict[str, Any] = {"statusCode": status, "statusDescription": description}
        if condition is not None:
            properties["errorCondition"] = Symbol(condition)
        reply = encode_simple(request.message_id, properties, body)
        self._reply(link.session, request.reply_to or node, reply)

    def _reply(self, session: AmqpSession, address: str, payload: bytes) -> None:
        for candidate in session.links.values():
            if isinstance(candidate, OutgoingLink) and candidate.source_address == address:
                candidate.send_settled(payload)
                return
        logger.warning("no reply link for %s on connection %s", address, self.peer)

    def _put_token(self, request: Any) -> tuple[int, str]:
        props = request.application_properties
        audience = _text(props.get("name")) or ""
        token = request.body.decode() if isinstance(request.body, bytes) else request.body
        keys = self.emulator.sas_keys
        path = entity_path(audience)
        if keys:
            problem = verify_sas_token(str(token or ""), audience, keys)
            if problem:
                logger.warning("CBS token refused for %s: %s", audience, problem)
                return 401, problem
        self.authorized.add(path.lower())
        return 200, "OK"

    def _authorize(self, path: str) -> None:
        if not self.emulator.sas_keys:
            return
        lowered = path.lower()
        if any(lowered == p or lowered.startswith(p + "/") for p in self.authorized):
            return
        raise errors.Unauthorized(f"No valid CBS token for '{path}'.")

    # --- teardown -------------------------------------------------------------------------
    def _close_with_error(self, condition: str, description: str) -> None:
        self.send(0, fr.performative(fr.CLOSE, [fr.error(condition, description)]))
        self.flush()
        self._close_transport()

    def _close_transport(self) -> None:
        self.stage = "closed"
        if self.transport is not None:
            self.flush()
            self.transport.close()


def _source_field(source: Any, index: int) -> Any:
    if isinstance(source, Described) and isinstance(source.value, list):
        return field(source.value, index)
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
