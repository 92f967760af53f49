"""A catalogue of poison messages: bodies and properties no handler can run on, as a foreign
sender could send them with the real SDK (used by the worker's and the capture's tests)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

from azure.servicebus import ServiceBusMessage
from azure.servicebus._pyamqp.types import TYPE, VALUE, AMQPTypes  # a foreign sender's types
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.amqp import AmqpAnnotatedMessage

from docbus.envelope import Envelope
from docbus.topology import ROUTE_PROPERTY

DEEP = b"[" * 50_000 + b"]" * 50_000


def envelope_json(**changes: Any) -> bytes:
    envelope = Envelope(doc_id="fine", batch_id="b1", topic="docs", content="text")
    return envelope.model_copy(update=changes).to_bytes()


def poison_messages(route: str) -> dict[str, AmqpAnnotatedMessage | ServiceBusMessage]:
    """Message id → a message no handler can run on, routed to subscription ``route``."""
    route_to = {ROUTE_PROPERTY: route}
    odd_properties: dict[str | bytes, Any] = {
        **route_to,
        "uuid": uuid.UUID(int=7),
        # The SDK drops a received message with a decimal unless docbus repairs its decoder.
        "price": decimal.Decimal("1.50"),
        # An AMQP ulong over BSON's 64-bit signed integers (the SDK sends ints as int32).
        "huge-int": {TYPE: AMQPTypes.ulong, VALUE: 2**64 - 1},
        "long": {TYPE: AMQPTypes.long, VALUE: 2**40},
        "map": {1: "one", "nested": {"a.b": [1, "x"]}},
        "list": [1, "two", None],
        "when": dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
        "dotted.key": 1,
        "$dollar": 2,
        "big": "x" * 60_000,
    }
    return {
        "value-int": AmqpAnnotatedMessage(
            value_body=42, application_properties=route_to, properties={"message_id": "value-int"}
        ),
        "sequence": AmqpAnnotatedMessage(
            sequence_body=[[1, 2], ["a"]],
            application_properties=route_to,
            properties={"message_id": "sequence"},
        ),
        "deep-json": ServiceBusMessage(
            DEEP, message_id="deep-json", application_properties=route_to
        ),
        "deep-metadata": ServiceBusMessage(
            envelope_json()[:-1] + b',"metadata":{"a":' + DEEP + b"}}",
            message_id="deep-metadata",
            application_properties=route_to,
        ),
        "not-utf8": ServiceBusMessage(
            b"\xff\xfe\x00 not text", message_id="not-utf8", application_properties=route_to
        ),
        "lone-surrogate": ServiceBusMessage(
            envelope_json().replace(b'"fine"', b'"\\ud800"'),
            message_id="lone-surrogate",
            application_properties=route_to,
        ),
        "huge-number": ServiceBusMessage(
            envelope_json()[:-1] + b',"generation":' + b"9" * 5000 + b"}",
            message_id="huge-number",
            application_properties=route_to,
        ),
        "odd-properties": ServiceBusMessage(
            b"{not json", message_id="odd-properties", application_properties=odd_properties
        ),
    }


async def send(connection_string: str, messages: list[Any], topic: str = "docs") -> None:
    """Send ``messages`` one by one (a batch would take only messages built for one)."""
    async with ServiceBusClient.from_connection_string(connection_string) as client:
        async with client.get_topic_sender(topic) as sender:
            for message in messages:
                await sender.send_messages(message)
