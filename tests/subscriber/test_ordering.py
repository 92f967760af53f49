"""Ordered handlers: documents with the same key run one at a time, in publish order."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from azure.servicebus.aio import ServiceBusClient

from docbus.topology import parse_topology
from handlers.runtime import discover_handlers
from publisher import publish_documents
from subscriber.worker import Worker, WorkerOptions
from tests.subscriber import ordered_handlers, sample_handlers
from tests.subscriber.conftest import Stack


async def test_same_key_documents_run_in_order_across_two_workers(stack: Stack) -> None:
    keys = ["acme", "globex", "initech", "umbrella", "hooli"]
    docs = [
        {"text": f"{key} news {n}", "doc_id": f"{key}-{n}", "metadata": {"key": key, "n": n}}
        for n in range(6)
        for key in keys
    ]
    report = await publish_documents(
        docs, topic="ordered", batch_id="ord", settings=stack.settings, store=stack.store,
        session_key="key",
    )  # fmt: skip
    assert report.ok

    async def one_worker() -> None:
        async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
            worker = Worker(
                discover_handlers(ordered_handlers),
                client=client,
                store=stack.store,
                options=WorkerOptions(concurrency=8, until_idle=2.0, max_sessions=4),
                topology=stack.topology,
            )
            await worker.run()

    await asyncio.gather(one_worker(), one_worker())
    events = [e async for e in stack.store.database["order_events"].find().sort("_id", 1)]
    per_key: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for event in events:
        per_key[event["key"]].append((event["n"], event["event"]))
    assert sorted(per_key) == sorted(keys)
    for key, sequence in per_key.items():
        expected = [(n, e) for n in range(6) for e in ("start", "end")]
        assert sequence == expected, f"{key} ran out of order or overlapped: {sequence}"
    keys_running_at_once = 0
    running: set[str] = set()
    for event in events:
        if event["event"] == "start":
            running.add(event["key"])
            keys_running_at_once = max(keys_running_at_once, len(running))
        else:
            running.discard(event["key"])
    assert keys_running_at_once > 1  # sessions did run in parallel


async def test_a_handler_and_its_subscription_must_agree_on_sessions(stack: Stack) -> None:
    sessionless = parse_topology(
        {"topics": [{"name": "ordered", "subscriptions": [{"name": "in-order"}]}]}
    )
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        with pytest.raises(ValueError, match="requires sessions"):
            Worker(
                discover_handlers(ordered_handlers),
                client=client, store=stack.store, topology=sessionless,
            )  # fmt: skip
        with pytest.raises(ValueError, match="must not require sessions"):
            Worker(
                discover_handlers(sample_handlers),
                client=client, store=stack.store,
                topology=stack.topology.with_sessions("docs", "work"),
            )  # fmt: skip
