"""A stepping handler's checkpoints are read as its message arrives, not when it starts."""

from __future__ import annotations

import time
from typing import Any

from azure.servicebus.aio import ServiceBusClient

from docbus.backoff import BackoffPolicy
from docbus.store import Store, StoreError
from handlers import Context, Document, handler
from handlers.runtime import discover_handlers
from publisher import publish_documents
from subscriber.processing import Processor, cancel_unawaited
from subscriber.receiver import Receiver
from subscriber.settlement import Action
from subscriber.worker import Worker, WorkerOptions
from tests.subscriber.conftest import Stack

STEP_CALLS: list[str] = []


async def shout(text: str) -> str:
    STEP_CALLS.append(text)
    return text.upper()


@handler(topic="docs", subscription="other", version="1")
async def stepping(doc: Document, ctx: Context) -> dict[str, Any]:
    return {"loud": await ctx.step("shout", shout, doc.text)}


class CountingReads:
    """The real store, counting the checkpoint reads made through it."""

    def __init__(self, store: Store, fail: bool = False) -> None:
        self.store = store
        self.fail = fail
        self.reads: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def checkpoints_of(self, doc_id: str, handler: str, version: str) -> dict[str, Any]:
        self.reads.append(doc_id)
        if self.fail:
            self.fail = False
            raise StoreError("the read ahead met a failover")
        return await self.store.checkpoints_of(doc_id, handler, version)


async def publish(stack: Stack, prefix: str, count: int, batch_id: str = "b1") -> None:
    docs = [{"doc_id": f"{prefix}{i}", "text": f"text {i}"} for i in range(count)]
    report = await publish_documents(
        docs, topic="docs", batch_id=batch_id, settings=stack.settings, store=stack.store,
    )  # fmt: skip
    assert report.ok


async def received(stack: Stack, count: int) -> tuple[ServiceBusClient, Any, list[Any]]:
    client = ServiceBusClient.from_connection_string(stack.connection_string)
    receiver = client.get_subscription_receiver("docs", "other")
    await receiver.__aenter__()
    messages: list[Any] = []
    while len(messages) < count:
        messages += await receiver.receive_messages(max_message_count=count, max_wait_time=5)
    return client, receiver, messages


async def test_checkpoints_are_read_ahead_once_a_handler_is_seen_to_use_steps(
    stack: Stack,
) -> None:
    await publish(stack, "s", 3)
    [registered] = discover_handlers([stepping])
    counting = CountingReads(stack.store, fail=False)
    processor = Processor(counting, backoff=BackoffPolicy(), max_attempts=lambda _: 3)  # type: ignore[arg-type]
    client, receiver, messages = await received(stack, 3)
    try:
        first, second, third = sorted(messages, key=lambda m: m.application_properties[b"doc_id"])
        # not known to use steps yet: nothing read ahead; its first step reads for itself
        assert processor.read_ahead(registered, first) is None
        outcome = await processor.process(registered, Receiver(receiver, "docs/other"), first)
        assert (outcome.action, counting.reads) == (Action.COMPLETE, ["s0"])

        # from now on the read starts as the message arrives; the step uses it
        ahead = processor.read_ahead(registered, second)
        assert ahead is not None
        assert await ahead == {}
        assert counting.reads == ["s0", "s1"]
        outcome = await processor.process(
            registered, Receiver(receiver, "docs/other"), second, checkpoints=ahead
        )
        cancel_unawaited(ahead)
        assert (outcome.action, counting.reads) == (Action.COMPLETE, ["s0", "s1"])

        # a read ahead that failed is made again by the step, which then goes on as usual
        counting.fail = True
        ahead = processor.read_ahead(registered, third)
        assert ahead is not None
        outcome = await processor.process(
            registered, Receiver(receiver, "docs/other"), third, checkpoints=ahead
        )
        cancel_unawaited(ahead)
        assert (outcome.action, counting.reads) == (Action.COMPLETE, ["s0", "s1", "s2", "s2"])
    finally:
        await receiver.close()
        await client.close()
    for i in range(3):
        stored = await stack.store.current_result(f"s{i}", "stepping")
        assert stored is not None and stored.output == {"loud": f"TEXT {i}"}
    assert STEP_CALLS == ["text 0", "text 1", "text 2"]

    # the same document again (another batch): its checkpoint comes with the read ahead
    await publish(stack, "s", 1, batch_id="b2")
    client, receiver, [again] = await received(stack, 1)
    try:
        ahead = processor.read_ahead(registered, again)
        assert ahead is not None
        outcome = await processor.process(
            registered, Receiver(receiver, "docs/other"), again, checkpoints=ahead
        )
        cancel_unawaited(ahead)
    finally:
        await receiver.close()
        await client.close()
    assert outcome.action is Action.COMPLETE
    assert STEP_CALLS == ["text 0", "text 1", "text 2"]  # not run again
    assert counting.reads[-1:] == ["s0"] and len(counting.reads) == 5


STARTS: dict[str, float] = {}


@handler(topic="docs", subscription="other", version="2", name="stepping_timed")
async def stepping_timed(doc: Document, ctx: Context) -> dict[str, Any]:
    STARTS[doc.doc_id] = time.monotonic()
    return {"loud": await ctx.step("shout", shout, doc.text)}


class TimedReads(CountingReads):
    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.at: dict[str, float] = {}

    async def checkpoints_of(self, doc_id: str, handler: str, version: str) -> dict[str, Any]:
        self.at.setdefault(doc_id, time.monotonic())
        return await super().checkpoints_of(doc_id, handler, version)


async def test_a_worker_reads_checkpoints_as_messages_arrive_and_once_per_delivery(
    stack: Stack,
) -> None:
    await publish(stack, "w", 8)
    timed = TimedReads(stack.store)
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = Worker(
            discover_handlers([stepping_timed]),
            client=client,
            store=timed,  # type: ignore[arg-type]
            options=WorkerOptions(
                concurrency=1, receive_ahead=2, until_idle=1.0, dlq_capture_interval=None
            ),
            topology=stack.topology,
        )
        outcome = await worker.run()
    assert outcome.count(Action.COMPLETE) == 8
    assert sorted(timed.reads) == [f"w{i}" for i in range(8)]  # one read per delivery
    ahead = [d for d in STARTS if timed.at[d] < STARTS[d]]
    # the first delivery teaches the worker that the handler uses steps (the messages
    # received before it ends, one slot and two ahead at most, read for themselves); the
    # rest are read as they arrive
    assert len(ahead) >= 8 - 3, (timed.at, STARTS)
