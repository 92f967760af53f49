"""The AMQP 1.0 codec against the type encodings of the specification (part 1)."""

from __future__ import annotations

import uuid

import pytest

from docbus.local.emulator.codec import (
    Array,
    Byte,
    DecodeError,
    Described,
    Encoded,
    Int,
    Long,
    Short,
    Symbol,
    Timestamp,
    UByte,
    UInt,
    ULong,
    UShort,
    decode,
    encode,
    map_entries,
    skip_value,
)

SPEC_ENCODINGS = [
    (None, "40"),
    (True, "41"),
    (False, "42"),
    (UByte(7), "5007"),
    (UShort(513), "600201"),
    (UInt(0), "43"),
    (UInt(200), "52c8"),
    (UInt(70000), "7000011170"),
    (ULong(0), "44"),
    (ULong(0x53), "5353"),
    (ULong(2**40), "800000010000000000"),
    (Byte(-2), "51fe"),
    (Short(-2), "61fffe"),
    (Int(-3), "54fd"),
    (Int(100000), "71000186a0"),
    (Long(5), "5505"),
    (Long(2**40), "810000010000000000"),
    (1.5, "823ff8000000000000"),
    (Timestamp(1000), "8300000000000003e8"),
    (uuid.UUID("00112233-4455-6677-8899-aabbccddeeff"), "9800112233445566778899aabbccddeeff"),
    (b"\x01\x02", "a0020102"),
    ("hé", "a10368c3a9"),
    (Symbol("ab"), "a3026162"),
    ([], "45"),
    ([UInt(1), True], "c004025201 41".replace(" ", "")),
    ({Symbol("k"): "v"}, "c10702a3016ba10176"),
    (Described(ULong(0x24), []), "00532445"),
    (
        Array(Symbol, [Symbol("a"), Symbol("bc")]),
        "e00d02b30000000161 00000002 6263".replace(" ", ""),
    ),
]


@pytest.mark.parametrize(("value", "hexed"), SPEC_ENCODINGS, ids=[h for _, h in SPEC_ENCODINGS])
def test_encodes_each_type_as_the_specification_does(value: object, hexed: str) -> None:
    assert encode(value).hex() == hexed


@pytest.mark.parametrize(("value", "hexed"), SPEC_ENCODINGS, ids=[h for _, h in SPEC_ENCODINGS])
def test_decodes_each_specification_encoding_back(value: object, hexed: str) -> None:
    decoded = decode(bytes.fromhex(hexed))
    assert decoded == value
    if isinstance(value, (Symbol, Timestamp)):
        assert type(decoded) is type(value)


@pytest.mark.parametrize(
    ("hexed", "value"),
    [
        ("b100000002 6869".replace(" ", ""), "hi"),  # str32
        ("b300000001 61".replace(" ", ""), "a"),  # sym32
        ("b000000001 ff".replace(" ", ""), b"\xff"),  # vbin32
        ("d0 00000008 00000002 5201 5202".replace(" ", ""), [1, 2]),  # list32
        ("d1 00000009 00000002 a1016b 5201".replace(" ", ""), {"k": 1}),  # map32
        ("56 01", True),  # boolean with a payload byte
        ("7000000005", 5),  # full uint
        ("53ff", 255),  # smallulong
        ("720000803f", 4.600602988224807e-41),  # float (big-endian bits 0x0000803f)
        ("f0 0000000d 00000002 71 00000001 00000002".replace(" ", ""), [1, 2]),  # array32 of int
    ],
)
def test_decodes_wide_and_alternative_forms(hexed: str, value: object) -> None:
    assert decode(bytes.fromhex(hexed.replace(" ", ""))) == value


def test_large_values_switch_to_32_bit_forms() -> None:
    text = "x" * 300
    encoded = encode(text)
    assert encoded[0] == 0xB1 and decode(encoded) == text
    items = list(range(200))
    encoded = encode(items)
    assert encoded[0] == 0xD0 and decode(encoded) == items
    mapping = {f"key{i}": i for i in range(60)}
    assert decode(encode(mapping)) == mapping


def test_plain_ints_take_the_narrowest_signed_form() -> None:
    assert encode(5)[0] == 0x54
    assert encode(2**20)[0] == 0x71
    assert encode(2**40)[0] == 0x81
    assert decode(encode(-(2**63))) == -(2**63)


def test_encoded_values_are_written_verbatim() -> None:
    raw = encode(Timestamp(42))
    assert encode({Symbol("t"): Encoded(raw)}) == encode({Symbol("t"): Timestamp(42)})


def test_map_entries_keep_each_value_byte_for_byte() -> None:
    source = {"a": Timestamp(1), "b": [UInt(1), "x"], "c": None}
    entries, end = map_entries(encode(source))
    assert [k for k, _ in entries] == ["a", "b", "c"]
    assert entries[0][1] == encode(Timestamp(1))
    assert end == len(encode(source))


def test_skip_value_lands_after_nested_described_values() -> None:
    blob = encode(Described(ULong(0x70), [True, None, UInt(5)])) + b"\x41"
    assert blob[skip_value(blob, 0)] == 0x41


@pytest.mark.parametrize(
    "hexed",
    ["a105 6869", "c0 05 02 41", "ff", "d1 00000003 00000001 41", "83 0000"],
)
def test_rejects_truncated_or_unknown_encodings(hexed: str) -> None:
    with pytest.raises(DecodeError):
        decode(bytes.fromhex(hexed.replace(" ", "")))


def test_rejects_trailing_bytes_and_unencodable_types() -> None:
    with pytest.raises(DecodeError):
        decode(b"\x40\x40")
    with pytest.raises(TypeError):
        encode(object())
