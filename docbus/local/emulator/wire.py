"""Messages on the wire: AMQP message sections to and from :class:`BrokeredMessage`.

Incoming transfers are split into sections; the sender's bare message (properties,
application-properties, body, footer) is kept as encoded bytes and the routing facts are decoded
beside it (:func:`parse_message`, :func:`parse_batch` for the SDK's 0x80013700 batches).
Outgoing deliveries get a fresh header (``delivery-count`` always present: the SDK reads it raw)
and the broker's ``x-opt-*`` message annotations (:func:`encode_delivery`). Management and CBS
requests are small messages decoded whole (:class:`SimpleMessage`). Neighbours:
:mod:`docbus.local.emulator.codec` below, :mod:`docbus.local.emulator.connection` above.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from docbus.local.emulator import frames as fr
from docbus.local.emulator.codec import (
    DecodeError,
    Described,
    Encoded,
    Symbol,
    Timestamp,
    UInt,
    ULong,
    decode_value,
    encode_value,
    map_entries,
    skip_value,
)
from docbus.local.emulator.message import BrokeredMessage, MessageState

_SECTION_NAMES = {
    "amqp:header:list": fr.HEADER,
    "amqp:delivery-annotations:map": fr.DELIVERY_ANNOTATIONS,
    "amqp:message-annotations:map": fr.MESSAGE_ANNOTATIONS,
    "amqp:properties:list": fr.PROPERTIES,
    "amqp:application-properties:map": fr.APPLICATION_PROPERTIES,
    "amqp:data:binary": fr.DATA,
    "amqp:amqp-sequence:list": fr.AMQP_SEQUENCE,
    "amqp:value:*": fr.AMQP_VALUE,
    "amqp:footer:map": fr.FOOTER,
}

_BODY_SECTIONS = (fr.DATA, fr.AMQP_SEQUENCE, fr.AMQP_VALUE)


def _sections(payload: bytes) -> list[tuple[int, int, int, int]]:
    """(code, section start, value start, section end) for each section of an encoded message."""
    out = []
    pos = 0
    size = len(payload)
    while pos < size:
        if payload[pos] != 0x00:
            raise DecodeError("message section is not a described value")
        descriptor, value_start = decode_value(payload, pos + 1)
        code = _SECTION_NAMES.get(descriptor, -1) if isinstance(descriptor, str) else descriptor
        end = skip_value(payload, value_start)
        out.append((code, pos, value_start, end))
        pos = end
    return out


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def parse_message(payload: bytes) -> BrokeredMessage:
    """Build a broker message from one encoded AMQP message."""
    msg = BrokeredMessage(size=len(payload))
    body = bytearray()
    for code, start, value_start, end in _sections(payload):
        if code == fr.HEADER:
            header, _ = decode_value(payload, value_start)
            if isinstance(header, list) and len(header) > 2 and header[2] is not None:
                msg.ttl = header[2] / 1000.0
        elif code == fr.MESSAGE_ANNOTATIONS:
            entries, _ = map_entries(payload, value_start)
            for key, raw in entries:
                name = str(key)
                if name == "x-opt-scheduled-enqueue-time":
                    when, _ = decode_value(raw)
                    if when is not None:
                        msg.scheduled_enqueue_time = when / 1000.0
                    continue
                if name == "x-opt-partition-key":
                    msg.partition_key = _text(decode_value(raw)[0])
                if name in _BROKER_ANNOTATIONS:
                    continue
                msg.sender_annotations[name] = Encoded(raw)
        elif code == fr.PROPERTIES:
            msg.properties_section = payload[start:end]
            props, _ = decode_value(payload, value_start)
            props = props if isinstance(props, list) else []
            props += [None] * (13 - len(props))
            msg.message_id = _text(props[0])
            msg.to = _text(props[2])
            msg.subject = _text(props[3])
            msg.reply_to = _text(props[4])
            msg.correlation_id = _text(props[5])
            msg.content_type = _text(props[6])
            msg.session_id = _text(props[10])
            msg.reply_to_session_id = _text(props[12])
        elif code == fr.APPLICATION_PROPERTIES:
            msg.application_properties_section = payload[start:end]
            values, _ = decode_value(payload, value_start)
            if isinstance(values, dict):
                msg.application_properties = {str(k): v for k, v in values.items()}
        elif code in _BODY_SECTIONS:
            body += payload[start:end]
        elif code == fr.FOOTER:
            msg.footer_section = payload[start:end]
        # delivery annotations are per-hop and not kept
    msg.body_sections = bytes(body)
    return msg


def batch_size(payload: bytes) -> int:
    """The size of an SDK batch as Service Bus counts it against the entity's message limit.

    That is the sum of its data sections (each inner message plus 5 bytes of section overhead,
    8 from 256 bytes on), exactly what ``ServiceBusMessageBatch`` adds up while it is filled.
    The envelope's own sections (the first message's id and session, copied after the SDK
    sized the batch) are not counted, or a batch the SDK filled to its limit would be refused.
    """
    return sum(end - start for code, start, _, end in _sections(payload) if code == fr.DATA)


def parse_batch(payload: bytes) -> list[BrokeredMessage]:
    """Split an SDK batch (message-format 0x80013700): one data section per inner message."""
    messages = []
    for code, _start, value_start, _end in _sections(payload):
        if code == fr.DATA:
            inner, _ = decode_value(payload, value_start)
            messages.append(parse_message(inner))
    return messages


_BROKER_ANNOTATIONS = frozenset(
    {
        "x-opt-sequence-number",
        "x-opt-enqueued-time",
        "x-opt-locked-until",
        "x-opt-message-state",
        "x-opt-enqueue-sequence-number",
        "x-opt-deadletter-source",
    }
)


def encode_delivery(msg: BrokeredMessage, *, with_lock: bool) -> bytes:
    """The message as a receiver gets it: header, annotations, then the sender's bare message."""
    out = bytearray()
    ttl = UInt(int(msg.ttl * 1000)) if msg.ttl is not None and msg.ttl * 1000 < 2**32 else None
    encode_value(
        out, Described(ULong(fr.HEADER), [None, None, ttl, None, UInt(msg.delivery_count)])
    )
    annotations: dict[Any, Any] = {Symbol(k): v for k, v in msg.sender_annotations.items()}
    if msg.partition_key is not None:
        annotations[Symbol("x-opt-partition-key")] = msg.partition_key
    if msg.scheduled_enqueue_time is not None:
        annotations[Symbol("x-opt-scheduled-enqueue-time")] = Timestamp(
            int(msg.scheduled_enqueue_time * 1000)
        )
    annotations[Symbol("x-opt-sequence-number")] = msg.sequence_number
    annotations[Symbol("x-opt-enqueued-time")] = Timestamp(int(msg.enqueued_time * 1000))
    if with_lock and msg.locked_until is not None:
        annotations[Symbol("x-opt-locked-until")] = Timestamp(int(msg.locked_until * 1000))
    if msg.state != MessageState.ACTIVE:
        annotations[Symbol("x-opt-message-state")] = int(msg.state)
    if msg.dead_letter_source is not None:
        annotations[Symbol("x-opt-deadletter-source")] = msg.dead_letter_source
    encode_value(out, Described(ULong(fr.MESSAGE_ANNOTATIONS), annotations))
    out += msg.properties_section
    out += _application_properties(msg)
    out += msg.body_sections
    out += msg.footer_section
    return bytes(out)


def _application_properties(msg: BrokeredMessage) -> bytes:
    if msg.dead_letter_reason is None and msg.dead_letter_description is None:
        return msg.application_properties_section
    values: dict[Any, Any] = {}
    if msg.application_properties_section:
        _, value_start = decode_value(msg.application_properties_section, 1)
        entries, _ = map_entries(msg.application_properties_section, value_start)
        values = {key: Encoded(raw) for key, raw in entries}
    if msg.dead_letter_reason is not None:
        values["DeadLetterReason"] = msg.dead_letter_reason
    if msg.dead_letter_description is not None:
        values["DeadLetterErrorDescription"] = msg.dead_letter_description
    out = bytearray()
    encode_value(out, Described(ULong(fr.APPLICATION_PROPERTIES), values))
    return bytes(out)


def delivery_tag(lock_token: uuid.UUID) -> bytes:
    """The SDK reads the lock token from the tag in .NET (little-endian) GUID byte order."""
    return lock_token.bytes_le


@dataclass
class SimpleMessage:
    """A management or CBS message, decoded whole."""

    properties: list[Any] = field(default_factory=lambda: [None] * 13)
    application_properties: dict[str, Any] = field(default_factory=dict)
    body: Any = None

    @property
    def message_id(self) -> Any:
        return self.properties[0]

    @property
    def reply_to(self) -> str | None:
        return _text(self.properties[4])


def parse_simple(payload: bytes) -> SimpleMessage:
    msg = SimpleMessage()
    for code, _start, value_start, _end in _sections(payload):
        value, _ = decode_value(payload, value_start)
        if code == fr.PROPERTIES and isinstance(value, list):
            msg.properties = value + [None] * (13 - len(value))
        elif code == fr.APPLICATION_PROPERTIES and isinstance(value, dict):
            msg.application_properties = {str(k): v for k, v in value.items()}
        elif code == fr.AMQP_VALUE or code == fr.DATA:
            msg.body = value
    return msg


def encode_simple(correlation_id: Any, application_properties: dict[str, Any], body: Any) -> bytes:
    out = bytearray()
    encode_value(
        out, Described(ULong(fr.PROPERTIES), [None, None, None, None, None, correlation_id])
    )
    encode_value(out, Described(ULong(fr.APPLICATION_PROPERTIES), application_properties))
    encode_value(out, Described(ULong(fr.AMQP_VALUE), body))
    return bytes(out)
