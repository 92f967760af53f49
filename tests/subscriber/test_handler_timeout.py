"""Handler timeouts: an attempt that runs too long is cancelled and retried, then dead-lettered
with a reason that names the timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from azure.servicebus.aio import ServiceBusClient

from docbus.backoff import BackoffPolicy
from docbus.store import DeadLetterFilter
from handlers import Context, Document, handler
from handlers.discovery import discover_handlers
from handlers.runtime import HandlerTimeout
from publisher import publish_documents
from subscriber.processing import Processor
from subscriber.receiver import Receiver
from subscriber.settlement import Action
from subscriber.worker import Worker, WorkerOptions
from tests.diagnostics import finish_within
from tests.subscriber import sample_handlers
from tests.subscriber.conftest import Stack

FAST = BackoffPolicy(base=0.2, cap=1.0, jitter=0.0)


async def publish(stack: Stack, behaviour: str) -> None:
    report = await publish_documents(
        [{"doc_id": "t1", "text": "some text", "metadata": {"behaviour": behaviour}}],
        topic="docs", batch_id="b1", settings=stack.settings, store=stack.store,
    )  # fmt: skip
    assert report.ok


async def run_worker(stack: Stack, **options: Any) -> None:
    work = [h for h in discover_handlers(sample_handlers) if h.spec.name == "work"]
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = Worker(
            work, client=client, store=stack.store, topology=stack.topology,
            options=WorkerOptions(
                until_idle=1.0, backoff=FAST, dlq_capture_interval=None, **options
            ),
        )  # fmt: skip
        await finish_within(worker.run(), 60)


async def attempts(stack: Stack) -> list[int]:
    cursor = stack.store.database["invocations"].find({"doc_id": "t1", "event": "start"})
    return [row["attempt"] async for row in cursor.sort("at", 1)]


async def test_a_hanging_attempt_times_out_and_the_next_delivery_succeeds(stack: Stack) -> None:
    await publish(stack, "hang-first")  # awaits an hour on its first delivery
    await run_worker(stack, handler_timeout=0.5)
    assert await attempts(stack) == [1, 2]
    result = await stack.store.current_result("t1", "work")
    assert result is not None and result.delivery_count == 2


async def test_an_attempt_that_always_times_out_is_dead_lettered_naming_the_timeout(
    stack: Stack,
) -> None:
    await publish(stack, "slow:30")
    await run_worker(stack, handler_timeout=0.3)
    assert await attempts(stack) == [1, 2, 3]  # the subscription's delivery limit
    [dead] = await stack.store.dead_letters(DeadLetterFilter(batch_id="b1"))
    assert dead.reason == "RetriesExhausted"
    assert "HandlerTimeout" in dead.description and "0.3s timeout" in dead.description


@handler(topic="docs", subscription="work", timeout=0.2)
async def stuck_in_a_step(doc: Document, ctx: Context) -> dict[str, Any]:
    async def wait() -> None:
        await asyncio.sleep(30)

    await ctx.step("waiting", wait)
    return {}


async def test_a_handler_timeout_wins_over_the_worker_default_and_names_the_step(
    stack: Stack,
) -> None:
    await publish(stack, "ok")
    [registered] = discover_handlers([stuck_in_a_step])
    processor = Processor(
        stack.store, backoff=FAST, max_attempts=lambda _: 5, handler_timeout=600.0
    )
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_subscription_receiver("docs", "work") as receiver:
            [message] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            outcome = await asyncio.wait_for(
                processor.process(registered, Receiver(receiver, "docs/work"), message), 10
            )
    assert outcome.action is Action.RETRY
    assert outcome.seconds < 5
    note = await stack.store.database["retries"].find_one({"doc_id": "t1"})
    assert note is not None
    assert "HandlerTimeout" in note["error"] and "0.2s timeout (in step 'waiting')" in note["error"]


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        handler(topic="t", subscription="s", timeout=0)(stuck_in_a_step)
    assert "in step 'waiting'" in str(HandlerTimeout("h", 2.0, "waiting"))
