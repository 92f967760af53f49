"""A batch job whose LLM endpoint refuses it ends, says what it left parked, and a later short
drain resumes those messages once the cause is gone."""

from __future__ import annotations

import asyncio
import time

from azure.servicebus.aio import ServiceBusClient

from docbus.local.llm_server import LLMServer
from handlers.llm import LLMClient
from tests.diagnostics import finish_within
from tests.subscriber.conftest import KEY, Stack
from tests.subscriber.test_llm_worker import current_results, make_worker, publish


async def test_an_until_idle_worker_with_a_bad_key_ends_listing_what_it_left_parked(
    stack: Stack, llm: LLMClient, llm_server: LLMServer
) -> None:
    await publish(stack, 3)
    llm_server.configure(api_key="rotated-key")  # our key is now wrong
    started = time.monotonic()
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = make_worker(client, stack, llm, until_idle=1.0, probe_interval=0.2)
        report = await finish_within(worker.run(), 30)
    assert time.monotonic() - started < 15  # bounded: not probing for ever
    [group] = report.parked
    assert (group.handler, group.reason, group.count) == ("three_steps", "SystemicFailure", 3)
    assert "Authentication" in group.description
    assert report.left_parked == 3
    assert await stack.store.count_parked(batch_id="llm1") == 3
    [*listed] = await stack.store.parked(batch_id="llm1")
    assert {p.doc_id for p in listed} == {"d0", "d1", "d2"}

    # the operator fixes the key; a short drain (well under the 30 s resume round) finishes
    llm_server.configure(api_key=KEY)
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = make_worker(client, stack, llm, until_idle=1.0)
        report = await finish_within(worker.run(), 30)
    assert await current_results(stack) == 3
    assert report.parked == [] and await stack.store.count_parked() == 0


async def test_a_starting_worker_leaves_parked_what_still_fails_and_stops_quickly(
    stack: Stack, llm: LLMClient, llm_server: LLMServer
) -> None:
    await publish(stack, 2)
    llm_server.configure(api_key="rotated-key")
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        await asyncio.wait_for(make_worker(client, stack, llm, until_idle=1.0).run(), 30)
        requests = llm_server.stats()["requests"]
        # still broken: the next worker asks the endpoint once, rather than run every message
        report = await asyncio.wait_for(make_worker(client, stack, llm, until_idle=1.0).run(), 30)
    assert report.left_parked == 2
    assert llm_server.stats()["requests"] - requests <= 2  # probes, no LLM step re-run
