"""A resumed parked message is still deferred: whatever gives it back must park it again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import MessageNotFoundError

from docbus.backoff import BackoffPolicy
from handlers.runtime import RegisteredHandler, discover_handlers
from publisher import publish_documents
from subscriber import processing as processing_module
from subscriber.parking import (
    ParkedMessage,
    fetchable_parked,
    mark_deferred,
    mark_resumed,
    park,
    parked_messages,
)
from subscriber.processing import Processor, is_deferred
from subscriber.receiver import Receiver
from subscriber.settlement import Action
from subscriber.worker import Worker, WorkerOptions
from tests.subscriber import sample_handlers
from tests.subscriber.conftest import Stack


async def one_document(
    stack: Stack, doc_id: str, behaviour: str
) -> tuple[RegisteredHandler, Processor]:
    """``doc_id`` published to the ``work`` handler, which will behave as ``behaviour`` says;
    that handler and a processor with fast retries."""
    report = await publish_documents(
        [{"doc_id": doc_id, "text": "t", "metadata": {"behaviour": behaviour}}],
        topic="docs", batch_id="b1", settings=stack.settings, store=stack.store,
    )  # fmt: skip
    assert report.ok
    [work] = [h for h in discover_handlers(sample_handlers) if h.spec.name == "work"]
    processor = Processor(
        stack.store, backoff=BackoffPolicy(base=0.1, cap=0.1, jitter=0.0), max_attempts=lambda _: 5
    )
    return work, processor


async def resumed_one(
    stack: Stack, receiver: Any, doc_id: str
) -> tuple[ParkedMessage, ServiceBusReceivedMessage]:
    """The first message of the subscription parked as the processor parks it (record, defer,
    confirm), then fetched back and marked as the resumer does."""
    messages: list[Any] = []
    while not messages:
        messages = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
    [message] = messages
    record = ParkedMessage(
        topic="docs", subscription="work", reason="SystemicFailure",
        sequence_number=int(message.sequence_number), batch_id="b1", doc_id=doc_id,
    )  # fmt: skip
    await park(stack.store, record)
    await receiver.defer_message(message)
    await mark_deferred(stack.store, record)
    [resumed] = await receiver.receive_deferred_messages([record.sequence_number])
    await mark_resumed(stack.store, [record])
    return record, resumed


async def test_a_resumed_message_that_fails_again_is_parked_again_not_stranded(
    stack: Stack,
) -> None:
    work, processor = await one_document(stack, "p1", "always-fail")
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_subscription_receiver("docs", "work") as receiver:
            record, resumed = await resumed_one(stack, receiver, "p1")
            assert is_deferred(resumed)

            outcome = await processor.process(work, Receiver(receiver, "docs/work"), resumed)

            assert outcome.action is Action.RETRY
            [again] = await parked_messages(stack.store, "docs", "work")
            assert again.sequence_number == record.sequence_number and again.deferred
            # and the broker still has it aside, for the next resume round to fetch
            [fetched] = await receiver.receive_deferred_messages([record.sequence_number])
            assert fetched.delivery_count > resumed.delivery_count
            await receiver.complete_message(fetched)


def watch_reparking(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, other: Any, seen: list[str]
) -> None:
    """Each time the processor writes a parked record: if a resumer could take it now, could
    another receiver fetch its message ("free"), or is it still locked ("locked": a resumer
    would find it "not found" and drop the record of a message still deferred)?"""
    recorded = processing_module.park

    async def park_watched(store: Any, parked: ParkedMessage) -> None:
        await recorded(store, parked)
        if not await fetchable_parked(store, [parked.id]):
            seen.append("not fetchable")
            return
        try:
            [fetched] = await other.receive_deferred_messages([parked.sequence_number])
        except MessageNotFoundError:
            seen.append("locked")
        else:
            seen.append("free")
            await other.abandon_message(fetched)  # back to its park, as it was

    monkeypatch.setattr(processing_module, "park", park_watched)


@pytest.mark.parametrize(
    ("behaviour", "action", "reason"),
    [
        # given back (a failure to retry): its record was written before the abandon, and a
        # resumer looking in between found the message locked ("locked") and dropped it
        ("always-fail", Action.RETRY, None),
        # parked again (batch mode re-parks every delivery of a round): written once, after
        # the deferral, confirmed as written (no confirmation write of its own)
        ("over-budget", Action.PARK, "OverBudget"),
    ],
)
async def test_a_resumed_message_is_settled_before_its_record_is_written_again(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, behaviour: str, action: Action,
    reason: str | None,
) -> None:  # fmt: skip
    work, processor = await one_document(stack, "rp", behaviour)
    seen: list[str] = []
    confirmed: list[str] = []

    async def confirm_noted(store: Any, parked: ParkedMessage) -> None:
        confirmed.append(parked.id)

    monkeypatch.setattr(processing_module, "mark_deferred", confirm_noted)
    async with (
        ServiceBusClient.from_connection_string(stack.connection_string, retry_total=0) as client,
        client.get_subscription_receiver("docs", "work") as receiver,
        client.get_subscription_receiver("docs", "work") as other,
    ):
        record, resumed = await resumed_one(stack, receiver, "rp")
        watch_reparking(stack, monkeypatch, other, seen)
        outcome = await processor.process(work, Receiver(receiver, "docs/work"), resumed)
        assert outcome.action is action
        assert seen == ["free"] and confirmed == []
        [again] = await parked_messages(stack.store, "docs", "work")
        assert again.sequence_number == record.sequence_number
        assert again.deferred and again.resumed_at is None
        assert reason is None or again.reason == reason
        [fetched] = await receiver.receive_deferred_messages([record.sequence_number])
        await receiver.complete_message(fetched)


async def test_a_parking_delivery_hands_its_slot_on_before_its_bookkeeping(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Parking (record, defer, confirm) needs no handler slot, as completing does not: in batch
    # mode every delivery of a round parks, and holding the slot through it held re-runs to
    # about one per slot per 0.6 s, 0.4 s of it parking.
    work, processor = await one_document(stack, "ob", "over-budget")
    order: list[str] = []
    recorded = processing_module.park

    async def park_noting(store: Any, parked: ParkedMessage) -> None:
        order.append("park")
        await recorded(store, parked)

    async def handler_returned() -> None:
        order.append("slot handed on")

    monkeypatch.setattr(processing_module, "park", park_noting)
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_subscription_receiver("docs", "work") as receiver:
            messages: list[Any] = []
            while not messages:
                messages = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            outcome = await processor.process(
                work, Receiver(receiver, "docs/work"), messages[0],
                handler_returned=handler_returned,
            )  # fmt: skip
    assert outcome.action is Action.PARK
    assert order == ["slot handed on", "park"]
    [parked] = await parked_messages(stack.store, "docs", "work")
    assert parked.reason == "OverBudget" and parked.deferred


async def test_resumed_messages_keep_their_locks_while_they_wait_for_a_slot(stack: Stack) -> None:
    # Two parked messages whose handler takes 3 s, resumed together into one handler slot:
    # the second waits 3 s for it, past the subscription's 2 s lock.
    report = await publish_documents(
        [{"doc_id": f"q{i}", "text": "t", "metadata": {"behaviour": "slow:3"}} for i in range(2)],
        topic="docs", batch_id="b1", settings=stack.settings, store=stack.store,
    )  # fmt: skip
    assert report.ok
    numbers = []
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_subscription_receiver("docs", "work") as receiver:
            messages: list[Any] = []
            while len(messages) < 2:
                messages += await receiver.receive_messages(max_message_count=2, max_wait_time=5)
            for message in messages:
                record = ParkedMessage(
                    topic="docs", subscription="work", reason="SystemicFailure",
                    sequence_number=int(message.sequence_number), batch_id="b1",
                )  # fmt: skip
                await park(stack.store, record)
                await receiver.defer_message(message)
                await mark_deferred(stack.store, record)
                numbers.append(record.sequence_number)
        worker = Worker(
            discover_handlers(sample_handlers),
            client=client,
            store=stack.store,
            options=WorkerOptions(
                concurrency=1,
                receive_ahead=0,
                until_idle=1.5,
                resume_interval=0.2,
                dlq_capture_interval=None,
            ),
            topology=stack.topology,
        )
        outcome = await worker.run()
        assert outcome.count(Action.COMPLETE) == 2
        assert await parked_messages(stack.store, "docs", "work") == []
    # completed on the broker too: nothing left aside (asked without the SDK's retries)
    async with ServiceBusClient.from_connection_string(
        stack.connection_string, retry_total=0
    ) as client:
        async with client.get_subscription_receiver("docs", "work") as receiver:
            for number in numbers:
                with pytest.raises(MessageNotFoundError):
                    await receiver.receive_deferred_messages([number])


async def park_one(stack: Stack, client: ServiceBusClient, doc_id: str, reason: str) -> None:
    """Publish ``doc_id`` and park it for ``reason`` as the processor parks (record, defer,
    confirm)."""
    report = await publish_documents(
        [{"doc_id": doc_id, "text": "t", "metadata": {"behaviour": "ok"}}],
        topic="docs", batch_id="b1", settings=stack.settings, store=stack.store,
    )  # fmt: skip
    assert report.ok
    async with client.get_subscription_receiver("docs", "work") as receiver:
        messages: list[Any] = []
        while not messages:
            messages = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        record = ParkedMessage(
            topic="docs", subscription="work", reason=reason, batch_id="b1", doc_id=doc_id,
            sequence_number=int(messages[0].sequence_number),
        )  # fmt: skip
        await park(stack.store, record)
        await receiver.defer_message(messages[0])
        await mark_deferred(stack.store, record)


def sample_worker(stack: Stack, client: ServiceBusClient, **options: Any) -> Worker:
    return Worker(
        discover_handlers(sample_handlers), client=client, store=stack.store,
        options=WorkerOptions(until_idle=1.0, dlq_capture_interval=None, **options),
        topology=stack.topology,
    )  # fmt: skip


async def keep_locked(receiver: Any, message: ServiceBusReceivedMessage) -> None:
    """Renew ``message``'s lock until cancelled, as a worker running its handler does."""
    while True:
        await receiver.renew_message_lock(message)
        await asyncio.sleep(0.5)


async def test_a_parked_message_another_receiver_holds_keeps_its_record(stack: Stack) -> None:
    # Service Bus answers "not found" for a deferred message another receiver has locked (a
    # worker whose handler outlived the record's in-hands time, say): a look must not take it
    # for gone, or nothing would ever fetch it back once that receiver lets it go. (No SDK
    # retries: it retries "not found", seconds each.)
    async with ServiceBusClient.from_connection_string(
        stack.connection_string, retry_total=0
    ) as client:
        await park_one(stack, client, "h1", "GivenBack")
        [record] = await parked_messages(stack.store, "docs", "work")
        async with client.get_subscription_receiver("docs", "work") as holder:
            [held] = await holder.receive_deferred_messages([record.sequence_number])
            renewing = asyncio.create_task(keep_locked(holder, held))  # (the lock is 2 s)
            try:
                first = await asyncio.wait_for(sample_worker(stack, client).run(), 30)
            finally:
                renewing.cancel()
            assert first.count(Action.COMPLETE) == 0
            assert [p.id for p in await parked_messages(stack.store, "docs", "work")] == [
                record.id
            ]  # was dropped as gone
            await holder.abandon_message(held)  # still deferred: its record brings it back
        second = await asyncio.wait_for(sample_worker(stack, client).run(), 30)
    assert second.count(Action.COMPLETE) == 1
    assert await stack.store.current_result("h1", "work") is not None


async def test_a_message_given_back_to_its_park_is_resumed_by_the_next_worker(
    stack: Stack,
) -> None:
    # A resumed message that failed transiently, or was given back at a stop, is parked again
    # as "GivenBack": nothing to wait for, so the next worker fetches it back at once.
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        await park_one(stack, client, "g1", "GivenBack")
        outcome = await asyncio.wait_for(sample_worker(stack, client).run(), 30)
    assert outcome.count(Action.COMPLETE) == 1
    assert await stack.store.current_result("g1", "work") is not None
    assert await parked_messages(stack.store, "docs", "work") == []


async def test_an_until_idle_worker_resumes_what_became_resumable_before_calling_itself_idle(
    stack: Stack,
) -> None:
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        await park_one(stack, client, "o1", "OverBudget")
        await stack.store.set_batch_over_budget("b1", True)
        running = asyncio.create_task(sample_worker(stack, client, resume_interval=600).run())
        await asyncio.sleep(0.3)  # started, and left it parked: the batch is over budget
        assert await stack.store.current_result("o1", "work") is None
        await stack.store.set_batch_budget("b1", 10.0)  # the operator raises the budget
        outcome = await asyncio.wait_for(running, 30)
    assert outcome.count(Action.COMPLETE) == 1 and outcome.parked == []
    assert await stack.store.current_result("o1", "work") is not None


def test_what_is_left_parked_names_its_reason_once() -> None:
    from subscriber.resumption import parked_why

    described = "SystemicFailure: AuthenticationFailed: Error code: 401"
    assert parked_why("SystemicFailure", described) == described
    assert parked_why("OverBudget", "batch b1 spent $1.00") == "OverBudget: batch b1 spent $1.00"
    assert parked_why("OverBudget", "") == "OverBudget"
