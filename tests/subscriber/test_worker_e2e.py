"""The worker end to end: publisher → emulator → worker → Mongo, with the real SDKs."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from docbus.backoff import BackoffPolicy
from docbus.topology import ROUTE_PROPERTY
from handlers.runtime import discover_handlers
from publisher import publish_documents
from subscriber.worker import Worker, WorkerOptions
from tests.subscriber import sample_handlers
from tests.subscriber.conftest import Stack
from tests.subscriber.helpers import FAST, run_worker


async def publish(stack: Stack, docs: list[dict[str, Any]], batch_id: str = "b1") -> None:
    report = await publish_documents(
        docs, topic="docs", batch_id=batch_id, settings=stack.settings, store=stack.store,
    )  # fmt: skip
    assert report.ok, report


def doc(doc_id: str, text: str, behaviour: str) -> dict[str, Any]:
    return {"text": text, "doc_id": doc_id, "metadata": {"behaviour": behaviour}}


async def invocations(stack: Stack, doc_id: str, event: str = "start") -> list[dict[str, Any]]:
    cursor = stack.store.database["invocations"].find({"doc_id": doc_id, "event": event})
    return [doc async for doc in cursor.sort("at", 1)]


async def current_results(stack: Stack, doc_id: str) -> list[dict[str, Any]]:
    """Every result version of a document: one after one run (a redelivery stores none),
    which is then its current one."""
    cursor = stack.store.database["results"].find({"doc_id": doc_id})
    return [doc async for doc in cursor]


async def dead_letters_on_broker(stack: Stack) -> list[Any]:
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        receiver = client.get_subscription_receiver(
            "docs", "work", sub_queue=ServiceBusSubQueue.DEAD_LETTER
        )
        async with receiver:
            return list(await receiver.peek_messages(max_message_count=50))


async def test_published_batch_ends_as_one_current_result_per_document(stack: Stack) -> None:
    docs = [{"text": f"document number {i}", "doc_id": f"d{i}"} for i in range(5)]
    await publish(stack, docs)
    report = await run_worker(stack)
    assert report.count(report_action("completed"), "work") == 5
    for i in range(5):
        (result,) = await current_results(stack, f"d{i}")
        assert result["output"] == {"length": len(f"document number {i}"), "head": "DOCUMENT NUM"}
        assert result["batch_id"] == "b1"
    assert await dead_letters_on_broker(stack) == []


def report_action(value: str):  # type: ignore[no-untyped-def]
    from subscriber.settlement import Action

    return Action(value)


async def test_transient_failure_is_retried_with_backoff_then_succeeds(stack: Stack) -> None:
    await publish(stack, [doc("f", "flaky", "fail-times:2")])
    await run_worker(stack)
    starts = await invocations(stack, "f")
    assert [s["attempt"] for s in starts] == [1, 2, 3]
    gaps = [(b["at"] - a["at"]).total_seconds() for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.18 and gaps[1] >= 0.38  # 0.2 s then 0.4 s of backoff, not a hot loop
    assert len(await current_results(stack, "f")) == 1


async def test_persistent_failure_is_dead_lettered_at_the_limit_with_its_record(
    stack: Stack,
) -> None:
    await publish(stack, [doc("x", "doomed", "always-fail")])
    report = await run_worker(stack)
    assert len(await invocations(stack, "x")) == 3  # MaxDeliveryCount of the subscription
    (dead,) = await dead_letters_on_broker(stack)
    assert dead.dead_letter_reason == "RetriesExhausted"
    assert "the downstream service is broken" in (dead.dead_letter_error_description or "")
    record = await stack.store.database["dead_letters"].find_one({"doc_id": "x"})
    assert record is not None
    assert record["reason"] == "RetriesExhausted"
    assert record["error_type"] == "RuntimeError"
    assert "Traceback" in record["traceback"]
    assert record["delivery_count"] == 3 and record["batch_id"] == "b1"
    assert record["handler"] == "work" and record["subscription"] == "work"
    assert b"doomed" in record["body"]
    assert report.reasons[("work", "RetriesExhausted")] == 1
    assert await current_results(stack, "x") == []


async def test_dead_letter_raised_by_a_handler_goes_at_once(stack: Stack) -> None:
    await publish(stack, [doc("p", "bad", "poison")])
    await run_worker(stack)
    assert len(await invocations(stack, "p")) == 1
    (dead,) = await dead_letters_on_broker(stack)
    assert dead.dead_letter_reason == "BadDocument"
    record = await stack.store.database["dead_letters"].find_one({"doc_id": "p"})
    assert record is not None and record["reason"] == "BadDocument"
    assert record["traceback"] is None  # a decision, not a crash


async def test_a_message_that_is_not_an_envelope_is_dead_lettered_as_invalid(stack: Stack) -> None:
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_topic_sender("docs") as sender:
            await sender.send_messages(
                ServiceBusMessage(
                    b"{not json", message_id="raw-1", application_properties={ROUTE_PROPERTY: "*"}
                )
            )
    await run_worker(stack)
    (dead,) = await dead_letters_on_broker(stack)
    assert dead.dead_letter_reason == "InvalidEnvelope"
    assert "not JSON" in (dead.dead_letter_error_description or "")
    record = await stack.store.database["dead_letters"].find_one({"message_id": "raw-1"})
    assert record is not None and record["body"] == b"{not json"
    assert record["properties"][ROUTE_PROPERTY] == "*"


async def test_a_one_megabyte_document_travels_by_claim_check(stack: Stack) -> None:
    text = "lorem ipsum dolor " * 60_000  # ~1 MB, four times the message limit
    await publish(stack, [{"text": text, "doc_id": "big"}])
    stored = await stack.store.database["documents"].find_one({"doc_id": "big"})
    assert stored is not None
    await run_worker(stack)
    (result,) = await current_results(stack, "big")
    assert result["output"]["length"] == len(text)


async def test_a_handler_outliving_its_lock_keeps_it(stack: Stack) -> None:
    await publish(stack, [doc("s", "slow", "slow:5")])
    await run_worker(stack)  # the subscription's lock lasts 2 s
    assert len(await invocations(stack, "s")) == 1
    assert len(await invocations(stack, "s", "done")) == 1
    (result,) = await current_results(stack, "s")
    assert result["delivery_count"] == 1


async def test_graceful_shutdown_finishes_in_flight_and_loses_nothing(stack: Stack) -> None:
    docs = [
        {"text": f"t{i}", "doc_id": f"g{i}", "metadata": {"behaviour": "slow:1"}} for i in range(6)
    ]
    await publish(stack, docs)
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = Worker(
            discover_handlers(sample_handlers),
            client=client,
            store=stack.store,
            options=WorkerOptions(concurrency=3, backoff=FAST),
            topology=stack.topology,
        )
        running = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 20
        while await stack.store.database["invocations"].count_documents({}) < 3:
            assert time.monotonic() < deadline, "the worker never started three handlers"
            await asyncio.sleep(0.05)
        worker.stop()
        first = await asyncio.wait_for(running, 30)
    finished_first = first.count(report_action("completed"))
    assert finished_first == 3  # the three in flight finished; nothing new was taken
    await run_worker(stack)
    for i in range(6):
        assert len(await current_results(stack, f"g{i}")) == 1


async def test_a_worker_killed_mid_handler_is_redelivered_to_one_result(
    stack: Stack, tmp_path: Path
) -> None:
    topology_file = tmp_path / "topology.toml"
    topology_file.write_text(
        '[defaults]\nmax_delivery_count = 3\nlock_duration = "PT2S"\n'
        '[[topics]]\nname = "docs"\n[[topics.subscriptions]]\nname = "work"\n'
        '[[topics.subscriptions]]\nname = "other"\n'
    )
    await publish(stack, [doc("k", "crash", "hang-first")])
    env = {
        **os.environ,
        "DOCBUS_SERVICEBUS__CONNECTION_STRING": stack.connection_string,
        "DOCBUS_MONGODB__URI": stack.settings.mongodb.uri.get_secret_value(),
        "DOCBUS_MONGODB__DATABASE": stack.settings.mongodb.database,
    }
    handlers_file = Path(sample_handlers.__file__)
    proc = subprocess.Popen(  # noqa: ASYNC220 - a worker process to kill
        [sys.executable, "-m", "docbus", "worker", "--handlers", str(handlers_file),
         "--topology", str(topology_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not await invocations(stack, "k"):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the worker never started the handler"
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    await run_worker(stack, until_idle=4.0)  # the lock (2 s) must expire first
    starts = await invocations(stack, "k")
    assert [s["attempt"] for s in starts] == [1, 2]
    (result,) = await current_results(stack, "k")
    assert result["delivery_count"] == 2


@pytest.mark.parametrize("copies", [2])
async def test_redelivered_duplicates_never_make_a_second_current_result(
    stack: Stack, copies: int
) -> None:
    await publish(stack, [{"text": "once", "doc_id": "o"}])
    envelope = await stack.store.get_document("b1", "o")
    assert envelope is not None
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_topic_sender("docs") as sender:
            for n in range(copies):  # the same envelope again, as a redelivery would bring it
                await sender.send_messages(
                    ServiceBusMessage(
                        envelope.to_bytes(),
                        message_id=f"copy-{n}",
                        application_properties={ROUTE_PROPERTY: "work"},
                    )
                )
    await run_worker(stack)
    assert len(await invocations(stack, "o", "done")) == copies + 1
    assert len(await current_results(stack, "o")) == 1
    assert await stack.store.database["results"].count_documents({"doc_id": "o"}) == 1


async def test_the_worker_records_dead_letters_the_broker_made_itself(stack: Stack) -> None:
    await publish(stack, [doc("ok1", "fine", "ok")])
    envelope = await stack.store.get_document("b1", "ok1")
    assert envelope is not None
    expiring = envelope.model_copy(update={"doc_id": "ttl", "generation": 0})
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_topic_sender("docs") as sender:
            await sender.send_messages(
                ServiceBusMessage(
                    expiring.to_bytes(),
                    message_id=expiring.message_id,
                    time_to_live=dt.timedelta(seconds=1),  # the SDK sends whole seconds
                    application_properties={ROUTE_PROPERTY: "work"},
                )
            )
    await asyncio.sleep(1.2)  # let the TTL lapse before any worker looks
    await run_worker(stack, dlq_capture_interval=30.0)
    record = await stack.store.database["dead_letters"].find_one({"doc_id": "ttl"})
    assert record is not None
    assert record["reason"] == "TTLExpiredException" and record["subscription"] == "work"
    assert await dead_letters_on_broker(stack) == []  # completed once recorded
    assert len(await current_results(stack, "ok1")) == 1


async def test_a_document_held_for_retry_shows_as_retrying_in_status(stack: Stack) -> None:
    from docbus.ops.status import collect_status

    await publish(stack, [doc("r", "again", "fail-times:1")])
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = Worker(
            discover_handlers(sample_handlers),
            client=client,
            store=stack.store,
            options=WorkerOptions(backoff=BackoffPolicy(base=30.0, cap=30.0, jitter=0.0)),
            topology=stack.topology,
        )
        running = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 20
        while not await stack.store.database["retries"].count_documents({"doc_id": "r"}):
            assert time.monotonic() < deadline, "the retry was never noted"
            await asyncio.sleep(0.05)
        (status,) = await collect_status(stack.store, ["b1"])
        assert status.handler_retrying == {"work": 1}
        assert status.pending("work") == 0  # retrying is not also counted as pending
        worker.stop()  # cuts the 30 s hold short: the message goes back for the next worker
        await asyncio.wait_for(running, 30)
    await run_worker(stack)
    (status,) = await collect_status(stack.store, ["b1"])
    assert status.handler_retrying == {} and status.counts.done == 1


async def test_a_handler_slot_is_handed_on_when_it_returns_and_the_result_is_stored_after(
    stack: Stack,
) -> None:
    from subscriber.processing import Processor
    from subscriber.received import message_properties
    from subscriber.receiver import Receiver
    from subscriber.settlement import Action

    await publish(stack, [doc("d1", "alpha text", "ok"), doc("d2", "beta text", "always-fail")])
    [work] = [h for h in discover_handlers(sample_handlers) if h.spec.name == "work"]
    events: list[str] = []

    class Recording(Receiver):
        """The receiver, noting when the broker is told a message is complete."""

        async def complete(self, message: Any) -> None:
            events.append("complete")
            await super().complete(message)

    processor = Processor(stack.store, backoff=FAST, max_attempts=lambda _: 3)
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_subscription_receiver("docs", "work") as receiver:
            messages: list[Any] = []
            while len(messages) < 2:
                messages += await receiver.receive_messages(max_message_count=2, max_wait_time=5)
            outcomes = {}
            for message in messages:
                doc_id = str(message_properties(message)["doc_id"])

                async def hand_on(doc_id: str = doc_id) -> None:
                    done = await invocations(stack, doc_id, "done")
                    stored = await stack.store.current_result(doc_id, "work")
                    events.append(f"hand on: handler {'done' if done else 'running'}")
                    events.append(f"result {'stored' if stored else 'not yet stored'}")

                recording = Recording(receiver, "docs/work")
                outcome = await processor.process(
                    work, recording, message, handler_returned=hand_on
                )
                outcomes[outcome.doc_id] = outcome.action
                if outcome.action is Action.COMPLETE:
                    assert await stack.store.current_result(doc_id, "work") is not None
    assert outcomes == {"d1": Action.COMPLETE, "d2": Action.RETRY}
    # the failing one keeps its slot through its retry hold; d1 hands it on as it returns
    assert events == ["hand on: handler done", "result not yet stored", "complete"]


def one_slot_two_ahead(stack: Stack, client: ServiceBusClient, **options: Any) -> Worker:
    return Worker(
        discover_handlers(sample_handlers),
        client=client,
        store=stack.store,
        options=WorkerOptions(
            concurrency=1, receive_ahead=2, dlq_capture_interval=None, backoff=FAST, **options
        ),
        topology=stack.topology,
    )


async def wait_for_invocations(stack: Stack, count: int, event: str = "start") -> None:
    deadline = time.monotonic() + 20
    while await stack.store.database["invocations"].count_documents({"event": event}) < count:
        assert time.monotonic() < deadline, f"fewer than {count} handler {event} events"
        await asyncio.sleep(0.05)


async def test_messages_received_ahead_wait_their_turn_with_their_locks_renewed(
    stack: Stack,
) -> None:
    # One slot, two messages received ahead: all three are this worker's from the start, and
    # the last waits two handler runs (4.4 s), twice the subscription's 2 s lock.
    await publish(stack, [doc(f"a{i}", f"text {i}", "slow:2.2") for i in range(3)])
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = one_slot_two_ahead(stack, client, until_idle=1.0)
        running = asyncio.create_task(worker.run())
        await wait_for_invocations(stack, 1)
        async with client.get_subscription_receiver("docs", "work") as rival:
            assert await rival.receive_messages(max_message_count=3, max_wait_time=1) == []
        report = await asyncio.wait_for(running, 30)
    assert report.count(report_action("completed")) == 3
    starts = await stack.store.database["invocations"].find().sort("at", 1).to_list(None)
    # one at a time, in turn: start, done, start, done, ...
    assert [e["event"] for e in starts] == ["start", "done"] * 3
    for i in range(3):
        (result,) = await current_results(stack, f"a{i}")
        assert result["delivery_count"] == 1  # never lost its lock while it waited


async def test_stop_gives_messages_received_ahead_back_at_once(stack: Stack) -> None:
    await publish(stack, [doc(f"r{i}", f"text {i}", "slow:3") for i in range(3)])
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = one_slot_two_ahead(stack, client)
        running = asyncio.create_task(worker.run())
        await wait_for_invocations(stack, 1)
        worker.stop()
        async with client.get_subscription_receiver("docs", "work") as rival:
            taken: list[Any] = []
            deadline = time.monotonic() + 10
            while len(taken) < 2 and time.monotonic() < deadline:
                taken += await rival.receive_messages(max_message_count=2, max_wait_time=1)
            # given back while the running handler still runs, not after it
            assert await stack.store.database["invocations"].count_documents({"event": "done"}) == 0
            for message in taken:
                await rival.abandon_message(message)
        assert len(taken) == 2
        # no handler ran them: given back released, their delivery did not count (a worker
        # stopped again and again must not push them towards their delivery limit)
        assert [m.delivery_count for m in taken] == [0, 0]
        first = await asyncio.wait_for(running, 30)
    assert first.count(report_action("completed")) == 1
    assert await stack.store.database["invocations"].count_documents({"event": "start"}) == 1
    await run_worker(stack)
    for i in range(3):
        assert len(await current_results(stack, f"r{i}")) == 1
