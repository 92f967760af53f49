"""Lock renewal: a renewal that meets a message the worker has settled meanwhile is not a lost
lock (no warning sends an operator looking for a problem that is not there). Renewal past a
lock's duration is proved end to end in test_worker_e2e."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from azure.servicebus.aio import ServiceBusClient

from subscriber.locks import LockRenewer
from subscriber.receiver import open_receiver
from tests.subscriber.poison_messages import send
from tests.subscriber.test_receiver import receive_all, receive_one, routed


@pytest.fixture
async def client(servicebus_connection_string: str) -> AsyncIterator[ServiceBusClient]:
    async with ServiceBusClient.from_connection_string(
        servicebus_connection_string, retry_total=0
    ) as client:
        yield client


async def test_a_renewal_after_the_message_was_settled_is_not_a_lost_lock(
    servicebus_connection_string: str,
    client: ServiceBusClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await send(servicebus_connection_string, [routed()], topic="slow")
    async with open_receiver(client, "slow", "blocking") as receiver:
        message = await receive_one(receiver)
        renewer = LockRenewer()
        renewer.register(receiver, message)
        await receiver.abandon(message)  # settled while its renewal is still scheduled
        with caplog.at_level(logging.WARNING, logger="subscriber.locks"):
            await renewer.stopped(message)
        await renewer.close()
    assert not [r for r in caplog.records if "lost the lock" in r.getMessage()]


async def test_messages_settled_before_their_first_renewal_cost_no_task(
    servicebus_connection_string: str, client: ServiceBusClient
) -> None:
    """A no-op handler's message is settled long before half its lock has passed: it gets a
    timer, not a task that is started, put to sleep and cancelled (most of the worker's
    per-message bookkeeping on a fast handler)."""
    await send(servicebus_connection_string, [routed(f"{i}".encode()) for i in range(20)])
    async with open_receiver(client, "docs", "work") as receiver:
        messages = await receive_all(receiver, 20)
        renewer = LockRenewer()
        before = len(asyncio.all_tasks())
        for message in messages:
            renewer.register(receiver, message)
        assert len(asyncio.all_tasks()) == before
        await asyncio.gather(*(receiver.complete(m) for m in messages))
        for message in messages:
            renewer.release(message)
            await renewer.stopped(message)
        await renewer.close()
        assert await receiver.peek(20) == []
