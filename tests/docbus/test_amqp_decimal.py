"""The SDK reads decimal properties once docbus's decimal128 decoder is installed.

azure-servicebus 7.15 encodes a ``Decimal`` application property correctly but cannot decode it,
and drops the whole received message silently; :mod:`docbus._amqp_decimal` repairs that.
"""

from __future__ import annotations

import decimal

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus._pyamqp._encode import encode_unknown

import docbus.servicebus  # noqa: F401 - installs the decoder, as every docbus client does
from docbus._amqp_decimal import decode_decimal128
from docbus.local.emulator import EmulatorThread
from docbus.topology import ROUTE_PROPERTY


@pytest.mark.parametrize(
    "text",
    ["1.5", "-0.001", "0", "12345678901234567890.123456789", "1E+100", "-7E-300"],
)
def test_every_value_the_sdk_encodes_decodes_to_itself(text: str) -> None:
    encoded = bytearray()
    encode_unknown(encoded, decimal.Decimal(text))
    assert encoded[0] == 0x94
    rest, value = decode_decimal128(memoryview(bytes(encoded[1:]) + b"tail"))
    assert bytes(rest) == b"tail"
    assert value == decimal.Decimal(text)


@pytest.mark.parametrize(
    ("first", "expected"), [(0x78, "Infinity"), (0xF8, "-Infinity"), (0x7C, "NaN")]
)
def test_special_values_decode(first: int, expected: str) -> None:
    # The SDK cannot encode these itself; other senders (.NET, Java) can.
    _, value = decode_decimal128(memoryview(bytes([first]) + bytes(15)))
    assert str(value) == expected


def test_a_message_with_a_decimal_property_is_received(
    servicebus_emulator: EmulatorThread,
) -> None:
    with ServiceBusClient.from_connection_string(servicebus_emulator.connection_string) as client:
        with client.get_topic_sender("documents") as sender:
            sender.send_messages(
                ServiceBusMessage(
                    "x",
                    application_properties={ROUTE_PROPERTY: "*", "price": decimal.Decimal("1.5")},
                )
            )
        with client.get_subscription_receiver("documents", "entities") as receiver:
            received = receiver.receive_messages(max_message_count=1, max_wait_time=5)
            assert len(received) == 1
            assert received[0].application_properties[b"price"] == decimal.Decimal("1.5")
            receiver.complete_message(received[0])
