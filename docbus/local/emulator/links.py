"""Sessions and links of one emulator connection: credit, windows, transfers out.

A :class:`AmqpSession` tracks the AMQP session's transfer ids and windows and the deliveries sent
on it that await settlement; :class:`IncomingLink` is a link the client sends on (to an entity,
``$cbs`` or a ``$management`` node), :class:`OutgoingLink` one the client receives on — for
entity sources it is the broker's consumer (:class:`docbus.local.emulator.entity.Consumer`), taking
credit from the client's flow frames and sending each delivery as transfers. Neighbours:
:mod:`docbus.local.emulator.connection` owns them and dispatches frames to them;
:mod:`docbus.local.emulator.wire` encodes what they send.
"""

from __future__ import annotations

import struct
import uuid
from typing import TYPE_CHECKING, Any

from docbus.local.emulator import errors
from docbus.local.emulator import frames as fr
from docbus.local.emulator.codec import Described, UInt, ULong
from docbus.local.emulator.frames import F, field
from docbus.local.emulator.message import BrokeredMessage, ReceiveMode
from docbus.local.emulator.wire import encode_delivery

if TYPE_CHECKING:
    from docbus.local.emulator.connection import AmqpConnection

MAX_FRAME_SIZE = 1024 * 1024
WINDOW = 2**31 - 1
SENDER_CREDIT = 10_000
DELIVERY_TAG = struct.Struct(">Q")


class Link:
    """State shared by every link kind."""

    def __init__(self, session: AmqpSession, attach: list[Any]) -> None:
        self.session = session
        self.name = field(attach, F.ATTACH_NAME)
        self.handle = field(attach, F.ATTACH_HANDLE, 0)
        self.remote_source = field(attach, F.ATTACH_SOURCE)
        self.remote_target = field(attach, F.ATTACH_TARGET)
        self.snd_settle_mode = field(attach, F.ATTACH_SND_SETTLE_MODE, 2)
        self.rcv_settle_mode = field(attach, F.ATTACH_RCV_SETTLE_MODE, 0)
        self.properties = field(attach, F.ATTACH_PROPERTIES, {}) or {}
        self.detached = False

    @property
    def source_address(self) -> str | None:
        return _terminus_address(self.remote_source)

    @property
    def target_address(self) -> str | None:
        return _terminus_address(self.remote_target)

    def on_flow(self, fields: list[Any]) -> None:
        pass

    def on_detach(self) -> None:
        self.detached = True


class IncomingLink(Link):
    """A link on which the client sends (we are the receiver): entity, CBS or management."""

    def __init__(self, session: AmqpSession, attach: list[Any]) -> None:
        super().__init__(session, attach)
        self.delivery_count = field(attach, F.ATTACH_INITIAL_DELIVERY_COUNT, 0)
        self.partial: tuple[int, bytes, int, bool, bytearray] | None = None
        self.received = 0
        self.target: Any = None  # Queue/Topic for entity links
        self.node = ""  # "$cbs" or "<entity>/$management"
        self.max_message_size = 0


class OutgoingLink(Link):
    """A link on which we send: entity receivers (the broker's consumers) and reply links."""

    def __init__(self, session: AmqpSession, attach: list[Any]) -> None:
        super().__init__(session, attach)
        self.delivery_count = 0
        self.link_credit = 0
        self.drain = False
        self.entity: Any = None
        self.receive_mode = (
            ReceiveMode.RECEIVE_AND_DELETE if self.snd_settle_mode == 1 else ReceiveMode.PEEK_LOCK
        )
        self.session_id: str | None = None
        self.attached = False
        self._tag_counter = 0

    # --- Consumer protocol used by the broker --------------------------------------------
    @property
    def credit(self) -> int:
        if self.detached or not self.attached:
            return 0
        return max(0, min(self.link_credit, self.session.remote_incoming_window))

    def deliver(self, message: BrokeredMessage) -> None:
        settled = self.receive_mode == ReceiveMode.RECEIVE_AND_DELETE
        with_lock = not settled and self.session_id is None
        payload = encode_delivery(message, with_lock=with_lock)
        if message.lock_token is not None and not settled:
            tag = message.lock_token.bytes_le
        else:
            self._tag_counter += 1
            tag = DELIVERY_TAG.pack(self._tag_counter)
        self.link_credit -= 1
        self.delivery_count = _serial(self.delivery_count + 1)
        delivery_id = self.session.send_transfer(self, tag, payload, settled)
        if not settled:
            self.session.unsettled[delivery_id] = (self, message.lock_token)

    def send_settled(self, payload: bytes) -> None:
        """One pre-settled transfer: how management and CBS replies go out."""
        self.link_credit -= 1
        self.delivery_count = _serial(self.delivery_count + 1)
        self._tag_counter += 1
        self.session.send_transfer(self, DELIVERY_TAG.pack(self._tag_counter), payload, True)

    def session_lost(self) -> None:
        self.session.connection.detach_link(
            self,
            errors.SessionLockLost(f"The session lock for '{self.session_id}' has expired."),
        )

    # ------------------------------------------------------------------------------------
    def on_flow(self, fields: list[Any]) -> None:
        credit = field(fields, F.FLOW_LINK_CREDIT)
        if credit is None:
            return
        remote_count = field(fields, F.FLOW_DELIVERY_COUNT)
        if remote_count is None:
            self.link_credit = credit
        else:
            # The client counted fewer deliveries than we sent when transfers were still on
            # the wire as it wrote this flow: what it grants is that many fewer, never below
            # zero (AMQP 1.0, 2.6.7; delivery counts are 32-bit serial numbers).
            behind = _serial(self.delivery_count - remote_count)
            behind = behind - 2**32 if behind >= 2**31 else behind
            self.link_credit = max(0, credit - behind)
        self.drain = bool(field(fields, F.FLOW_DRAIN, False))
        if self.entity is not None and self.attached:
            self.entity.credit_available(self)
        if self.drain:
            # Everything that was available went out above: consume the rest of the credit.
            if self.link_credit > 0:
                self.delivery_count = _serial(self.delivery_count + self.link_credit)
                self.link_credit = 0
            self.session.send_link_flow(self, drain=True)
        elif field(fields, F.FLOW_ECHO, False):
            self.session.send_link_flow(self)


def _serial(value: int) -> int:
    """``value`` as a 32-bit serial number (RFC 1982), what AMQP delivery counts are."""
    return value & 0xFFFFFFFF


def _terminus_address(terminus: Any) -> str | None:
    if isinstance(terminus, Described) and isinstance(terminus.value, list) and terminus.value:
        address = terminus.value[0]
        if isinstance(address, bytes):
            return address.decode("utf-8", "replace")
        return None if address is None else str(address)
    return None


class AmqpSession:
    """One AMQP session of a connection (not a Service Bus message session: those are
    :class:`docbus.local.emulator.sessions.MessageSession`)."""

    def __init__(self, connection: AmqpConnection, channel: int, begin: list[Any]) -> None:
        self.connection = connection
        self.channel = channel
        self.next_incoming_id = field(begin, F.BEGIN_NEXT_OUTGOING_ID, 0)
        self.remote_incoming_window = field(begin, F.BEGIN_INCOMING_WINDOW, WINDOW)
        self.next_outgoing_id = 0
        self.next_delivery_id = 0
        self.links: dict[int, Link] = {}
        self.unsettled: dict[int, tuple[OutgoingLink, uuid.UUID | None]] = {}
        self.pending_accepts: list[int] = []
        self._frames_since_flow = 0

    def send_transfer(self, link: Link, tag: bytes, payload: bytes, settled: bool) -> int:
        delivery_id = self.next_delivery_id
        self.next_delivery_id = (delivery_id + 1) & 0xFFFFFFFF
        chunk = self.connection.max_payload
        offset = 0
        first = True
        while True:
            piece = payload[offset : offset + chunk]
            offset += len(piece)
            more = offset < len(payload)
            if first:
                fields = [
                    UInt(link.handle), UInt(delivery_id), tag, UInt(0), settled, more
                ]  # fmt: skip
                first = False
            else:
                fields = [UInt(link.handle), None, None, None, settled, more]
            self.connection.send(self.channel, fr.performative(fr.TRANSFER, fields), piece)
            self.next_outgoing_id = (self.next_outgoing_id + 1) & 0xFFFFFFFF
            self.remote_incoming_window -= 1
            if not more:
                return delivery_id

    def flow_fields(self) -> list[Any]:
        return [
            UInt(self.next_incoming_id),
            UInt(WINDOW),
            UInt(self.next_outgoing_id),
            UInt(WINDOW),
        ]

    def send_link_flow(self, link: Link, *, drain: bool = False) -> None:
        fields = self.flow_fields()
        if isinstance(link, OutgoingLink):
            credit = max(0, link.link_credit)  # replies sent without credit leave it below 0
            fields += [UInt(link.handle), UInt(link.delivery_count), UInt(credit)]
            fields += [None, drain]
        else:
            assert isinstance(link, IncomingLink)
            fields += [UInt(link.handle), UInt(link.delivery_count), UInt(SENDER_CREDIT)]
        self.connection.send(self.channel, fr.performative(fr.FLOW, fields))

    def flush_accepts(self) -> None:
        """Answer received transfers with settled ``accepted``, merging consecutive ids."""
        if not self.pending_accepts:
            return
        ids = self.pending_accepts
        self.pending_accepts = []
        start = prev = ids[0]
        for delivery_id in [*ids[1:], None]:
            if delivery_id is not None and delivery_id == prev + 1:
                prev = delivery_id
                continue
            self.connection.send(
                self.channel,
                fr.performative(
                    fr.DISPOSITION,
                    [True, UInt(start), UInt(prev), True, ACCEPTED],
                ),
            )
            if delivery_id is not None:
                start = prev = delivery_id


ACCEPTED = Described(ULong(fr.ACCEPTED), [])


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
