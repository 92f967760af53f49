"""Poison messages: any body a sender can put on a subscription ends as one dead letter with a
readable reason and one Mongo record, at once — and an idle worker still exits."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus._pyamqp.types import TYPE, VALUE, AMQPTypes  # a foreign sender's types
from azure.servicebus.amqp import AmqpAnnotatedMessage
from azure.servicebus.aio import ServiceBusClient

from docbus.envelope import Envelope
from docbus.topology import ROUTE_PROPERTY
from handlers import discover_handlers
from subscriber.backoff import BackoffPolicy
from subscriber.dlq import capture_dead_letters
from subscriber.settlement import Action
from subscriber.worker import Worker, WorkerOptions
from tests.subscriber import sample_handlers
from tests.subscriber.conftest import Stack

FAST = BackoffPolicy(base=0.1, cap=0.2, jitter=0.0)
ROUTE = {ROUTE_PROPERTY: "work"}
DEEP = b"[" * 50_000 + b"]" * 50_000


def envelope_json(**changes: Any) -> bytes:
    envelope = Envelope(doc_id="fine", batch_id="b1", topic="docs", content="text")
    return envelope.model_copy(update=changes).to_bytes()


def poison_messages() -> dict[str, AmqpAnnotatedMessage | ServiceBusMessage]:
    """Message id → a message no handler can run on, as a foreign sender could send it."""
    odd_properties: dict[str | bytes, Any] = {
        **ROUTE,
        "uuid": uuid.UUID(int=7),
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
            value_body=42, application_properties=ROUTE, properties={"message_id": "value-int"}
        ),
        "sequence": AmqpAnnotatedMessage(
            sequence_body=[[1, 2], ["a"]],
            application_properties=ROUTE,
            properties={"message_id": "sequence"},
        ),
        "deep-json": ServiceBusMessage(DEEP, message_id="deep-json", application_properties=ROUTE),
        "deep-metadata": ServiceBusMessage(
            envelope_json()[:-1] + b',"metadata":{"a":' + DEEP + b"}}",
            message_id="deep-metadata",
            application_properties=ROUTE,
        ),
        "not-utf8": ServiceBusMessage(
            b"\xff\xfe\x00 not text", message_id="not-utf8", application_properties=ROUTE
        ),
        "lone-surrogate": ServiceBusMessage(
            envelope_json().replace(b'"fine"', b'"\\ud800"'),
            message_id="lone-surrogate",
            application_properties=ROUTE,
        ),
        "huge-number": ServiceBusMessage(
            envelope_json()[:-1] + b',"generation":' + b"9" * 5000 + b"}",
            message_id="huge-number",
            application_properties=ROUTE,
        ),
        "odd-properties": ServiceBusMessage(
            b"{not json", message_id="odd-properties", application_properties=odd_properties
        ),
    }


async def send(stack: Stack, messages: list[Any]) -> None:
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_topic_sender("docs") as sender:
            for message in messages:
                await sender.send_messages(message)


async def test_every_poison_body_is_dead_lettered_at_once_with_a_record_and_the_worker_exits(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="subscriber")
    poison = poison_messages()
    await send(stack, list(poison.values()))
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = Worker(
            discover_handlers(sample_handlers),
            client=client,
            store=stack.store,
            options=WorkerOptions(until_idle=1.0, backoff=FAST, dlq_capture_interval=30.0),
            topology=stack.topology,
        )
        report = await asyncio.wait_for(worker.run(), 60)
        async with client.get_subscription_receiver(
            "docs", "work", sub_queue=ServiceBusSubQueue.DEAD_LETTER
        ) as dlq:
            # the worker recorded each before dead-lettering it, and drained them before exiting
            assert await dlq.peek_messages(50, sequence_number=1) == []
    assert report.count(Action.DEAD_LETTER, "work") == len(poison)
    assert report.count(Action.RETRY) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    records = {
        r["message_id"]: r async for r in stack.store.database["dead_letters"].find({})
    }
    assert sorted(records) == sorted(poison)
    for message_id, record in records.items():
        assert record["reason"] == "InvalidEnvelope", record
        assert record["delivery_count"] == 1, message_id  # at once, not after the retries
        assert record["description"] and "\n" not in record["description"]
        assert record["handler"] == "work" and record["subscription"] == "work"
    assert "AMQP value" in records["value-int"]["description"]
    assert "AMQP sequence" in records["sequence"]["description"]
    assert "nested too deeply" in records["deep-json"]["description"]
    assert "nested too deeply" in records["deep-metadata"]["description"]
    assert "UTF-8" in records["not-utf8"]["description"]
    assert "surrogate" in records["lone-surrogate"]["description"]
    assert records["deep-json"]["body"] == DEEP  # the body is kept byte for byte
    assert records["value-int"]["body"] == b"42"  # a non-data body, as readable text
    props = records["odd-properties"]["properties"]
    assert props[ROUTE_PROPERTY] == "work"
    assert props["uuid"] == str(uuid.UUID(int=7))
    assert props["huge-int"] == str(2**64 - 1)
    assert props["long"] == 2**40
    assert len(props["big"]) == 60_000
    assert await stack.store.database["invocations"].count_documents({}) == 0


async def test_dead_letter_capture_records_poison_bodies_the_broker_dead_lettered(
    stack: Stack,
) -> None:
    poison = poison_messages()
    await send(stack, list(poison.values()))
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_subscription_receiver("docs", "work") as receiver:
            taken: list[Any] = []
            while len(taken) < len(poison):
                taken += await receiver.receive_messages(len(poison), max_wait_time=5)
            for message in taken:  # as a crashed or foreign consumer would leave them
                await receiver.dead_letter_message(message, reason="Foreign")
        captured = await capture_dead_letters(client, stack.store, "docs", "work", max_wait=0.5)
    assert captured == len(poison)
    records = [r async for r in stack.store.database["dead_letters"].find({})]
    assert sorted(r["message_id"] for r in records) == sorted(poison)
    assert all(r["reason"] == "Foreign" and r["batch_id"] is None for r in records)
