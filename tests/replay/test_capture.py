"""Capture: broker-side dead letters reach Mongo once each, and leave the dead-letter queue."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from docbus.cli import dlq as dlq_cli
from docbus.envelope import Envelope
from docbus.records import DeadLetterRecord
from docbus.servicebus import build_message
from docbus.store import DeadLetterFilter
from docbus.topology import ROUTE_PROPERTY
from subscriber.dlq import capture_dead_letters, dead_letter_record
from tests.replay.conftest import TOPOLOGY_TOML, Stack
from tests.replay.helpers import command, rows
from tests.subscriber.poison_messages import DEEP, poison_messages, send


def envelope(doc_id: str, target: str = "alpha") -> Envelope:
    return Envelope(
        doc_id=doc_id, batch_id="b1", topic="docs", content=f"text {doc_id}",
        target_subscription=target,
    )  # fmt: skip


async def dead_letter_count(client: ServiceBusClient, subscription: str) -> int:
    async with client.get_subscription_receiver(
        "docs", subscription, sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as receiver:
        return len(await receiver.peek_messages(100, sequence_number=1))


async def wait_for_dead_letters(client: ServiceBusClient, expected: dict[str, int]) -> None:
    """Poll the dead-letter queues (one link each) until they hold ``expected`` messages."""
    async with (
        client.get_subscription_receiver(
            "docs", "alpha", sub_queue=ServiceBusSubQueue.DEAD_LETTER
        ) as alpha,
        client.get_subscription_receiver(
            "docs", "beta", sub_queue=ServiceBusSubQueue.DEAD_LETTER
        ) as beta,
    ):
        deadline = time.monotonic() + 15
        while True:
            found = {
                "alpha": len(await alpha.peek_messages(100, sequence_number=1)),
                "beta": len(await beta.peek_messages(100, sequence_number=1)),
            }
            if found == expected:
                return
            assert time.monotonic() < deadline, f"dead letters {found}, expected {expected}"
            await asyncio.sleep(0.1)


async def test_broker_side_dead_letters_are_captured_once_and_leave_the_queue(
    stack: Stack, tmp_path: Path
) -> None:
    store = stack.store
    # The worker's own, richer record of a message it dead-lettered itself.
    await store.record_dead_letter(
        DeadLetterRecord(
            message_id="b1:recorded:0", subscription="alpha", topic="docs", handler="alpha",
            reason="RetriesExhausted", error_type="RuntimeError", error_message="boom",
            step="extract", batch_id="b1", doc_id="recorded", generation=0,
        )
    )  # fmt: skip
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_topic_sender("docs") as sender:
            await sender.send_messages(
                [
                    build_message(envelope("abandoned")),
                    build_message(envelope("recorded")),
                    ServiceBusMessage(
                        b"{not json", message_id="raw-1",
                        application_properties={ROUTE_PROPERTY: "alpha"},
                    ),
                ]
            )  # fmt: skip
            async with client.get_subscription_receiver("docs", "alpha") as receiver:
                # MaxDeliveryCount is 2: after two abandoned deliveries the broker dead-letters.
                abandoned = 0
                deadline = time.monotonic() + 15
                while abandoned < 2:
                    assert time.monotonic() < deadline, "the messages never came"
                    for message in await receiver.receive_messages(10, max_wait_time=0.5):
                        if message.message_id == "b1:abandoned:0":
                            await receiver.abandon_message(message)
                            abandoned += 1
                        else:
                            await receiver.dead_letter_message(
                                message, reason="RetriesExhausted", error_description="boom"
                            )
            expiring = [build_message(envelope("expired")), build_message(envelope("late", "beta"))]
            for message in expiring:
                message.time_to_live = timedelta(seconds=1)
            await sender.send_messages(expiring)
        await wait_for_dead_letters(client, {"alpha": 4, "beta": 1})

        # A capture that wrote its record, then lost the lock before completing the message.
        async with client.get_subscription_receiver(
            "docs", "alpha", sub_queue=ServiceBusSubQueue.DEAD_LETTER
        ) as dlq:
            (first,) = await dlq.receive_messages(1, max_wait_time=5)
            await store.record_dead_letter(
                dead_letter_record(first, topic="docs", subscription="alpha", handler="alpha")
            )
            await dlq.abandon_message(first)

        captured = await capture_dead_letters(
            client, store, "docs", "alpha", handler="alpha", max_wait=0.5
        )
        again = await capture_dead_letters(
            client, store, "docs", "alpha", handler="alpha", max_wait=0.5
        )
        assert (captured, again) == (4, 0)
        assert await dead_letter_count(client, "alpha") == 0

    records = {
        r.message_id: r for r in await store.dead_letters(DeadLetterFilter(subscription="alpha"))
    }
    assert sorted(records) == ["b1:abandoned:0", "b1:expired:0", "b1:recorded:0", "raw-1"]
    abandoned = records["b1:abandoned:0"]
    assert abandoned.reason == "MaxDeliveryCountExceeded"
    assert (abandoned.batch_id, abandoned.doc_id, abandoned.generation) == ("b1", "abandoned", 0)
    assert abandoned.handler == "alpha" and abandoned.topic == "docs"
    assert records["b1:expired:0"].reason == "TTLExpiredException"
    kept = records["b1:recorded:0"]  # the worker's record is not overwritten by the capture
    assert (kept.error_type, kept.step, kept.reason) == (
        "RuntimeError",
        "extract",
        "RetriesExhausted",
    )
    raw = records["raw-1"]
    assert raw.body == b"{not json" and raw.batch_id is None
    assert raw.properties[ROUTE_PROPERTY] == "alpha"

    # `docbus dlq sync` drains every subscription of the topology: only beta has one left.
    topology = tmp_path / "topology.toml"
    topology.write_text(TOPOLOGY_TOML)
    code, out = await command(dlq_cli, "sync", "--topology", str(topology), "--max-wait", "0.5")
    assert code == 0, out
    assert [r[:4] for r in rows(out)] == [["docs", "alpha", "0", "0"], ["docs", "beta", "1", "1"]]
    (late_record,) = await store.dead_letters(DeadLetterFilter(subscription="beta"))
    assert late_record.doc_id == "late" and late_record.reason == "TTLExpiredException"


async def test_dlq_sync_records_every_poison_body_the_broker_holds_and_drains_it(
    stack: Stack, tmp_path: Path
) -> None:
    poison = poison_messages("alpha")
    await send(stack.connection_string, list(poison.values()))
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_subscription_receiver("docs", "alpha") as receiver:
            taken: list[ServiceBusReceivedMessage] = []
            deadline = time.monotonic() + 15
            while len(taken) < len(poison):
                assert time.monotonic() < deadline, f"only {len(taken)} messages came"
                taken += await receiver.receive_messages(len(poison), max_wait_time=1)
            for message in taken:  # as a foreign consumer would leave them
                await receiver.dead_letter_message(message, reason="Foreign", error_description="x")
        topology = tmp_path / "topology.toml"
        topology.write_text(TOPOLOGY_TOML)
        code, out = await command(dlq_cli, "sync", "--topology", str(topology), "--max-wait", "0.5")
        assert code == 0, out
        assert await dead_letter_count(client, "alpha") == 0
    n = str(len(poison))
    assert [r[:4] for r in rows(out)] == [["docs", "alpha", n, n], ["docs", "beta", "0", "0"]]
    records = await store_records(stack)
    assert sorted(records) == sorted(poison)
    assert all(r["reason"] == "Foreign" and r["batch_id"] is None for r in records.values())
    assert records["deep-json"]["body"] == DEEP
    assert records["odd-properties"]["properties"]["huge-int"] == str(2**64 - 1)


async def store_records(stack: Stack) -> dict[str, dict[str, Any]]:
    return {r["message_id"]: r async for r in stack.store.database["dead_letters"].find({})}
