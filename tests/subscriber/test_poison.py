"""Poison messages: any body a sender can put on a subscription ends as one dead letter with a
readable reason and one Mongo record, at once — and an idle worker still exits."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from azure.servicebus import ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from docbus.backoff import BackoffPolicy
from docbus.topology import ROUTE_PROPERTY
from handlers.runtime import discover_handlers
from subscriber.settlement import Action
from subscriber.worker import Worker, WorkerOptions
from tests.diagnostics import finish_within
from tests.subscriber import sample_handlers
from tests.subscriber.conftest import Stack
from tests.subscriber.helpers import run_worker
from tests.subscriber.poison_messages import DEEP, poison_messages, send

FAST = BackoffPolicy(base=0.1, cap=0.2, jitter=0.0)


async def test_every_poison_body_is_dead_lettered_at_once_with_a_record_and_the_worker_exits(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="subscriber")
    poison = poison_messages("work")
    await send(stack.connection_string, list(poison.values()))
    report = await asyncio.wait_for(run_worker(stack, dlq_capture_interval=30.0), 60)
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_subscription_receiver(
            "docs", "work", sub_queue=ServiceBusSubQueue.DEAD_LETTER
        ) as dlq:
            # the worker recorded each before dead-lettering it, and drained them before exiting
            assert await dlq.peek_messages(50, sequence_number=1) == []
    assert report.count(Action.DEAD_LETTER, "work") == len(poison)
    assert report.count(Action.RETRY) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    records = {r["message_id"]: r async for r in stack.store.database["dead_letters"].find({})}
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
    assert props["price"] == "1.50"
    assert props["huge-int"] == str(2**64 - 1)
    assert props["long"] == 2**40
    assert len(props["big"]) == 60_000
    assert await stack.store.database["invocations"].count_documents({}) == 0


async def test_an_idle_worker_exits_even_when_its_dead_letter_capture_breaks(stack: Stack) -> None:
    class BrokenCapture(Worker):
        """A capture that fails unexpectedly, as one did on poison bodies."""

        async def _capture_dead_letters(self) -> None:
            raise TypeError("'int' object is not iterable")

    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = BrokenCapture(
            discover_handlers(sample_handlers),
            client=client,
            store=stack.store,
            options=WorkerOptions(until_idle=0.5, dlq_capture_interval=30.0),
            topology=stack.topology,
        )
        await finish_within(worker.run(), 20)
