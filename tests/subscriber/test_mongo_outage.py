"""A MongoDB outage while handlers make LLM calls: every call keeps its audit row, no finished
step runs again, every document ends with its result.

SecantusDB is frozen (SIGSTOP) for a few seconds while a three-step LLM handler works through
a batch against the offline LLM server (which keeps answering). The worker's store has short
timeouts and a fast heartbeat, so the freeze shows as failed writes, as a long one would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
from azure.servicebus.aio import ServiceBusClient

from docbus.backoff import BackoffPolicy
from docbus.local.llm_server import LLMServer, LLMServerConfig
from docbus.local.llm_server.config import Latency
from docbus.store import Store
from handlers.llm import LLMClient
from handlers.runtime import discover_handlers
from subscriber.worker import Worker, WorkerOptions
from tests.subscriber import llm_handlers
from tests.subscriber.conftest import KEY, Stack
from tests.subscriber.test_llm_worker import publish

DOCUMENTS = 6
STEPS = 3


@pytest.mark.parametrize(
    "llm_server_config", [LLMServerConfig(api_key=KEY, latency=Latency(seconds=0.3))]
)
async def test_a_mongo_freeze_loses_no_audit_row_and_redoes_no_step(
    stack: Stack, llm: LLMClient, llm_server: LLMServer, local_mongo: Any
) -> None:
    await publish(stack, DOCUMENTS)
    uri = f"{local_mongo.uri}&heartbeatFrequencyMS=500&socketTimeoutMS=1500"
    pid = local_mongo.pid
    async with (
        Store(uri, stack.store.database.name, timeout=1.0) as store,
        LLMClient.from_settings(stack.settings, store) as client,
        ServiceBusClient.from_connection_string(stack.connection_string) as servicebus,
    ):
        worker = Worker(
            discover_handlers(llm_handlers), client=servicebus, store=store, llm=client,
            topology=stack.topology,
            options=WorkerOptions(
                until_idle=3.0, concurrency=3, dlq_capture_interval=None,
                backoff=BackoffPolicy(base=0.5, cap=2.0, jitter=0.0),
            ),
        )  # fmt: skip
        running = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 30
        while llm_server.stats()["requests"] < 3:  # a few calls made and audited
            assert time.monotonic() < deadline and not running.done()
            await asyncio.sleep(0.02)
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(5.0)  # handlers go on calling the LLM meanwhile
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.wait_for(running, 120)
    db = stack.store.database
    assert await db["current_results"].count_documents({}) == DOCUMENTS
    requests = llm_server.stats()["requests"]
    assert await db["llm_calls"].count_documents({}) == requests  # every call audited
    assert requests == DOCUMENTS * STEPS  # and no finished step ran again
