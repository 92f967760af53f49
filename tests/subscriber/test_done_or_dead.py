"""A document is done or dead, never both: one rule, kept by the processor and the store.

The rule: once a handler's result for a message (batch, document, generation) is stored, that
message is done. A later or parallel delivery of it completes instead of running the handler
again or dead-lettering it, and a dead letter of it — one the broker made when a lock was lost,
or one a parallel delivery recorded — is marked resolved, whichever of the two is written first.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver

from docbus.backoff import BackoffPolicy
from docbus.envelope import message_id
from docbus.records import DeadLetterRecord
from docbus.store import DeadLetterFilter, Store
from handlers import Context, DeadLetter, Document, handler
from handlers.runtime import RegisteredHandler, discover_handlers
from publisher import publish_documents
from subscriber.processing import Processor
from subscriber.receiver import Receiver
from subscriber.settlement import Action
from tests.subscriber import sample_handlers
from tests.subscriber.conftest import Stack


def work() -> RegisteredHandler:
    [registered] = [h for h in discover_handlers(sample_handlers) if h.spec.name == "work"]
    return registered


def processor(stack: Stack, max_attempts: int = 5) -> Processor:
    policy = BackoffPolicy(base=0.1, cap=0.1, jitter=0.0)
    return Processor(stack.store, backoff=policy, max_attempts=lambda _: max_attempts)


async def publish_one(stack: Stack, behaviour: str) -> None:
    report = await publish_documents(
        [{"doc_id": "d1", "text": "some text", "metadata": {"behaviour": behaviour}}],
        topic="docs", batch_id="b1", settings=stack.settings, store=stack.store,
    )  # fmt: skip
    assert report.ok


async def store_result(store: Store) -> None:
    """What a delivery of d1 that lost its lock stored before this one got the message."""
    await store.write_result(
        doc_id="d1", handler="work", handler_version="1", batch_id="b1",
        message_id=message_id("b1", "d1"), output={"length": 9}, generation=0,
    )  # fmt: skip


async def receive_one(receiver: ServiceBusReceiver) -> Any:
    messages: list[Any] = []
    while not messages:
        messages = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
    return messages[0]


async def starts(stack: Stack) -> int:
    return int(await stack.store.database["invocations"].count_documents({"event": "start"}))


async def test_a_redelivery_of_a_message_whose_result_is_stored_completes_without_running(
    stack: Stack,
) -> None:
    await publish_one(stack, "always-fail")
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_subscription_receiver("docs", "work") as receiver:
            await receiver.abandon_message(await receive_one(receiver))  # a lock lost, say
            await store_result(stack.store)
            again = await receive_one(receiver)
            assert again.delivery_count == 1
            outcome = await processor(stack).process(work(), Receiver(receiver, "docs/work"), again)
            assert outcome.action is Action.COMPLETE
            assert await receiver.receive_messages(max_message_count=1, max_wait_time=1) == []
    assert await starts(stack) == 0  # the handler, which would fail, never ran again


async def test_a_delivery_giving_up_on_a_message_done_meanwhile_completes_it(
    stack: Stack,
) -> None:
    await publish_one(stack, "poison")
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_subscription_receiver("docs", "work") as receiver:
            message = await receive_one(receiver)
            await store_result(stack.store)  # a parallel delivery finished first
            outcome = await processor(stack).process(
                work(), Receiver(receiver, "docs/work"), message
            )
            assert outcome.action is Action.COMPLETE
    assert await starts(stack) == 1
    assert await stack.store.dead_letters(DeadLetterFilter(include_resolved=True)) == []


def dead_letter(**fields: Any) -> DeadLetterRecord:
    values: dict[str, Any] = {
        "message_id": message_id("b1", "d1"), "subscription": "work", "topic": "docs",
        "reason": "MaxDeliveryCountExceeded", "handler": "work", "batch_id": "b1",
        "doc_id": "d1", "generation": 0,
    }  # fmt: skip
    return DeadLetterRecord(**(values | fields))


async def test_a_dead_letter_recorded_after_the_result_is_resolved_at_once(store: Store) -> None:
    await store_result(store)
    assert await store.record_dead_letter(dead_letter())
    [record] = await store.dead_letters(DeadLetterFilter(include_resolved=True))
    assert record.resolved_at is not None
    assert await store.dead_letters() == []  # not dead: dlq list and replay leave it out


async def test_a_result_written_after_a_dead_letter_resolves_it(store: Store) -> None:
    await store.record_dead_letter(dead_letter())
    await store.record_dead_letter(dead_letter(handler="other", subscription="other"))
    await store.record_dead_letter(dead_letter(generation=1, message_id=message_id("b1", "d1", 1)))
    assert len(await store.dead_letters()) == 3
    await store_result(store)
    resolved = await store.resolve_dead_letters(
        handler="work", batch_id="b1", doc_id="d1", generation=0
    )
    assert resolved == 1  # only this handler's, of this message (not another generation's)
    assert {(r.handler, r.generation) for r in await store.dead_letters()} == {
        ("other", 0),
        ("work", 1),
    }


@handler(topic="docs", subscription="work", version="1", name="refuses")
async def refuses(doc: Document, ctx: Context) -> dict[str, Any]:
    """Gives up on every document without touching the store."""
    raise DeadLetter("BadDocument", "the document has no usable text")


async def test_nothing_is_dead_lettered_that_mongo_did_not_record(
    stack: Stack, local_mongo: Any, caplog: pytest.LogCaptureFixture
) -> None:
    [registered] = discover_handlers([refuses])
    await publish_one(stack, "poison")
    async with (
        Store(local_mongo.uri, stack.store.database.name, timeout=0.5) as frozen,
        ServiceBusClient.from_connection_string(stack.connection_string) as client,
        client.get_subscription_receiver("docs", "work") as receiver,
    ):
        first = await receive_one(receiver)
        policy = BackoffPolicy(base=0.1, cap=0.1, jitter=0.0)
        os.kill(local_mongo.pid, signal.SIGSTOP)  # Mongo refuses the dead letter's record
        try:
            outcome = await Processor(frozen, backoff=policy, max_attempts=lambda _: 5).process(
                registered, Receiver(receiver, "docs/work"), first
            )
        finally:
            os.kill(local_mongo.pid, signal.SIGCONT)
        assert outcome.action is Action.RETRY  # given back, not dead-lettered
        assert "cannot record dead letter, retrying later" in caplog.text
        again = await receive_one(receiver)
        assert again.delivery_count == 1
        outcome = await processor(stack).process(registered, Receiver(receiver, "docs/work"), again)
        assert outcome.action is Action.DEAD_LETTER
    [record] = await stack.store.dead_letters()
    assert record.reason == "BadDocument"
