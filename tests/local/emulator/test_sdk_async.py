"""The same wire behaviour through ``azure.servicebus.aio``, plus many concurrent clients."""

from __future__ import annotations

import asyncio
import time

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from docbus.local.emulator.server import EmulatorThread


@pytest.fixture
async def aclient(emulator: EmulatorThread):  # type: ignore[no-untyped-def]
    async with ServiceBusClient.from_connection_string(emulator.connection_string) as client:
        yield client


async def receive(receiver, count: int, wait: float = 2):  # type: ignore[no-untyped-def]
    got: list = []
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        got += await receiver.receive_messages(
            max_message_count=count - len(got), max_wait_time=wait
        )
    return got


async def test_async_send_single_and_batch_then_receive_and_complete(aclient) -> None:  # type: ignore[no-untyped-def]
    async with aclient.get_queue_sender("q") as sender:
        await sender.send_messages(ServiceBusMessage("one", message_id="1"))
        batch = await sender.create_message_batch()
        for i in range(3):
            batch.add_message(ServiceBusMessage(f"b{i}"))
        await sender.send_messages(batch)
    async with aclient.get_queue_receiver("q") as receiver:
        got = await receive(receiver, 4)
        assert [str(m) for m in got] == ["one", "b0", "b1", "b2"]
        assert all(m.delivery_count == 0 and m.lock_token is not None for m in got)
        started = time.monotonic()
        for m in got:
            await receiver.complete_message(m)
        assert time.monotonic() - started < 1
        assert await receiver.receive_messages(max_message_count=1, max_wait_time=0.3) == []


async def test_async_abandon_dead_letter_and_defer(aclient) -> None:  # type: ignore[no-untyped-def]
    async with aclient.get_queue_sender("q") as sender:
        await sender.send_messages([ServiceBusMessage(b) for b in ("ab", "dl", "df")])
    async with aclient.get_queue_receiver("q") as receiver:
        ab, dl, df = await receive(receiver, 3)
        await receiver.abandon_message(ab)
        await receiver.dead_letter_message(dl, reason="why", error_description="because")
        await receiver.defer_message(df)
        (again,) = await receive(receiver, 1)
        assert (str(again), again.delivery_count) == ("ab", 1)
        await receiver.complete_message(again)
        (deferred,) = await receiver.receive_deferred_messages([df.sequence_number])
        await receiver.complete_message(deferred)
    async with aclient.get_queue_receiver("q", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        (dead,) = await receive(dlq, 1)
        assert (str(dead), dead.dead_letter_reason, dead.dead_letter_error_description) == (
            "dl", "why", "because"
        )  # fmt: skip
        await dlq.complete_message(dead)


async def test_async_max_delivery_count(aclient) -> None:  # type: ignore[no-untyped-def]
    async with aclient.get_queue_sender("q-mdc2") as sender:
        await sender.send_messages(ServiceBusMessage("x"))
    async with aclient.get_queue_receiver("q-mdc2") as receiver:
        for _ in range(2):
            (m,) = await receive(receiver, 1)
            await receiver.abandon_message(m)
    async with aclient.get_queue_receiver("q-mdc2", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as d:
        (dead,) = await receive(d, 1)
        assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"


async def test_a_hundred_concurrent_clients_send_and_receive(emulator: EmulatorThread) -> None:
    clients = [
        ServiceBusClient.from_connection_string(emulator.connection_string) for _ in range(50)
    ]
    senders = [c.get_queue_sender("q") for c in clients]
    receivers = [c.get_queue_receiver("q") for c in clients]
    try:
        await asyncio.gather(
            *(s.send_messages(ServiceBusMessage(f"c{i}")) for i, s in enumerate(senders))
        )
        for r in receivers:
            await r.__aenter__()
        assert emulator.call(lambda: len(emulator.emulator.connections)) >= 100

        async def take(receiver) -> list[str]:  # type: ignore[no-untyped-def]
            got = await receiver.receive_messages(max_message_count=2, max_wait_time=1)
            for m in got:
                await receiver.complete_message(m)
            return [str(m) for m in got]

        bodies: list[str] = []
        deadline = time.monotonic() + 20
        while len(bodies) < 50 and time.monotonic() < deadline:
            for chunk in await asyncio.gather(*(take(r) for r in receivers)):
                bodies += chunk
        assert sorted(bodies) == sorted(f"c{i}" for i in range(50))
    finally:
        await asyncio.gather(*(s.close() for s in senders), *(r.close() for r in receivers))
        await asyncio.gather(*(c.close() for c in clients))
