"""AMQP 1.0 type system: encode Python values to the wire format and decode them back.

This is the lowest layer of the emulator; :mod:`docbus.local.emulator.frames` builds performatives
and frames from it and :mod:`docbus.local.emulator.wire` builds messages.

Why our own codec and not python-qpid-proton: the emulator must control details proton's Python
binding hides or gets wrong for the azure-servicebus SDK — the transfer ``message-format`` (batches
arrive as 0x80013700, which the binding neither reads nor writes), binary 16-byte delivery tags
(the binding decodes tags as UTF-8 and raises), an always-present ``header.delivery-count``
(proton drops an all-default header), every field of an ``error`` list (proton drops trailing
nulls and the SDK then hangs), and data sections past the first of a message. It also keeps the
emulator a pure-Python, asyncio-native server with no C build step. The codec is tested against
the encodings of the AMQP 1.0 specification (part 1, types) as well as against the SDK itself.

Decoding maps AMQP types to Python: null→None, boolean→bool, all integers→int, float/double→
float, timestamp→:class:`Timestamp` (ms since the epoch), uuid→:class:`uuid.UUID`,
binary→bytes, string→str, symbol→:class:`Symbol`, list/array→list, map→dict,
described→:class:`Described`. Encoding picks the narrowest standard form for plain Python values
(int→int if it fits 32 bits, else long); the wrapper classes below choose an exact AMQP type.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from typing import Any

__all__ = [
    "Array",
    "Byte",
    "DecodeError",
    "Described",
    "Encoded",
    "Int",
    "Long",
    "Short",
    "Symbol",
    "Timestamp",
    "UByte",
    "UInt",
    "ULong",
    "UShort",
    "decode",
    "decode_value",
    "encode",
    "encode_value",
]


class DecodeError(ValueError):
    """The bytes are not a valid AMQP encoding."""


class Symbol(str):
    """An AMQP symbol (ASCII), distinct from an AMQP string."""

    __slots__ = ()


class _TypedInt(int):
    __slots__ = ()


class UByte(_TypedInt):
    __slots__ = ()


class UShort(_TypedInt):
    __slots__ = ()


class UInt(_TypedInt):
    __slots__ = ()


class ULong(_TypedInt):
    __slots__ = ()


class Byte(_TypedInt):
    __slots__ = ()


class Short(_TypedInt):
    __slots__ = ()


class Int(_TypedInt):
    __slots__ = ()


class Long(_TypedInt):
    __slots__ = ()


class Timestamp(_TypedInt):
    """Milliseconds since the Unix epoch."""

    __slots__ = ()


class Described:
    """A described value: a descriptor (usually a ulong code) and the value it describes."""

    __slots__ = ("descriptor", "value")

    def __init__(self, descriptor: Any, value: Any) -> None:
        self.descriptor = descriptor
        self.value = value

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Described)
            and self.descriptor == other.descriptor
            and self.value == other.value
        )

    def __hash__(self) -> int:
        return hash((self.descriptor, repr(self.value)))

    def __repr__(self) -> str:
        return f"Described({self.descriptor!r}, {self.value!r})"


class Array(list):
    """An AMQP array: every element has the element type named by ``type_``.

    ``type_`` is one of the wrapper classes above, ``bool``, ``float``, ``str``, ``bytes``,
    ``uuid.UUID``, ``Symbol``, ``Timestamp``, ``dict`` or ``list``.
    """

    def __init__(self, type_: type, items: Any = ()) -> None:
        super().__init__(items)
        self.type_ = type_


class Encoded(bytes):
    """A value that is already AMQP-encoded; written to the wire as it is."""

    __slots__ = ()


# ----------------------------------------------------------------------------------------------
# Encoding

_pack_b = struct.Struct(">b").pack
_pack_B = struct.Struct(">B").pack
_pack_h = struct.Struct(">h").pack
_pack_H = struct.Struct(">H").pack
_pack_i = struct.Struct(">i").pack
_pack_I = struct.Struct(">I").pack
_pack_q = struct.Struct(">q").pack
_pack_Q = struct.Struct(">Q").pack
_pack_d = struct.Struct(">d").pack


def _enc_compound(out: bytearray, small: int, large: int, count: int, body: bytes) -> None:
    # size counts the count field plus the body
    if len(body) + 1 <= 255 and count <= 255:
        out.append(small)
        out.append(len(body) + 1)
        out.append(count)
    else:
        out.append(large)
        out += _pack_I(len(body) + 4)
        out += _pack_I(count)
    out += body


def _enc_variable(out: bytearray, small: int, large: int, data: bytes) -> None:
    if len(data) <= 255:
        out.append(small)
        out.append(len(data))
    else:
        out.append(large)
        out += _pack_I(len(data))
    out += data


def _enc_int(out: bytearray, value: int) -> None:
    if -128 <= value <= 127:
        out.append(0x54)
        out += _pack_b(value)
    elif -(2**31) <= value < 2**31:
        out.append(0x71)
        out += _pack_i(value)
    elif -(2**63) <= value < 2**63:
        _enc_long(out, value)
    else:
        out.append(0x80)
        out += _pack_Q(value)


def _enc_long(out: bytearray, value: int) -> None:
    if -128 <= value <= 127:
        out.append(0x55)
        out += _pack_b(value)
    else:
        out.append(0x81)
        out += _pack_q(value)


def _enc_uint(out: bytearray, value: int) -> None:
    if value == 0:
        out.append(0x43)
    elif value <= 255:
        out.append(0x52)
        out.append(value)
    else:
        out.append(0x70)
        out += _pack_I(value)


def _enc_ulong(out: bytearray, value: int) -> None:
    if value == 0:
        out.append(0x44)
    elif value <= 255:
        out.append(0x53)
        out.append(value)
    else:
        out.append(0x80)
        out += _pack_Q(value)


def encode_value(out: bytearray, value: Any) -> None:  # noqa: C901 - one branch per AMQP type, the spec's encoding table
    """Append the encoding of ``value`` to ``out``."""
    if value is None:
        out.append(0x40)
        return
    cls = type(value)
    if cls is Encoded:
        out += value
    elif cls is bool:
        out.append(0x41 if value else 0x42)
    elif cls is str:
        _enc_variable(out, 0xA1, 0xB1, value.encode("utf-8"))
    elif cls is Symbol:
        _enc_variable(out, 0xA3, 0xB3, value.encode("ascii"))
    elif cls is bytes or cls is bytearray or cls is memoryview:
        _enc_variable(out, 0xA0, 0xB0, bytes(value))
    elif cls is int:
        _enc_int(out, value)
    elif cls is float:
        out.append(0x82)
        out += _pack_d(value)
    elif cls is uuid.UUID:
        out.append(0x98)
        out += value.bytes
    elif cls is dict:
        body = bytearray()
        for key, item in value.items():
            encode_value(body, key)
            encode_value(body, item)
        _enc_compound(out, 0xC1, 0xD1, len(value) * 2, bytes(body))
    elif cls is list or cls is tuple:
        if not value:
            out.append(0x45)
            return
        body = bytearray()
        for item in value:
            encode_value(body, item)
        _enc_compound(out, 0xC0, 0xD0, len(value), bytes(body))
    elif cls is Described:
        out.append(0x00)
        encode_value(out, value.descriptor)
        encode_value(out, value.value)
    elif cls is Array:
        _enc_array(out, value)
    else:
        encoder = _TYPED_ENCODERS.get(cls)
        if encoder is None:
            raise TypeError(f"cannot encode {cls.__name__} as AMQP")
        encoder(out, value)


def _enc_timestamp(out: bytearray, value: int) -> None:
    out.append(0x83)
    out += _pack_q(value)


_TYPED_ENCODERS: dict[type, Callable[[bytearray, Any], None]] = {
    UByte: lambda out, v: out.extend((0x50, v)),
    UShort: lambda out, v: out.extend(b"\x60" + _pack_H(v)),
    UInt: _enc_uint,
    ULong: _enc_ulong,
    Byte: lambda out, v: out.extend(b"\x51" + _pack_b(v)),
    Short: lambda out, v: out.extend(b"\x61" + _pack_h(v)),
    Int: lambda out, v: out.extend(
        (b"\x54" + _pack_b(v)) if -128 <= v <= 127 else (b"\x71" + _pack_i(v))
    ),
    Long: _enc_long,
    Timestamp: _enc_timestamp,
}

# Array element encodings: constructor byte and a function producing the element's bytes.
_ARRAY_ELEMENTS: dict[type, tuple[int, Callable[[Any], bytes]]] = {
    bool: (0x56, lambda v: b"\x01" if v else b"\x00"),
    UByte: (0x50, _pack_B),
    UShort: (0x60, _pack_H),
    UInt: (0x70, _pack_I),
    ULong: (0x80, _pack_Q),
    Byte: (0x51, _pack_b),
    Short: (0x61, _pack_h),
    Int: (0x71, _pack_i),
    int: (0x81, _pack_q),
    Long: (0x81, _pack_q),
    float: (0x82, _pack_d),
    Timestamp: (0x83, _pack_q),
    uuid.UUID: (0x98, lambda v: v.bytes),
    str: (0xB1, lambda v: _pack_I(len(v.encode("utf-8"))) + v.encode("utf-8")),
    Symbol: (0xB3, lambda v: _pack_I(len(v)) + v.encode("ascii")),
    bytes: (0xB0, lambda v: _pack_I(len(v)) + bytes(v)),
}


def _enc_array(out: bytearray, value: Array) -> None:
    spec = _ARRAY_ELEMENTS.get(value.type_)
    if spec is None:
        raise TypeError(f"cannot encode an AMQP array of {value.type_.__name__}")
    constructor, element = spec
    body = bytearray((constructor,))
    for item in value:
        body += element(item)
    if len(body) + 1 <= 255 and len(value) <= 255:
        out.append(0xE0)
        out.append(len(body) + 1)
        out.append(len(value))
    else:
        out.append(0xF0)
        out += _pack_I(len(body) + 4)
        out += _pack_I(len(value))
    out += body


def encode(value: Any) -> bytes:
    """The AMQP encoding of ``value``."""
    out = bytearray()
    encode_value(out, value)
    return bytes(out)


# ----------------------------------------------------------------------------------------------
# Decoding

_unpack_b = struct.Struct(">b").unpack_from
_unpack_h = struct.Struct(">h").unpack_from
_unpack_H = struct.Struct(">H").unpack_from
_unpack_i = struct.Struct(">i").unpack_from
_unpack_I = struct.Struct(">I").unpack_from
_unpack_q = struct.Struct(">q").unpack_from
_unpack_Q = struct.Struct(">Q").unpack_from
_unpack_f = struct.Struct(">f").unpack_from
_unpack_d = struct.Struct(">d").unpack_from

_MAX_DEPTH = 64


def decode_value(buf: bytes | memoryview, pos: int = 0, _depth: int = 0) -> tuple[Any, int]:
    """Decode one value starting at ``pos``; return it and the position after it."""
    try:
        code = buf[pos]
    except IndexError:
        raise DecodeError("truncated AMQP value") from None
    pos += 1
    if code == 0x00:
        if _depth > _MAX_DEPTH:
            raise DecodeError("AMQP value nested too deeply")
        descriptor, pos = decode_value(buf, pos, _depth + 1)
        value, pos = decode_value(buf, pos, _depth + 1)
        return Described(descriptor, value), pos
    return _decode_body(code, buf, pos, _depth)


def _need(buf: bytes | memoryview, end: int) -> None:
    if end > len(buf):
        raise DecodeError("truncated AMQP value")


def _decode_body(code: int, buf: bytes | memoryview, pos: int, depth: int) -> tuple[Any, int]:  # noqa: C901 - one branch per AMQP type code, the spec's decoding table
    if code == 0x40:
        return None, pos
    if code == 0x41:
        return True, pos
    if code == 0x42:
        return False, pos
    if code in (0x43, 0x44):
        return 0, pos
    if code in (0x52, 0x53, 0x50):
        _need(buf, pos + 1)
        return buf[pos], pos + 1
    if code in (0x54, 0x55, 0x51):
        _need(buf, pos + 1)
        return _unpack_b(buf, pos)[0], pos + 1
    if code == 0x56:
        _need(buf, pos + 1)
        return buf[pos] != 0, pos + 1
    if code == 0x60:
        _need(buf, pos + 2)
        return _unpack_H(buf, pos)[0], pos + 2
    if code == 0x61:
        _need(buf, pos + 2)
        return _unpack_h(buf, pos)[0], pos + 2
    if code == 0x70:
        _need(buf, pos + 4)
        return _unpack_I(buf, pos)[0], pos + 4
    if code == 0x71:
        _need(buf, pos + 4)
        return _unpack_i(buf, pos)[0], pos + 4
    if code == 0x72:
        _need(buf, pos + 4)
        return _unpack_f(buf, pos)[0], pos + 4
    if code == 0x80:
        _need(buf, pos + 8)
        return _unpack_Q(buf, pos)[0], pos + 8
    if code == 0x81:
        _need(buf, pos + 8)
        return _unpack_q(buf, pos)[0], pos + 8
    if code == 0x82:
        _need(buf, pos + 8)
        return _unpack_d(buf, pos)[0], pos + 8
    if code == 0x83:
        _need(buf, pos + 8)
        return Timestamp(_unpack_q(buf, pos)[0]), pos + 8
    if code == 0x98:
        _need(buf, pos + 16)
        return uuid.UUID(bytes=bytes(buf[pos : pos + 16])), pos + 16
    if code == 0x73:  # char, UTF-32
        _need(buf, pos + 4)
        return chr(_unpack_I(buf, pos)[0]), pos + 4
    if code == 0x74:  # decimal32: kept opaque
        _need(buf, pos + 4)
        return Encoded(bytes(buf[pos - 1 : pos + 4])), pos + 4
    if code == 0x84:
        _need(buf, pos + 8)
        return Encoded(bytes(buf[pos - 1 : pos + 8])), pos + 8
    if code == 0x94:
        _need(buf, pos + 16)
        return Encoded(bytes(buf[pos - 1 : pos + 16])), pos + 16
    if code in (0xA0, 0xA1, 0xA3):
        _need(buf, pos + 1)
        size = buf[pos]
        pos += 1
        return _variable(code, buf, pos, size)
    if code in (0xB0, 0xB1, 0xB3):
        _need(buf, pos + 4)
        size = _unpack_I(buf, pos)[0]
        pos += 4
        return _variable(code, buf, pos, size)
    if code == 0x45:
        return [], pos
    if code in (0xC0, 0xC1, 0xE0):
        _need(buf, pos + 2)
        size, count = buf[pos], buf[pos + 1]
        return _compound(code, buf, pos + 2, pos + 1 + size, count, depth)
    if code in (0xD0, 0xD1, 0xF0):
        _need(buf, pos + 8)
        size, count = _unpack_I(buf, pos)[0], _unpack_I(buf, pos + 4)[0]
        return _compound(code, buf, pos + 8, pos + 4 + size, count, depth)
    raise DecodeError(f"unknown AMQP constructor 0x{code:02x}")


def _variable(code: int, buf: bytes | memoryview, pos: int, size: int) -> tuple[Any, int]:
    end = pos + size
    _need(buf, end)
    raw = bytes(buf[pos:end])
    if code in (0xA0, 0xB0):
        return raw, end
    try:
        if code in (0xA1, 0xB1):
            return raw.decode("utf-8"), end
        return Symbol(raw.decode("ascii")), end
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid text in AMQP string: {exc}") from None


def _compound(
    code: int, buf: bytes | memoryview, pos: int, end: int, count: int, depth: int
) -> tuple[Any, int]:
    _need(buf, end)
    if depth > _MAX_DEPTH:
        raise DecodeError("AMQP value nested too deeply")
    if count > 1_000_000:
        raise DecodeError("AMQP compound value has too many elements")
    if code in (0xE0, 0xF0):
        return _array(buf, pos, end, count, depth), end
    items = []
    for _ in range(count):
        item, pos = decode_value(buf, pos, depth + 1)
        items.append(item)
    if pos != end:
        raise DecodeError("AMQP compound size does not match its contents")
    if code in (0xC1, 0xD1):
        if count % 2:
            raise DecodeError("AMQP map with an odd number of elements")
        return dict(zip(items[::2], items[1::2], strict=True)), end
    return items, end


def _array(buf: bytes | memoryview, pos: int, end: int, count: int, depth: int) -> list[Any]:
    if count == 0:
        return []
    descriptor = None
    described = buf[pos] == 0x00
    if described:
        descriptor, pos = decode_value(buf, pos + 1, depth + 1)
    element_code = buf[pos]
    pos += 1
    items: list[Any] = []
    for _ in range(count):
        item, pos = _decode_body(element_code, buf, pos, depth + 1)
        items.append(Described(descriptor, item) if described else item)
    if pos != end:
        raise DecodeError("AMQP array size does not match its contents")
    return items


def decode(data: bytes | memoryview) -> Any:
    """Decode a buffer holding exactly one value."""
    value, pos = decode_value(data, 0)
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} trailing bytes after the AMQP value")
    return value


def skip_value(buf: bytes | memoryview, pos: int) -> int:
    """The position after the value at ``pos``, without building compound values."""
    code = buf[pos]
    if code == 0x00:
        pos = skip_value(buf, pos + 1)
        return skip_value(buf, pos)
    width = _FIXED_WIDTH.get(code)
    if width is not None:
        end = pos + 1 + width
    elif code in (0xA0, 0xA1, 0xA3, 0xC0, 0xC1, 0xE0):
        _need(buf, pos + 2)
        end = pos + 2 + buf[pos + 1]
    elif code in (0xB0, 0xB1, 0xB3, 0xD0, 0xD1, 0xF0):
        _need(buf, pos + 5)
        end = pos + 5 + _unpack_I(buf, pos + 1)[0]
    else:
        raise DecodeError(f"unknown AMQP constructor 0x{code:02x}")
    _need(buf, end)
    return end


_FIXED_WIDTH = {
    0x40: 0, 0x41: 0, 0x42: 0, 0x43: 0, 0x44: 0, 0x45: 0,
    0x50: 1, 0x51: 1, 0x52: 1, 0x53: 1, 0x54: 1, 0x55: 1, 0x56: 1,
    0x60: 2, 0x61: 2,
    0x70: 4, 0x71: 4, 0x72: 4, 0x73: 4, 0x74: 4,
    0x80: 8, 0x81: 8, 0x82: 8, 0x83: 8, 0x84: 8,
    0x94: 16, 0x98: 16,
}  # fmt: skip


def map_entries(buf: bytes | memoryview, pos: int = 0) -> tuple[list[tuple[Any, bytes]], int]:
    """Decode a map's keys but keep each value's encoded bytes (so it re-encodes exactly)."""
    code = buf[pos]
    if code in (0xC1,):
        count = buf[pos + 2]
        start, end = pos + 3, pos + 2 + buf[pos + 1]
    elif code == 0xD1:
        count = _unpack_I(buf, pos + 5)[0]
        start, end = pos + 9, pos + 5 + _unpack_I(buf, pos + 1)[0]
    elif code == 0x40:
        return [], pos + 1
    else:
        raise DecodeError(f"expected an AMQP map, found constructor 0x{code:02x}")
    _need(buf, end)
    entries: list[tuple[Any, bytes]] = []
    cursor = start
    for _ in range(count // 2):
        key, cursor = decode_value(buf, cursor)
        value_end = skip_value(buf, cursor)
        entries.append((key, bytes(buf[cursor:value_end])))
        cursor = value_end
    if cursor != end:
        raise DecodeError("AMQP map size does not match its contents")
    return entries, end
