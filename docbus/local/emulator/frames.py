"""AMQP 1.0 frames and performatives: the framing layer of the emulator.

A frame is ``size:4 doff:1 type:1 channel:2``, then a performative (a described list) and, for
transfers, the payload. :func:`encode_frame` writes one; :class:`FrameReader` splits a byte
stream into frames. Performative field positions are named here once so that
:mod:`docbus.local.emulator.connection` reads ``attach[F.ATTACH_SOURCE]`` rather than magic numbers.
Everything is emitted with small-ulong descriptors, which is all pyamqp decodes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from docbus.local.emulator.codec import (
    DecodeError,
    Described,
    Symbol,
    ULong,
    decode_value,
    encode_value,
)

AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"

FRAME_AMQP = 0
FRAME_SASL = 1

# Performative descriptor codes.
OPEN, BEGIN, ATTACH, FLOW, TRANSFER, DISPOSITION, DETACH, END, CLOSE = range(0x10, 0x19)
SASL_MECHANISMS, SASL_INIT, SASL_CHALLENGE, SASL_RESPONSE, SASL_OUTCOME = range(0x40, 0x45)

# Other described types.
ERROR = 0x1D
RECEIVED, ACCEPTED, REJECTED, RELEASED, MODIFIED = range(0x23, 0x28)
SOURCE = 0x28
TARGET = 0x29

# Message sections.
HEADER = 0x70
DELIVERY_ANNOTATIONS = 0x71
MESSAGE_ANNOTATIONS = 0x72
PROPERTIES = 0x73
APPLICATION_PROPERTIES = 0x74
DATA = 0x75
AMQP_SEQUENCE = 0x76
AMQP_VALUE = 0x77
FOOTER = 0x78

BATCH_MESSAGE_FORMAT = 0x80013700


class F:
    """Field positions within performatives and terminus lists."""

    OPEN_CONTAINER_ID, OPEN_HOSTNAME, OPEN_MAX_FRAME_SIZE, OPEN_CHANNEL_MAX = 0, 1, 2, 3
    OPEN_IDLE_TIMEOUT = 4
    BEGIN_REMOTE_CHANNEL, BEGIN_NEXT_OUTGOING_ID = 0, 1
    BEGIN_INCOMING_WINDOW, BEGIN_OUTGOING_WINDOW, BEGIN_HANDLE_MAX = 2, 3, 4
    ATTACH_NAME, ATTACH_HANDLE, ATTACH_ROLE = 0, 1, 2
    ATTACH_SND_SETTLE_MODE, ATTACH_RCV_SETTLE_MODE = 3, 4
    ATTACH_SOURCE, ATTACH_TARGET = 5, 6
    ATTACH_INITIAL_DELIVERY_COUNT, ATTACH_MAX_MESSAGE_SIZE = 9, 10
    ATTACH_PROPERTIES = 13
    FLOW_NEXT_INCOMING_ID, FLOW_INCOMING_WINDOW = 0, 1
    FLOW_NEXT_OUTGOING_ID, FLOW_OUTGOING_WINDOW = 2, 3
    FLOW_HANDLE, FLOW_DELIVERY_COUNT, FLOW_LINK_CREDIT = 4, 5, 6
    FLOW_AVAILABLE, FLOW_DRAIN, FLOW_ECHO = 7, 8, 9
    TRANSFER_HANDLE, TRANSFER_DELIVERY_ID, TRANSFER_DELIVERY_TAG = 0, 1, 2
    TRANSFER_MESSAGE_FORMAT, TRANSFER_SETTLED, TRANSFER_MORE = 3, 4, 5
    TRANSFER_RCV_SETTLE_MODE, TRANSFER_STATE, TRANSFER_RESUME, TRANSFER_ABORTED = 6, 7, 8, 9
    DISPOSITION_ROLE, DISPOSITION_FIRST, DISPOSITION_LAST = 0, 1, 2
    DISPOSITION_SETTLED, DISPOSITION_STATE = 3, 4
    DETACH_HANDLE, DETACH_CLOSED, DETACH_ERROR = 0, 1, 2
    TERMINUS_ADDRESS = 0
    SOURCE_FILTER = 7


_HEADER = struct.Struct(">IBBH")


def performative(code: int, fields: list[Any]) -> Described:
    """A described list with trailing null fields left out (the receiver pads defaults)."""
    end = len(fields)
    while end and fields[end - 1] is None:
        end -= 1
    return Described(ULong(code), fields[:end])


def error(condition: str, description: str, info: dict[Any, Any] | None = None) -> Described:
    """An AMQP ``error``, always with all three fields: the SDK indexes them without checks."""
    return Described(
        ULong(ERROR),
        [Symbol(condition), description, info or {Symbol("tracking-id"): "docbus-emulator"}],
    )


def encode_frame(
    channel: int, body: Described, payload: bytes = b"", frame_type: int = FRAME_AMQP
) -> bytes:
    out = bytearray(8)
    encode_value(out, body)
    out += payload
    _HEADER.pack_into(out, 0, len(out), 2, frame_type, channel)
    return bytes(out)


EMPTY_FRAME = _HEADER.pack(8, 2, FRAME_AMQP, 0)


@dataclass(slots=True)
class Frame:
    frame_type: int
    channel: int
    code: int  # performative descriptor code; -1 for an empty (heartbeat) frame
    fields: list[Any]
    payload: bytes


class FrameError(Exception):
    """A frame that cannot be parsed; the connection is closed with ``amqp:decode-error``."""


def parse_frame_body(frame_type: int, channel: int, body: memoryview) -> Frame:
    if not body:
        return Frame(frame_type, channel, -1, [], b"")
    try:
        value, pos = decode_value(body, 0)
    except DecodeError as exc:
        raise FrameError(f"undecodable performative: {exc}") from None
    if not isinstance(value, Described) or not isinstance(value.descriptor, int):
        raise FrameError("frame body is not a described performative")
    fields = value.value if isinstance(value.value, list) else []
    return Frame(frame_type, channel, value.descriptor, fields, bytes(body[pos:]))


def field(fields: list[Any], index: int, default: Any = None) -> Any:
    """A performative field, or its default when omitted or null."""
    if index < len(fields):
        value = fields[index]
        if value is not None:
            return value
    return default
